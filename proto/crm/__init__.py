"""Generated protobuf and gRPC code of the public contract (built from the `.proto` files here)."""

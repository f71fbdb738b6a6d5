"""`crm.v1`: the public gRPC contract. The `*_pb2*.py` modules are generated at build time."""

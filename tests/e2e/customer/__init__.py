"""End-to-end tests of the customer service: a real gRPC server and client on loopback."""

"""gRPC plumbing shared by every service: domain errors → status codes, and the server runner."""

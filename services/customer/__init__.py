"""Customer service entrypoint (gRPC): servicer, bootstrap, config. Arrives with issue 4."""

"""Shared fixtures: real PostgreSQL and NATS servers (configured, or started privately)."""

pytest_plugins = ["tests.support.postgres", "tests.support.nats"]

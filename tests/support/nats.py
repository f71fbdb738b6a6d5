"""NATS for tests and benchmarks (being written)."""

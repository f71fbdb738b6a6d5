"""Integration tests of the customer context on real storage (SQLite, PostgreSQL) and NATS."""

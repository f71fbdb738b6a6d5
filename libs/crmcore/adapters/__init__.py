"""Adapters: how the domain meets storage, the bus and other systems."""

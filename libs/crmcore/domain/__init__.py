"""The support domain: aggregates, their events and value objects. Pure Python, no I/O."""

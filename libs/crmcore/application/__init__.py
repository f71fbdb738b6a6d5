"""Applications: the commands and queries of each bounded context, on the eventsourcing library."""

"""crmcore: the event-sourced CRM core as a library.

`crmcore.CRM` opens the whole domain in-process (customers, interactions, cases, surveys, VOC,
agents and queues) on in-memory, SQLite or PostgreSQL storage, with no server.
"""

from crmcore.config import PersistenceSettings

__all__ = ["PersistenceSettings"]

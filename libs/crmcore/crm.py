"""The whole CRM in-process: every bounded context as a library, no server needed.

`CRM` opens one application per context on the chosen storage (in memory, SQLite files in a
data directory, or PostgreSQL) and answers the question agents ask first — what happened with
this customer before — from the interaction events:

    crm = CRM.in_memory()
    alice = crm.customers.register(name="Alice", contact_points=[("email", "alice@example.com")])
    call = crm.interactions.open_interaction(channel="phone", customer_id=alice.id)
    crm.history(alice.id)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from uuid import UUID

from crmcore.application.audit import AuditPage
from crmcore.application.customer_views import CustomerViews
from crmcore.application.customers import CustomerApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.application.timeline import CustomerTimeline, TimelineEntry
from crmcore.application.workforce import WorkforceApplication
from crmcore.config import PersistenceSettings, persistence_from_env


class CRM:
    """Customers, interactions (with cases, surveys and VOC) and the workforce, in one object."""

    def __init__(
        self, persistence: PersistenceSettings | None = None, *, default_region: str | None = None
    ) -> None:
        self.persistence = persistence or PersistenceSettings.in_memory()
        self.customers = CustomerApplication(self.persistence, default_region=default_region)
        self.interactions = InteractionApplication(self.persistence)
        self.workforce = WorkforceApplication(self.persistence)
        self._timeline = CustomerTimeline()
        self._views: CustomerViews | None = None

    @classmethod
    def in_memory(cls, *, default_region: str | None = None) -> CRM:
        return cls(PersistenceSettings.in_memory(), default_region=default_region)

    @classmethod
    def sqlite(cls, data_dir: Path | str, *, default_region: str | None = None) -> CRM:
        """SQLite files in `data_dir`, one per application: data survives restarts."""
        return cls(PersistenceSettings.sqlite(data_dir), default_region=default_region)

    @classmethod
    def from_env(cls) -> CRM:
        """Storage chosen by `CRM_PERSISTENCE` and friends (see crmcore.config)."""
        return cls(persistence_from_env())

    def history(
        self, customer_id: UUID, *, limit: int = 50, offset: int = 0
    ) -> tuple[TimelineEntry, ...]:
        """The customer's interactions, cases, survey responses and feedback, newest first.

        A merged duplicate's history is found under the survivor's id too."""
        self._timeline.catch_up(self.interactions)
        survivor = self.customers.resolve(customer_id)
        entries = [
            entry
            for member in (survivor.id, *survivor.merged_ids)
            for entry in self._timeline.entries(member, limit=limit + offset)
        ]
        entries.sort(key=lambda entry: (entry.occurred_at, entry.id.int), reverse=True)
        return tuple(entries[offset : offset + limit])

    def audit(
        self,
        customer_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditPage:
        """Who did what to the customer, newest first: its own events and those of its
        interactions, cases, surveys and feedback, each with its actor and the names of the
        fields it set (`crmcore.application.audit`). Run commands inside
        `crmcore.application.principal.acting_as(...)` for them to name an actor."""
        if self._views is None:
            self._views = CustomerViews(self.customers)
        self._views.timeline.catch_up(self.interactions)
        return self._views.customer_audit(
            customer_id, page_size=page_size, page_token=page_token, since=since, until=until
        )

    def shut_down(self) -> None:
        """Releases storage connections and files."""
        if self._views is not None:
            self._views.close_views()
        self.customers.shut_down()
        for app in (self.interactions, self.workforce):
            app.stop_writer()
            app.factory.close()

"""The task store: one SQL database that the ingress, the Pipeline replicas and the webhook
dispatcher share (a SQLite file by default, in WAL mode so several processes can write;
PostgreSQL in a cluster; the tables are in `schema`, made by the migrations in `migrate`;
a store refuses a database that is not at their head), and its parts over that one schema,
each a small class of its own: the task queue and its leases (`queue`), the webhook outbox
(`outbox`), the file-retention ledger (`ledger`) and the statistics admission and estimates
read (`statistics`). Per-key rate limits share its database (`engine`;
serve_app/store/admission.py). This and `migrate` are the places that build an engine."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from serve_app.store.ledger import FileLedger
from serve_app.store.migrate import check_at_head
from serve_app.store.outbox import WebhookOutbox
from serve_app.store.queue import TaskQueue
from serve_app.store.schema import make_engine
from serve_app.store.statistics import TaskStatistics


class TaskStore:
    """The task database and its parts; SchemaOutOfDateError when the database is not at
    the head revision (`python -m serve_app migrate` brings it there). Every method of
    every part is synchronous and thread-safe; call them from a thread in async code."""

    def __init__(
        self,
        url: str,
        *,
        max_claims: int = 3,
        busy_timeout_s: float = 30.0,
        key_ttl_s: float = 86400.0,
        pool_size: int = 5,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._engine = make_engine(
            url,
            busy_timeout_s=busy_timeout_s,
            pool_size=pool_size,
            connect_timeout_s=connect_timeout_s,
        )
        try:
            check_at_head(self._engine)
            self.tasks = TaskQueue(self._engine, max_claims=max_claims, key_ttl_s=key_ttl_s)
        except BaseException:
            # A server keeps its connections open until closed: a failed start closes them.
            self._engine.dispose()
            raise
        self.outbox = WebhookOutbox(self._engine)
        self.files = FileLedger(self._engine)
        self.statistics = TaskStatistics(self._engine)

    @property
    def engine(self) -> Engine:
        """The database, for what shares it (serve_app/store/admission.py)."""
        return self._engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

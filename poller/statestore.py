"""What the daemon and the commands need of a state store, and the opener for either engine.

:class:`StateStore` is the one interface with two implementations: :class:`poller.store.Store`
(SQLite, the embedded default) and :class:`poller.pgstore.PgStore` (PostgreSQL, for several
instances sharing one database). A shared contract suite runs against both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from poller.databaseurl import DatabaseUrl
from poller.events import OrderEvent
from poller.models import OrderSnapshot
from poller.records import (
    ActionRow,
    Batch,
    Delivery,
    InstanceInfo,
    InstanceRow,
    Lease,
    LeaseRound,
    OutboxRow,
    OutboxSummary,
    StoredOrder,
)
from poller.settings import DaemonSettings


class StateStore(Protocol):
    """The state database, whichever engine keeps it (see :class:`poller.store.Store` for
    the meaning of every method; both engines behave the same)."""

    #: Where a damaged SQLite file was moved at open (never set for PostgreSQL).
    recovered_from: Path | None

    #: Where it is, for people: a file path, or the URL without its password.
    @property
    def location(self) -> str: ...
    @property
    def clustered(self) -> bool: ...

    def close(self) -> None: ...
    def set_size_limit(self, max_mb: float | None) -> None: ...
    def identity_problem(self) -> str | None: ...
    def size_bytes(self) -> int | None: ...
    def load_orders(self, broker: str) -> dict[tuple[str, str, str], OrderSnapshot]: ...
    def missing_counts(self, broker: str) -> dict[tuple[str, str, str], int]: ...
    def known_accounts(self, broker: str) -> set[str]: ...
    def list_orders(self, broker: str | None = None, *, include_final: bool = True
                    ) -> list[StoredOrder]: ...
    def commit(self, batch: Batch) -> list[OrderEvent]: ...
    def due(self, notifier: str, *, now: float | None = None, limit: int = 50
            ) -> list[OutboxRow]: ...
    def hold(self, row_id: int, *, until: float) -> None: ...
    def next_attempt(self, notifier: str) -> float | None: ...
    def mark_sent(self, row_id: int) -> None: ...
    def mark_retry(self, row_id: int, *, next_attempt_at: float, error: str) -> None: ...
    def mark_dead(self, row_id: int, *, error: str) -> None: ...
    def requeue_dead(self, notifier: str | None = None) -> int: ...
    def backlog(self) -> dict[str, int]: ...
    def outbox_summary(self, notifiers: Iterable[str] | None = None
                       ) -> dict[str, OutboxSummary]: ...
    def connection_orders(self) -> dict[str, tuple[int, int, datetime | None]]: ...
    def recent_operator_events(self, recent: int) -> list[tuple[str, str, str, str]]: ...
    def recent_events(self, limit: int = 50, *, broker: str | None = None
                      ) -> list[tuple[OrderEvent, list[Delivery]]]: ...
    def add_action(self, broker: str, account_id: str, order_id: str, kind: str, *,
                   qty: str | None = None, price: str | None = None) -> int: ...
    def action(self, action_id: int) -> ActionRow | None: ...
    def open_actions(self, broker: str | None = None) -> list[ActionRow]: ...
    def list_actions(self, *, include_done: bool = False, limit: int = 100
                     ) -> list[ActionRow]: ...
    def drop_action(self, action_id: int, *, reason: str) -> bool: ...
    def expire_actions(self, queued_before: datetime) -> list[ActionRow]: ...
    def update_action(self, action_id: int, state: str, *, outcome: str = "",
                      message: str = "", attempt: bool = False) -> None: ...
    def watch(self, broker: str, account_id: str, order_id: str) -> bool: ...
    def unwatch(self, broker: str, order_id: str) -> bool: ...
    def watched(self, broker: str) -> list[tuple[str, str]]: ...
    # -- more than one box (PostgreSQL; SQLite answers for its one daemon) -----------------
    def lease_round(self, instance: InstanceInfo, connections: Sequence[str], *, ttl: float,
                    mine: Mapping[str, int], budgets: Mapping[str, str],
                    release: Sequence[str] = ()) -> LeaseRound: ...
    def leases(self) -> list[Lease]: ...
    def instances(self) -> list[InstanceRow]: ...
    def leave(self, instance_id: str) -> None: ...


def open_store(target: Path | DatabaseUrl, *, lock: bool = False, max_mb: float | None = None,
               password: str | None = None, **options: Any) -> StateStore:
    """Open the store at ``target``: a SQLite file path or a ``postgresql://`` URL.

    :param lock: the caller is a daemon (SQLite: the one daemon on the file; PostgreSQL:
        one instance of a cluster, which takes part in leases).
    :param password: the PostgreSQL password (from ``daemon.database_password``).
    :raises StoreError: any fault, in one line naming the database (never the password).
    """
    if isinstance(target, DatabaseUrl):
        from poller.pgstore import PgStore  # psycopg is only needed by those who use it

        return PgStore.open(target, lock=lock, password=password, **options)
    from poller.store import Store

    return Store.open(target, lock=lock, max_mb=max_mb)


def open_configured(daemon: DaemonSettings, *, lock: bool = False) -> StateStore:
    """Open ``daemon.database`` with its password and size cap (the one way the daemon and
    the commands open the configured store)."""
    return open_store(daemon.database, lock=lock, max_mb=daemon.max_database_mb,
                      password=secret_text(daemon.database_password))


def secret_text(secret: SecretStr | None) -> str | None:
    """The text of an optional secret setting (the database password)."""
    return secret.get_secret_value() if secret is not None else None


def store_exists(target: Path | DatabaseUrl) -> bool:
    """Whether there is anything to read yet: a SQLite file that exists, or any URL (a
    PostgreSQL database is created by its administrator, never by a read command)."""
    return isinstance(target, DatabaseUrl) or target.exists()

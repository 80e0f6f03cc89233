"""What the store keeps and gives back: the batch a poll commits, and the rows it reads.

A :class:`Batch` is everything one poll wants remembered, committed in one transaction by
:meth:`poller.store.Store.commit`; the other records are read-only views of stored rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from poller.events import OrderEvent
from poller.models import OrderSnapshot


@dataclass
class Batch:
    """What one poll wants remembered, committed atomically by :meth:`Store.commit`.

    ``snapshots`` replace the stored snapshot of their order; ``seen`` only refreshes the
    last-seen time of unchanged orders; ``missing`` sets the count of consecutive polls an
    order was absent; ``baselined`` records accounts whose first poll has been stored.
    ``routes`` names the notifiers of each event (by event id), computed before the commit
    so the store never calls back into the daemon. ``effects`` are in-memory changes that
    run only once the commit succeeded: memory follows the disk, never leads it.
    """

    snapshots: list[OrderSnapshot] = field(default_factory=list)
    events: list[OrderEvent] = field(default_factory=list)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    missing: dict[tuple[str, str, str], int] = field(default_factory=dict)
    stale: list[tuple[str, str, str]] = field(default_factory=list)
    baselined: list[tuple[str, str]] = field(default_factory=list)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    effects: list[Callable[[], None]] = field(default_factory=list)
    _latest: dict[tuple[str, str, str], OrderSnapshot] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for snapshot in self.snapshots:
            self._latest[snapshot.key] = snapshot

    def put(self, snapshot: OrderSnapshot) -> None:
        """Record a new snapshot of an order (the latest one of a key wins)."""
        self.snapshots.append(snapshot)
        self._latest[snapshot.key] = snapshot

    def latest(self, key: tuple[str, str, str]) -> OrderSnapshot | None:
        """The snapshot this batch records for ``key``, if any (later reads in one poll
        must see what earlier ones found, before it is committed)."""
        return self._latest.get(key)

    def __bool__(self) -> bool:
        return bool(
            self.snapshots or self.events or self.seen or self.missing or self.stale
            or self.baselined
        )


@dataclass(frozen=True)
class OutboxRow:
    """One pending delivery of one event to one notifier."""

    id: int
    notifier: str
    event: OrderEvent
    attempts: int
    created_at: datetime
    held: bool = False


@dataclass(frozen=True)
class OutboxSummary:
    """One notifier's outbox at a glance: what waits, since when, what was given up."""

    notifier: str
    pending: int
    oldest_pending: datetime | None
    dead: int
    last_error: str
    last_sent: datetime | None


@dataclass(frozen=True)
class Delivery:
    """The delivery state of one event at one notifier, for ``poller events``."""

    notifier: str
    state: str
    attempts: int
    last_error: str
    sent_at: str | None


@dataclass(frozen=True)
class ActionRow:
    """One order action (replace or cancel) and how far it got."""

    id: int
    broker: str
    account_id: str
    order_id: str
    kind: str
    qty: str | None
    price: str | None
    state: str
    attempts: int
    outcome: str
    message: str
    created_at: str
    updated_at: str

    @property
    def done(self) -> bool:
        """True once the outcome is known."""
        return self.state in ("succeeded", "failed")


@dataclass(frozen=True)
class StoredOrder:
    """A tracked order as ``poller orders`` shows it."""

    snapshot: OrderSnapshot
    first_seen: str
    last_seen: str
    last_changed: str
    missing: int
    stale: bool


@dataclass(frozen=True)
class InstanceInfo:
    """One ``poller run`` sharing a PostgreSQL database: who it is, for leases and status."""

    id: str
    host: str
    pid: int
    started_at: str


@dataclass(frozen=True)
class InstanceRow:
    """A row of the instances table: an instance and when it was last heard of."""

    id: str
    host: str
    pid: int
    started_at: str
    seen_at: str
    alive: bool


@dataclass(frozen=True)
class Lease:
    """The lease of one broker connection (design: issue 16).

    ``epoch`` grows by one at every change of holder; a commit about the connection is
    refused unless the committing instance holds this epoch (fencing). Times are epoch
    seconds of the database's clock. ``budget`` is the JSON the holder stored with its last
    renewal (its rate budget's recent request times), ``budget_at`` when (database clock).
    """

    connection: str
    holder: str
    epoch: int
    expires_at: float
    budget: str = "{}"
    budget_at: float = 0.0


@dataclass(frozen=True)
class LeaseRound:
    """What one lease round found and did, in one transaction.

    ``held``: the leases this instance holds after the round (renewed or just taken);
    ``taken``: connections acquired in this round (their epoch was raised); ``lost``: ones it
    believed it held that another instance holds now (or that expired and were taken);
    ``instances``: live instances, this one included; ``target``: ⌈C / instances⌉.
    """

    now: float
    held: dict[str, Lease]
    taken: list[str]
    lost: list[str]
    released: list[str]
    instances: int
    target: int

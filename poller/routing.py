"""Which notifiers receive which event: computed before the commit, stored with the outbox.

Routing is decided once, in the daemon, before :meth:`poller.store.Store.commit` writes the
outbox rows, so the store never calls back into the daemon inside its transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from poller.events import OrderEvent
from poller.notifiers import Notifier
from poller.records import Batch


def recipients(event: OrderEvent, notifiers: Iterable[Notifier]) -> tuple[str, ...]:
    """Names of the notifiers whose routing rules want ``event``.

    An operator event about a failing notifier goes to every *other* notifier: the failing
    one would only fail again, and an announcement of its failure must not loop.
    """
    skip = event.payload.get("notifier") if event.event_type == "SYSTEM" else None
    return tuple(n.name for n in notifiers if n.name != skip and n.accepts(event))


def route(batch: Batch, notifiers: Iterable[Notifier]) -> Batch:
    """Fill ``batch.routes`` for every event of the batch; returns the batch."""
    targets = list(notifiers)
    for event in batch.events:
        batch.routes[event.id] = recipients(event, targets)
    return batch

"""The plugin hooks poller calls (pluggy project name ``poller``).

Every hook is called with keyword arguments only, so an implementation may accept any subset
of the documented arguments, and new arguments can be added later without breaking anyone.
Each hook is documented in the README's "Plugin hooks" section; a test enforces that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from poller.adapter import BrokerAdapter
    from poller.events import OrderEvent
    from poller.notifiers import Notifier

hookspec = pluggy.HookspecMarker("poller")
hookimpl = pluggy.HookimplMarker("poller")


@hookspec
def register_brokers(register: Callable[[type[BrokerAdapter[Any]]], None]) -> None:
    """Register broker adapter classes.

    :param register: call once per class, e.g. ``register(ShioajiAdapter)``. The class's
        ``kind`` is the value of ``kind`` in a ``[brokers.NAME]`` table.
    """


@hookspec
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register notifier classes.

    :param register: call once per class, e.g. ``register(WebhookNotifier)``. The class's
        ``kind`` is the value of ``kind`` in a ``[notifiers.NAME]`` table; its ``Config``
        model validates that table.
    """


@hookspec
def startup(app: Any) -> Any:
    """Called once the daemon has loaded its configuration and database, before polling.

    :param app: the running :class:`poller.app.App` (``app.settings``, ``app.store``).
    May be ``async def``; the daemon awaits it. An exception is logged and isolated.
    """


@hookspec
def shutdown(app: Any) -> Any:
    """Called once when the daemon stops, after the last poll finished.

    :param app: the running :class:`poller.app.App`.
    May be ``async def``; the daemon awaits it. An exception is logged and isolated.
    """


@hookspec
def order_event(event: OrderEvent) -> Any:
    """Called for every new event right after it was committed to the database.

    :param event: the :class:`poller.OrderEvent` (``event.to_json()`` gives the event JSON).
    An observer: its return value is ignored. May be ``async def``. A raising or slow
    implementation is logged and isolated; it never delays delivery to notifiers, which
    go through the outbox independently.
    """

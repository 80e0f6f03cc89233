"""Queued order actions: submitted by programs and the CLI, picked up by the daemon.

:func:`submit` queues a replace or cancel in the store (the Python API; ``poller replace`` /
``poller cancel`` and the local HTTP API use it) and can wait for its outcome;
:class:`ActionRunner`, inside the daemon, finds queued actions and hands each to its
connection's :class:`~poller.actions.ActionExecutor`, one at a time per order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from poller.actions import ActionExecutor, Outcome
from poller.databaseurl import DatabaseUrl
from poller.errors import PollerError, StoreError
from poller.models import utcnow
from poller.records import ActionRow
from poller.statestore import StateStore, open_store

logger = logging.getLogger(__name__)

DbCall = Callable[..., Awaitable[Any]]


class ActionRefused(PollerError):
    """An action that cannot be sent (unknown order, finished order, change not allowed)."""


def parse_decimal(text: str | None, what: str) -> Decimal | None:
    """A positive decimal from a command-line value, or None."""
    if text is None:
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ActionRefused(f"{what} must be a number, got {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise ActionRefused(f"{what} must be positive, got {text}")
    return value


class ActionRunner:
    """Finds queued actions in the store and runs them, one at a time per order.

    :param db: runs a store call off the event loop (the daemon's store thread).
    :param executors: the executor of a running connection by name, or None.
    """

    def __init__(self, store: StateStore, db: DbCall,
                 executors: Callable[[str], ActionExecutor | None], *,
                 every: float = 0.25, expiry: float = 300.0, held_only: bool = False) -> None:
        self.store = store
        #: Several instances share the database: run only the actions of connections this
        #: instance holds (their lease holder runs the others).
        self.held_only = held_only
        self.expiry = expiry
        self._db = db
        self._executors = executors
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        self._broker_of: dict[int, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        # Outcomes the store refused to record (a full disk): written again later, and
        # their actions never run a second time meanwhile.
        self._unrecorded: dict[int, tuple[str, str, str]] = {}

    def start(self) -> None:
        """Start looking for actions."""
        self._task = asyncio.create_task(self._loop(), name="actions")

    def wake(self) -> None:
        """An action was just queued (local API): look now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop looking; actions in progress finish their current step (bounded)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._running:
            done, pending = await asyncio.wait(list(self._running.values()), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def drop_connection(self, broker: str) -> None:
        """Stop the actions of ``broker`` running here: its lease went to another instance.

        Their rows stay queued, so the new holder runs them; without this both instances
        would run one action at once (the new holder reads the queue as soon as it holds the
        lease). One cut off after its request left is sent again by the new holder, as after
        a crash; verification then reports what the broker did.
        """
        tasks = [task for action_id, task in self._running.items()
                 if self._broker_of.get(action_id) == broker]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            for action_id, outcome in list(self._unrecorded.items()):
                await self._finish(action_id, *outcome)
            await self._expire()
            try:
                rows: list[ActionRow] = await self._db(self.store.open_actions)
            except StoreError as err:
                logger.debug("cannot read queued actions: %s", err)  # health says why, once
                rows = []
            for row in rows:
                if self.held_only and self._executors(row.broker) is None:
                    continue
                if row.id not in self._running and row.id not in self._unrecorded:
                    task = asyncio.create_task(self._run(row), name=f"action-{row.id}")
                    self._running[row.id] = task
                    self._broker_of[row.id] = row.broker
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.every)
            except TimeoutError:
                pass

    async def _expire(self) -> None:
        """Queued actions older than the expiry are not sent (one line each)."""
        cutoff = utcnow() - timedelta(seconds=self.expiry)
        try:
            expired: list[ActionRow] = await self._db(self.store.expire_actions, cutoff)
        except StoreError as err:
            logger.debug("cannot expire old actions: %s", err)
            return
        for row in expired:
            logger.warning("%s: %s of order %s queued at %s expired unsent (older than "
                           "daemon.action_expiry, %g s)", row.broker, row.kind, row.order_id,
                           row.created_at, self.expiry)

    async def _run(self, row: ActionRow) -> None:
        # One action at a time per order; different orders' actions overlap (each still
        # waits for the connection's budget, and sending is serialised per connection).
        lock = self._locks.setdefault(f"{row.broker}/{row.order_id}", asyncio.Lock())
        try:
            async with lock:
                outcome = await self.execute(row)
            logger.info("%s: %s of order %s: %s %s", row.broker, row.kind, row.order_id,
                        outcome.scene or "refused", outcome.message)
            await self._finish(row.id, "succeeded" if outcome.succeeded else "failed",
                               outcome.scene, outcome.message)
        except Exception as err:  # an action must never take the daemon down
            logger.exception("%s: action %d failed unexpectedly", row.broker, row.id)
            await self._finish(row.id, "failed", "", f"internal error: {type(err).__name__}")
        finally:
            self._running.pop(row.id, None)
            self._broker_of.pop(row.id, None)

    async def _finish(self, action_id: int, state: str, scene: str, message: str) -> None:
        """Record an action's outcome; if the store refuses, keep it and try again later."""
        try:
            await self._db(self.store.update_action, action_id, state, outcome=scene,
                           message=message)
        except StoreError as err:
            logger.debug("action %d: cannot record its outcome yet: %s", action_id, err)
            self._unrecorded[action_id] = (state, scene, message)
            return
        self._unrecorded.pop(action_id, None)

    async def execute(self, row: ActionRow) -> Outcome:
        """Validate, send and verify one action."""
        executor = self._executors(row.broker)
        if executor is None:
            return Outcome(False, "", f"no running connection {row.broker!r}")
        try:
            qty = parse_decimal(row.qty, "quantity")
            price = parse_decimal(row.price, "price")
        except ActionRefused as err:
            return Outcome(False, "", str(err))
        return await executor.perform(row, qty, price)


def submit(database: Path | DatabaseUrl, broker: str, order_id: str, kind: str, *,
           account_id: str = "", qty: str | None = None, price: str | None = None,
           wait: bool = True, timeout: float = 60.0,
           on_wait: Callable[[float], None] = time.sleep, password: str | None = None
           ) -> ActionRow:
    """Queue an order action for the running daemon (the Python API).

    :param database: the daemon's database (``daemon.database``: a path or a URL; with
        PostgreSQL the instance holding the connection's lease carries it out).
    :param password: the PostgreSQL password (``daemon.database_password``).
    :param kind: ``"replace"`` (with ``qty`` and/or ``price``) or ``"cancel"``.
    :param wait: wait for the outcome (up to ``timeout`` seconds) instead of returning at once.
    :returns: the action as last seen (``row.done`` tells whether the outcome is known,
        ``row.outcome`` is the scene, ``row.message`` the explanation).
    """
    if kind not in ("replace", "cancel"):
        raise ActionRefused(f"unknown action {kind!r} (replace or cancel)")
    if kind == "replace" and qty is None and price is None:
        raise ActionRefused("replace needs a new quantity and/or price")
    parse_decimal(qty, "quantity")
    parse_decimal(price, "price")
    store = open_store(database, password=password)
    try:
        action_id = store.add_action(broker, account_id, order_id, kind, qty=qty, price=price)
        deadline = time.monotonic() + timeout
        row = store.action(action_id)
        while wait and row is not None and not row.done and time.monotonic() < deadline:
            on_wait(0.2)  # the daemon is another process: look again shortly
            row = store.action(action_id)
        assert row is not None
        return row
    finally:
        store.close()

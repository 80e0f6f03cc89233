"""Deliver the outbox: one worker per notifier, at-least-once, in order.

A row is marked sent only after the notifier returned (the service accepted). A retryable
failure keeps the row and every later row of that notifier waiting until its next attempt
time (capped exponential backoff with full jitter, persisted in the row), so one notifier's
messages arrive in the order the events happened. A permanent refusal, or a row older than
the give-up age, is dead-lettered and announced to the *other* notifiers. Each notifier has
its own worker, so a slow or failing one never delays another.

A notifier's trouble is one grouped problem (:mod:`poller.alertgroups`): announced when it
starts, reminded at the repeat interval, announced once when it resolves. Partial fills of
one order may be gathered into one message (:mod:`poller.fillcoalescing`).

Over 400 lines: one worker's whole delivery contract — per-order ordering, retries, quiet
hours, fill coalescing, dead letters and their grouped announcement, and outcomes the store
could not record yet — which share the per-row state of a worker's pass; the pure parts
(grouping, coalescing, message text) live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from poller.alertgroups import AlertGroups, Phase, Problem, notifier_problem_text
from poller.errors import DeliveryFailed, DeliveryRateLimited, DeliveryRetryable, StoreError
from poller.events import OrderEvent, system_event
from poller.fillcoalescing import coalesced, coalescible
from poller.latencyhistogram import LatencyHistogram
from poller.logsetup import Redactor
from poller.models import utcnow
from poller.notifiers import Notifier
from poller.records import Batch, OutboxRow, OutboxSummary
from poller.statestore import StateStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

DbCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Mark:
    """A delivery outcome to write to the outbox: the Store method and its arguments."""

    notifier: str
    method: str
    values: dict[str, Any]

    @property
    def final(self) -> bool:
        """Sent or dead-lettered: the row must never be delivered again."""
        return self.method in ("mark_sent", "mark_dead")

    @property
    def not_before(self) -> float:
        """When a retried or held row is due again (epoch seconds)."""
        return float(self.values.get("next_attempt_at", self.values.get("until", 0.0)))


@dataclass
class DeliveryPolicy:
    """Backoff and give-up settings of the dispatcher."""

    base: float = 2.0
    cap: float = 300.0
    give_up_after: float = 24 * 3600.0
    idle_wait: float = 30.0
    #: Seconds between reminders of a notifier problem that lasts (Alertmanager's default).
    repeat_interval: float = 4 * 3600.0
    #: A message waiting longer than this makes its notifier's trouble a problem to report.
    backlog_alert_after: float = 900.0


@dataclass
class NotifierStats:
    """Counters of one notifier for status lines and metrics."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    last_error: str = ""
    #: Detection-to-delivery latency of every delivery since start (``/metrics``).
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Consecutive failed attempts since the last delivery: the first one is a warning,
    #: the rest of the streak only information (the problem is announced, not each row).
    failing: int = 0


class Dispatcher:
    """Runs one delivery worker per notifier over the store's outbox."""

    def __init__(
        self,
        store: StateStore,
        notifiers: list[Notifier],
        *,
        db: DbCall,
        commit: Callable[[Batch], Awaitable[list[OrderEvent]]],
        redactor: Redactor,
        policy: DeliveryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.notifiers = {n.name: n for n in notifiers}
        self.policy = policy or DeliveryPolicy()
        self.stats = {n.name: NotifierStats() for n in notifiers}
        self._db = db
        self._commit = commit
        self._redact = redactor
        self._rng = rng or random.Random()
        self._wake = {n.name: asyncio.Event() for n in notifiers}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._abort = asyncio.Event()
        # Outcomes the store could not record (a full disk): kept here and written again, so
        # a delivered row is never sent twice and a retrying one keeps its turn.
        self._unrecorded: dict[int, Mark] = {}
        self.problems = AlertGroups(self.policy.repeat_interval)

    def start(self) -> None:
        """Start one worker task per notifier."""
        for name in self.notifiers:
            self._tasks.append(asyncio.create_task(self._worker(name), name=f"deliver-{name}"))

    def wake(self) -> None:
        """New rows were committed: let idle workers look again."""
        for event in self._wake.values():
            event.set()

    async def stop(self, grace: float) -> None:
        """Deliver what is due for up to ``grace`` seconds, then stop the workers.

        Whatever is left stays in the outbox and is delivered after the next start.
        """
        self._stopping = True
        self.wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        pending: set[asyncio.Task[Any]] = set(self._tasks)
        aborted: asyncio.Task[Any] = asyncio.create_task(self._abort.wait())
        while pending and not self._abort.is_set() and loop.time() < deadline:
            _, pending = await asyncio.wait(
                pending | {aborted}, timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED)
            pending.discard(aborted)
        aborted.cancel()
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, aborted, return_exceptions=True)
        self._tasks.clear()

    async def announce(self, event: OrderEvent) -> None:
        """Send an operator event straight to every notifier that wants it, bypassing the
        outbox: for the one problem the outbox cannot carry, a store that cannot commit.

        Best effort, once: each notifier within its timeout, failures only logged.
        """
        async def one(notifier: Notifier) -> None:
            try:
                async with asyncio.timeout(notifier.config.timeout + 5):
                    await notifier.send(event)
            except Exception as err:  # best effort: the log line is the fallback
                logger.warning("notifier %s: could not announce %s: %s", notifier.name,
                               event.scene, self._redact(f"{type(err).__name__}: {err}"))

        await asyncio.gather(*(one(n) for n in self.notifiers.values() if n.accepts(event)))

    def abort(self) -> None:
        """Make a running :meth:`stop` give up waiting at once."""
        self._abort.set()

    async def _worker(self, name: str) -> None:
        notifier = self.notifiers[name]
        wake = self._wake[name]
        while True:
            wake.clear()
            if self._unrecorded:
                await self._flush()
            if self._unrecorded_sends(name):
                # A delivery the store could not record yet: send nothing more until it is,
                # so a crash meanwhile repeats one message, not every message since.
                await self._sleep_until_due(name, wake, at_most=1.0)
                continue
            await self._remind()
            rows = await self._due(name)
            if not rows:
                if self._stopping:
                    return
                await self._sleep_until_due(name, wake)
                continue
            held: list[OutboxRow] = []
            waiting: set[tuple[str, str, str]] = set()
            gathering: dict[tuple[str, str, str], list[OutboxRow]] = {}
            progressed = False
            window = notifier.coalesce_window
            now = time.time()
            for row in rows:
                key = (row.event.broker, row.event.account_id, row.event.order_id)
                if row.event.event_type == "TRADE" and key in waiting:
                    continue  # per-order ordering: this order's earlier event is retrying
                mark = self._unrecorded.get(row.id)
                if mark is not None and (mark.final or now < mark.not_before):
                    if not mark.final:
                        waiting.add(key)  # retrying (in memory only): later rows wait too
                    continue
                if row.held:
                    held.append(row)  # quiet hours are over: these go out as one digest
                    continue
                if await self._hold(notifier, row):
                    progressed = True
                    continue
                if window and coalescible(row.event):
                    gathering.setdefault(key, []).append(row)  # sent below, or later
                    continue
                progressed = True
                fills = gathering.pop(key, [])
                if fills and row.event.scene == "FINAL_FILLED":
                    ok = await self._deliver(notifier, row, covers=fills)
                else:
                    # Any other event of the order: its gathered fills go first, in order.
                    ok = (await self._deliver_fills(notifier, fills) if fills else True) and \
                        await self._deliver(notifier, row)
                if not ok:
                    waiting.add(key)
                if self._unrecorded_sends(name):
                    break  # the store stopped recording: wait for it (see above)
            due_at = None
            for fills in gathering.values():
                ready = fills[0].created_at.timestamp() + window
                if (ready <= time.time() or self._stopping) and not self._unrecorded_sends(name):
                    progressed = True
                    await self._deliver_fills(notifier, fills)
                else:
                    due_at = ready if due_at is None else min(due_at, ready)
            if held and not self._unrecorded_sends(name):
                progressed = True
                await self._deliver_digest(notifier, held)
            if due_at is not None and not progressed:
                # Only gathering fills: wait for the window to close (or a new event).
                await self._wait(wake, due_at - time.time())
            if self._stopping and not await self._due(name):
                return

    def _unrecorded_sends(self, name: str) -> bool:
        """Whether a delivery of this notifier is sent (or given up) but not yet recorded."""
        return any(m.notifier == name and m.final for m in self._unrecorded.values())

    async def _due(self, name: str) -> list[OutboxRow]:
        """The notifier's due rows; none while the store cannot be read (its health says
        why, once per episode; the worker looks again after its idle wait)."""
        try:
            rows: list[OutboxRow] = await self._db(self.store.due, name)
        except StoreError as err:
            logger.debug("notifier %s: cannot read the outbox: %s", name, err)
            return []
        return rows

    async def _record(self, notifier: str, row_id: int, method: str, **values: Any) -> None:
        """Write one delivery outcome; if the store refuses, keep it to write later."""
        mark = Mark(notifier, method, values)
        try:
            await self._db(getattr(self.store, method), row_id, **values)
        except StoreError as err:
            logger.debug("outbox row %d: cannot record %s yet: %s", row_id, method, err)
            self._unrecorded[row_id] = mark
            return
        self._unrecorded.pop(row_id, None)

    async def _flush(self) -> None:
        """Write the outcomes the store refused earlier, oldest first, until one fails."""
        for row_id, mark in list(self._unrecorded.items()):
            try:
                await self._db(getattr(self.store, mark.method), row_id, **mark.values)
            except StoreError:
                return
            self._unrecorded.pop(row_id, None)

    async def _sleep_until_due(self, name: str, wake: asyncio.Event, *,
                               at_most: float | None = None) -> None:
        try:
            due = await self._db(self.store.next_attempt, name)
        except StoreError:
            due = None
        timeout = self.policy.idle_wait if due is None else max(0.0, due - time.time())
        timeout = min(timeout, self.policy.idle_wait, at_most or self.policy.idle_wait)
        try:
            await asyncio.wait_for(wake.wait(), timeout=timeout)
        except TimeoutError:
            pass

    async def _wait(self, wake: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=max(0.0, seconds))

    async def _deliver_fills(self, notifier: Notifier, fills: list[OutboxRow]) -> bool:
        """Send gathered partial fills of one order: one message for all of them."""
        if len(fills) == 1:
            return await self._deliver(notifier, fills[0])
        return await self._deliver(notifier, fills[0], covers=fills[1:], final=False)

    async def _deliver(self, notifier: Notifier, row: OutboxRow, *,
                       covers: list[OutboxRow] | None = None, final: bool = True) -> bool:
        """Try one row (standing for ``covers`` too, when fills were gathered); True when
        the worker may go on to the next.

        Gathered rows share one outcome: all sent, or all dead; a retry is recorded on the
        oldest row, which holds back the order's later rows as any retry does.
        """
        stats = self.stats[notifier.name]
        rows = [row, *(covers or [])]
        if covers and final:  # a FINAL_FILLED standing for the fills before it
            rows = [*covers, row]
            event = coalesced([r.event for r in covers], row.event)
        elif covers:
            event = coalesced([r.event for r in rows])
        else:
            event = row.event
        try:
            async with asyncio.timeout(notifier.config.timeout + 5):
                await notifier.send(event)
        except DeliveryFailed as err:
            for each in rows:
                await self._dead(notifier, each, self._redact(str(err)))
            return True
        except (DeliveryRetryable, TimeoutError) as err:
            message = self._redact(str(err) or f"no answer within {notifier.config.timeout:g} s")
            retry_after = getattr(err, "retry_after", None)
            # Pacing to the service's limits is expected, not a failure worth a warning.
            return await self._retry(notifier, rows[0], message, retry_after,
                                     quiet=isinstance(err, DeliveryRateLimited))
        except Exception as err:  # a notifier bug must not kill its worker
            logger.exception("notifier %s raised unexpectedly", notifier.name)
            message = self._redact(f"{type(err).__name__}: {err}")
            return await self._retry(notifier, rows[0], message, None)
        for each in rows:
            await self._record(notifier.name, each.id, "mark_sent")
        stats.delivered += len(rows)
        latency = (utcnow() - event.timestamp).total_seconds()
        for _ in rows:  # each event covered reached its reader now
            stats.latency.observe(latency)
        await self._delivered(notifier)
        return True

    async def _hold(self, notifier: Notifier, row: OutboxRow) -> bool:
        """Hold ``row`` until the end of the notifier's quiet hours; True when held."""
        quiet = notifier.config.quiet_hours
        if quiet is None or row.event.scene in quiet.break_through:
            return False
        end = quiet.end_of_quiet(utcnow())
        if end is None:
            return False
        await self._record(notifier.name, row.id, "hold", until=end.timestamp())
        logger.info("notifier %s: holding %s until the end of quiet hours (%s)",
                    notifier.name, row.event.short_id, end.isoformat(timespec="minutes"))
        return True

    async def _deliver_digest(self, notifier: Notifier, rows: list[OutboxRow]) -> None:
        title = f"poller: {len(rows)} event(s) during quiet hours"
        try:
            async with asyncio.timeout(notifier.config.timeout + 5):
                await notifier.send_digest([r.event for r in rows], title=title)
        except DeliveryFailed as err:
            for row in rows:
                await self._dead(notifier, row, self._redact(str(err)))
            return
        except Exception as err:  # retryable, timeout, or a notifier bug: try again later
            message = self._redact(str(err) or type(err).__name__)
            for row in rows:
                await self._retry(notifier, row, message, getattr(err, "retry_after", None))
            return
        stats = self.stats[notifier.name]
        for row in rows:
            await self._record(notifier.name, row.id, "mark_sent")
            stats.latency.observe((utcnow() - row.event.timestamp).total_seconds())
        stats.delivered += len(rows)
        await self._delivered(notifier)

    async def _retry(self, notifier: Notifier, row: OutboxRow, message: str,
                     retry_after: float | None, *, quiet: bool = False) -> bool:
        stats = self.stats[notifier.name]
        stats.last_error = message
        age = (utcnow() - row.created_at).total_seconds()
        if age >= self.policy.give_up_after:
            await self._dead(notifier, row, f"gave up after {age / 3600:.1f} h: {message}")
            return True
        delay = self._rng.uniform(0, min(self.policy.cap, self.policy.base * 2 ** row.attempts))
        if retry_after is not None:
            delay = max(delay, retry_after)
        stats.retried += 1
        stats.failing += 1
        # One warning when a notifier starts failing; the rest of the streak is information
        # (the operator event says how many wait, not a line per message).
        level = logging.WARNING if stats.failing == 1 and not quiet else logging.INFO
        logger.log(level, "notifier %s: delivery of %s failed (attempt %d), retrying in %.1f s: %s",
                   notifier.name, row.event.short_id, row.attempts + 1, delay, message)
        await self._record(notifier.name, row.id, "mark_retry",
                           next_attempt_at=time.time() + delay, error=message)
        if not quiet and age >= self.policy.backlog_alert_after:
            await self._problem(notifier.name, "backlog", message, count=0)
        return False

    async def _dead(self, notifier: Notifier, row: OutboxRow, message: str) -> None:
        stats = self.stats[notifier.name]
        stats.dead += 1
        stats.last_error = message
        first = f"notifier:{notifier.name}" not in self.problems
        logger.log(logging.ERROR if first else logging.INFO,
                   "notifier %s: gave up on %s (%s %s): %s", notifier.name,
                   row.event.short_id, row.event.scene, row.event.order_id, message)
        await self._record(notifier.name, row.id, "mark_dead", error=message)
        if row.event.event_type == "SYSTEM" and row.event.payload.get("notifier"):
            return  # never announce the failure of an announcement (no loops)
        await self._problem(
            notifier.name, "dead", message, count=1,
            first=(f"notifier {notifier.name} could not deliver {row.event.short_id} "
                   f"({row.event.scene} {row.event.order_id}): {message}."))

    # -- operator problems, grouped (poller.alertgroups) ----------------------------------

    async def _problem(self, name: str, cause: str, error: str, *, count: int,
                       first: str = "") -> None:
        """Count one occurrence of notifier ``name``'s trouble; announce when it starts or a
        reminder is due."""
        problem, phase = self.problems.seen(f"notifier:{name}", utcnow(), cause=cause,
                                            count=count)
        if phase is not None:
            await self._announce(name, problem, phase, error, first=first)

    async def _remind(self) -> None:
        """Reminders of the problems that still last, at the repeat interval."""
        for problem in self.problems.reminders(utcnow()):
            name = problem.key.removeprefix("notifier:")
            await self._announce(name, problem, Phase.REMINDER, self.stats[name].last_error
                                 if name in self.stats else "")

    async def _delivered(self, notifier: Notifier) -> None:
        """A delivery went through: the notifier's failure streak and problem are over."""
        self.stats[notifier.name].failing = 0
        problem = self.problems.resolve(f"notifier:{notifier.name}")
        if problem is not None:
            await self._announce(notifier.name, problem, Phase.RESOLVED, "")

    async def _announce(self, name: str, problem: Problem, phase: Phase, error: str, *,
                        first: str = "") -> None:
        now = utcnow()
        try:
            summary: OutboxSummary | None = (
                await self._db(self.store.outbox_summary, [name]))[name]
        except StoreError:
            summary = None
        scene, text = notifier_problem_text(
            name, problem, phase, now=now, summary=summary, error=error, first=first,
            repeat_interval=self.problems.repeat_interval)
        with contextlib.suppress(StoreError):  # the store's health announces its own trouble
            await self._commit(Batch(events=[system_event(
                scene, notifier=name, detected_at=now, message=text, phase=phase.value,
                count=problem.count, discriminator=problem.discriminator(phase))]))
        logger.log(logging.INFO if phase is Phase.RESOLVED else logging.WARNING,
                   "notifier %s: problem %s: %s", name, phase.value, text)

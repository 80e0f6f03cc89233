"""Queued actions: submit validates and queues, the runner hands each to its connection and
records the outcome — also when there is no such connection or the executor fails."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from poller.actionqueue import ActionRefused, ActionRunner, parse_decimal, submit
from poller.actions import Outcome
from poller.records import ActionRow
from poller.store import Store


@pytest.mark.parametrize(("text", "error"), [
    ("0", "must be positive"), ("-2", "must be positive"), ("NaN", "must be positive"),
    ("inf", "must be positive"), ("1e", "must be a number"), ("ten", "must be a number")])
def test_parse_decimal_refuses_what_is_not_a_positive_number(text: str, error: str) -> None:
    with pytest.raises(ActionRefused, match=error):
        parse_decimal(text, "price")
    assert parse_decimal("101.50", "price") == Decimal("101.50")
    assert parse_decimal(None, "price") is None


def test_submit_refuses_nonsense_and_queues_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with pytest.raises(ActionRefused, match="unknown action 'amend'"):
        submit(db, "cx", "1", "amend")
    with pytest.raises(ActionRefused, match="replace needs"):
        submit(db, "cx", "1", "replace")
    row = submit(db, "cx", "1", "replace", price="27.05", wait=False)
    assert (row.state, row.kind, row.price, row.done) == ("queued", "replace", "27.05", False)


class Executor:
    """Stands in for one connection's executor: answers from ``outcome``."""

    def __init__(self, outcome: Callable[[ActionRow], Outcome]) -> None:
        self.outcome = outcome
        self.seen: list[tuple[int, Decimal | None, Decimal | None]] = []

    async def perform(self, row: ActionRow, qty: Decimal | None,
                      price: Decimal | None) -> Outcome:
        self.seen.append((row.id, qty, price))
        return self.outcome(row)


def run_runner(db: Path, executors: dict[str, Any], count: int, *, expiry: float = 300.0
               ) -> list[ActionRow]:
    """Run the runner until ``count`` actions are done; return every action."""
    store = Store.open(db)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def run() -> list[ActionRow]:
        runner = ActionRunner(store, call, executors.get, every=0.02, expiry=expiry)
        runner.start()
        try:
            while sum(1 for r in all_rows() if r.done) < count:
                await asyncio.sleep(0.02)
        finally:
            await runner.stop()
        return all_rows()

    def all_rows() -> list[ActionRow]:
        rows = []
        for ident in range(1, 100):
            row = store.action(ident)
            if row is None:
                break
            rows.append(row)
        return rows

    try:
        return asyncio.run(run())
    finally:
        store.close()


def test_the_runner_records_outcomes_refusals_and_internal_errors(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    good = Executor(lambda r: Outcome(True, "MODIFY_SUCCESS", "the broker shows it"))

    def broken(row: ActionRow) -> Outcome:
        raise RuntimeError("a bug")

    submit(db, "cx", "1", "replace", qty="5", wait=False)
    submit(db, "gone", "2", "cancel", wait=False)
    submit(db, "bad", "3", "cancel", wait=False)
    rows = run_runner(db, {"cx": good, "bad": Executor(broken)}, 3)
    outcome = {r.broker: (r.state, r.outcome, r.message) for r in rows}
    assert outcome["cx"] == ("succeeded", "MODIFY_SUCCESS", "the broker shows it")
    assert outcome["gone"] == ("failed", "", "no running connection 'gone'")
    assert outcome["bad"] == ("failed", "", "internal error: RuntimeError")
    assert good.seen == [(1, Decimal(5), None)]


def test_an_action_queued_too_long_ago_expires_unsent(tmp_path: Path) -> None:
    """A replace queued while no daemon ran must not fire whenever one starts."""
    db = tmp_path / "p.db"
    executor = Executor(lambda r: Outcome(True, "MODIFY_SUCCESS", "sent"))
    submit(db, "cx", "1", "replace", qty="5", wait=False)
    submit(db, "cx", "2", "cancel", wait=False)
    with sqlite3.connect(db) as conn:  # the first waited an hour for a daemon
        conn.execute("UPDATE actions SET created_at = ? WHERE id = 1",
                     ((datetime.now(UTC) - timedelta(hours=1)).isoformat(),))
    rows = run_runner(db, {"cx": executor}, 2, expiry=300.0)
    first, second = rows
    assert (first.state, first.outcome) == ("failed", "EXPIRED")
    assert "waited longer than daemon.action_expiry" in first.message
    assert (second.state, second.outcome) == ("succeeded", "MODIFY_SUCCESS")
    assert [seen[0] for seen in executor.seen] == [2]  # the expired one never reached it


def test_a_connection_handed_to_another_instance_stops_its_actions_here(
        tmp_path: Path) -> None:
    """In a cluster the lease's new holder runs the queue's actions of that connection: the
    old holder's running ones stop when its lease goes (their rows stay queued), so the two
    never run one action at once, and the new holder runs it to its end."""
    db = tmp_path / "p.db"
    submit(db, "cx", "1", "cancel", wait=False)
    store = Store.open(db)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    class Hanging:
        """An executor whose verification never ends (the broker is slow to show it)."""

        def __init__(self) -> None:
            self.started = asyncio.Event()
            self.cancelled = False

        async def perform(self, row: ActionRow, qty: Decimal | None,
                          price: Decimal | None) -> Outcome:
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            raise AssertionError("never reached")

    async def run() -> tuple[Hanging, ActionRow | None, ActionRow | None]:
        hanging = Hanging()
        held: dict[str, Any] = {"cx": hanging}
        old = ActionRunner(store, call, held.get, every=0.02, held_only=True)
        old.start()
        await asyncio.wait_for(hanging.started.wait(), 10)
        del held["cx"]  # the lease went elsewhere
        await old.drop_connection("cx")
        left = store.action(1)
        done = asyncio.Event()

        def finish(row: ActionRow) -> Outcome:
            done.set()
            return Outcome(True, "CANCEL_SUCCESS", "gone")

        holder: dict[str, Any] = {"cx": Executor(finish)}
        new = ActionRunner(store, call, holder.get, every=0.02, held_only=True)
        new.start()
        await asyncio.wait_for(done.wait(), 10)
        await new.stop()
        await old.stop()
        return hanging, left, store.action(1)

    try:
        hanging, left, final = asyncio.run(run())
    finally:
        store.close()
    assert hanging.cancelled
    assert left is not None and left.state == "queued"
    assert final is not None and (final.state, final.outcome) == ("succeeded", "CANCEL_SUCCESS")

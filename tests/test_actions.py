"""Order actions through the daemon, per broker: success, refusal, and the cancel-vs-fill race.

Each case runs the real daemon against the broker's simulator; the action is queued with the
Python API (:func:`poller.actions.submit`, as the CLI does) and its outcome is read back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from poller.actionqueue import ActionRefused, submit
from poller.cli import main
from poller.records import ActionRow
from poller.simulator.base import BrokerSim
from poller.simulator.coinw import CoinWSim
from poller.simulator.httpserver import SimRequest, SimResponse
from poller.simulator.longport import LongPortSim
from poller.simulator.shioaji import ShioajiSim
from poller.simulator.webull import WebullSim
from tests.conftest import Receiver, daemon_config, running_app
from tests.test_daemon import _toml


@dataclass
class Broker:
    """How to run one broker's simulator for action tests."""

    make: Callable[[], BrokerSim]
    table: dict[str, Any]
    refuse: Callable[[SimRequest], SimResponse | None]  # the broker's refusal of an action
    replace: dict[str, str]  # a valid replace for a 10-lot order at the default price
    can_replace: bool = True


def _shioaji_refusal(request: SimRequest) -> SimResponse | None:
    if request.path in ("/api/v1/order/cancel_order", "/api/v1/order/update_price"):
        return SimResponse(400, {"code": 400, "message": "Order can not be modified now",
                                 "details": None})
    return None


def _longport_refusal(request: SimRequest) -> SimResponse | None:
    if request.method in ("PUT", "DELETE"):
        return SimResponse(400, {"code": 602012, "message": "order status not allowed",
                                 "data": None})
    return None


def _webull_refusal(request: SimRequest) -> SimResponse | None:
    if request.path in ("/trade/order/cancel", "/trade/order/replace"):
        return SimResponse(400, {"error_code": "ORDER_NOT_MODIFIABLE",
                                 "message": "The order cannot be modified now"})
    return None


def _coinw_refusal(request: SimRequest) -> SimResponse | None:
    if request.param("command") == "cancelOrder":
        return SimResponse(200, {"code": -103, "msg": "Order cannot be cancelled"})
    return None


BROKERS = {
    "shioaji": Broker(ShioajiSim, {"interval": 0.2}, _shioaji_refusal,
                      {"price": "27.05", "qty": "6"}),
    "longport": Broker(LongPortSim, {"interval": 1.3}, _longport_refusal,
                       {"price": "189.9", "qty": "12"}),
    "webull": Broker(WebullSim, {}, _webull_refusal, {"price": "385.1"}),
    "coinw": Broker(CoinWSim, {"interval": 0.3}, _coinw_refusal, {}, can_replace=False),
}


def run_case(tmp_path: Path, receiver: Receiver, kind: str,
             script: Callable[[BrokerSim, str, Path], ActionRow | str],
             until: str | None = None) -> tuple[ActionRow | str, str, BrokerSim]:
    """Start the simulator and the daemon, place one working order, run ``script``; keep
    the daemon running until the order's ``until`` scene has been delivered."""
    broker = BROKERS[kind]
    sim = broker.make()
    sim.start()
    try:
        config = daemon_config(tmp_path, {"b": sim.broker_config("b") | broker.table},
                               receiver.url, announce_existing=True)
        account = sim.accounts()[0]
        symbol, price = sim.symbols[0]
        order = sim.book.place(account, symbol, "BUY", 10, price)
        sim.book.accept(order.order_id)

        async def scenario() -> ActionRow | str:
            async with running_app(config):
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                result = await asyncio.to_thread(script, sim, order.order_id,
                                                 tmp_path / "poller.db")
                if until:
                    await asyncio.to_thread(
                        receiver.wait_for, lambda e: until in receiver.scenes(order.order_id))
                return result

        return asyncio.run(scenario()), order.order_id, sim
    finally:
        sim.stop()


@pytest.mark.parametrize("kind", [k for k, b in BROKERS.items() if b.can_replace])
def test_replace_succeeds_with_a_verified_outcome(tmp_path: Path, receiver: Receiver,
                                                  kind: str) -> None:
    change = BROKERS[kind].replace
    row, order_id, sim = run_case(tmp_path, receiver, kind, lambda s, o, db: submit(
        db, "b", o, "replace", qty=change.get("qty"), price=change.get("price"), timeout=30),
        until="MODIFY_SUCCESS")
    assert isinstance(row, ActionRow)
    assert (row.state, row.outcome) == ("succeeded", "MODIFY_SUCCESS"), row.message
    receiver.wait_for(lambda e: "MODIFY_SUCCESS" in receiver.scenes(order_id))
    modified = [e for e in receiver.events if e["payload"]["scene_type"] == "MODIFY_SUCCESS"][0]
    assert modified["payload"]["changes"]["price"]["new"] == change["price"]
    assert str(sim.book.get(order_id).price) == change["price"]


@pytest.mark.parametrize("kind", list(BROKERS))
def test_cancel_succeeds(tmp_path: Path, receiver: Receiver, kind: str) -> None:
    row, order_id, sim = run_case(tmp_path, receiver, kind,
                                  lambda s, o, db: submit(db, "b", o, "cancel", timeout=30),
                                  until="CANCEL_SUCCESS")
    assert isinstance(row, ActionRow)
    assert (row.state, row.outcome) == ("succeeded", "CANCEL_SUCCESS"), row.message
    receiver.wait_for(lambda e: "CANCEL_SUCCESS" in receiver.scenes(order_id))
    assert sim.book.get(order_id).status == "CANCELLED"


@pytest.mark.parametrize("kind", list(BROKERS))
def test_a_refusal_is_reported_with_the_brokers_reason(tmp_path: Path, receiver: Receiver,
                                                       kind: str) -> None:
    broker = BROKERS[kind]

    def script(sim: BrokerSim, order_id: str, db: Path) -> ActionRow:
        sim.server.fault = broker.refuse
        return submit(db, "b", order_id, "cancel", timeout=30)

    row, order_id, _ = run_case(tmp_path, receiver, kind, script, until="CANCEL_FAILED")
    assert isinstance(row, ActionRow)
    assert (row.state, row.outcome) == ("failed", "CANCEL_FAILED")
    assert row.message
    failed = [e for e in receiver.wait_for(
        lambda e: "CANCEL_FAILED" in receiver.scenes(order_id))
        if e["payload"]["scene_type"] == "CANCEL_FAILED"][0]
    assert failed["payload"]["message"] == row.message


@pytest.mark.parametrize("kind", list(BROKERS))
def test_cancel_that_loses_the_race_against_a_fill(tmp_path: Path, receiver: Receiver,
                                                    kind: str) -> None:
    refusal = BROKERS[kind].refuse

    def script(sim: BrokerSim, order_id: str, db: Path) -> ActionRow:
        def fill_first(request: SimRequest) -> SimResponse | None:
            # The order fills at the broker just before the cancel request is processed.
            if refusal(request) is not None and not sim.book.get(order_id).terminal:
                sim.book.fill(order_id)
            return None

        sim.server.fault = fill_first
        return submit(db, "b", order_id, "cancel", timeout=30)

    row, order_id, _ = run_case(tmp_path, receiver, kind, script, until="FINAL_FILLED")
    assert isinstance(row, ActionRow)
    assert (row.state, row.outcome) == ("failed", "CANCEL_FAILED"), row.message
    receiver.wait_for(lambda e: "FINAL_FILLED" in receiver.scenes(order_id))
    scenes = receiver.scenes(order_id)
    assert scenes.index("CANCEL_FAILED") < scenes.index("FINAL_FILLED")
    assert "CANCEL_SUCCESS" not in scenes


def test_local_validation(tmp_path: Path, receiver: Receiver,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything is sent: finished orders, quantity increases at Shioaji,
    replaces at CoinW, bad numbers."""
    def script(sim: BrokerSim, order_id: str, db: Path) -> str:
        more = submit(db, "b", order_id, "replace", qty="20", timeout=30)
        sim.book.fill(order_id)
        return more.message

    message, _, _ = run_case(tmp_path, receiver, "shioaji", script)
    assert message == "Shioaji can only decrease an order's quantity (10 → 20 is an increase)"
    with pytest.raises(ActionRefused, match="quantity must be positive"):
        submit(tmp_path / "poller.db", "b", "x", "replace", qty="-1")
    with pytest.raises(ActionRefused, match="replace needs"):
        submit(tmp_path / "poller.db", "b", "x", "replace")

    sim = CoinWSim()
    path = tmp_path / "coinw.toml"
    path.write_text(_toml(daemon_config(tmp_path, {"cw": sim.broker_config("cw")}, None)))
    assert main(["replace", "-c", str(path), "cw", "123", "--price", "1"]) == 2
    assert "coinw cannot replace orders through its API; cancel it and place a new one" in \
        capsys.readouterr().err
    assert main(["cancel", "-c", str(path), "cw", "123", "--no-wait"]) == 0
    assert "queued as action" in capsys.readouterr().out
    sim.stop()


def test_webull_processing_answer_is_retried_within_the_budget(tmp_path: Path,
                                                               receiver: Receiver) -> None:
    """Another client's replace is in progress: Webull answers "order is processing" and the
    cancel is retried at the cancel limit (1 per second) until it goes through."""
    attempts: list[float] = []

    def script(sim: BrokerSim, order_id: str, db: Path) -> ActionRow:
        assert isinstance(sim, WebullSim)
        order = sim.book.get(order_id)
        with sim.book.lock:  # a replace sent by the user's own program, not yet applied
            order.extra["before_replace"] = order.status
            order.extra["pending_replace"] = (order.qty, order.price - Decimal("0.1"))
            order.status = "PENDING_REPLACE"

        def release(request: SimRequest) -> SimResponse | None:
            if request.path == "/trade/order/cancel":
                attempts.append(request.arrived)
                if len(attempts) == 3:
                    sim.finish_replace(order_id)
            return None

        sim.server.fault = release
        return submit(db, "b", order_id, "cancel", timeout=60)

    row, order_id, sim = run_case(tmp_path, receiver, "webull", script,
                                  until="CANCEL_SUCCESS")
    assert isinstance(row, ActionRow)
    assert (row.state, row.outcome) == ("succeeded", "CANCEL_SUCCESS"), row.message
    assert len(attempts) == 3 and row.attempts == 3
    assert min(b - a for a, b in zip(attempts, attempts[1:], strict=False)) >= 1.0
    assert sim.windows["cancel"].violations == 0

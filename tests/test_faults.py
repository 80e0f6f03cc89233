"""Fault injection against the simulator: nothing escapes the poll loop, every call has a
deadline, and each fault gives one categorised log line and counter, never a traceback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from poller.brokers.shioaji import ShioajiAdapter
from poller.simulator.httpserver import SimRequest, SimResponse
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app

LIST = "/api/v1/order/update_status"

FAULTS: list[tuple[str, SimResponse | None, str]] = [
    ("5xx", SimResponse(500, {"code": 500, "message": "internal", "details": None}),
     "unavailable"),
    ("502 HTML page", SimResponse(502, raw=b"<html><h1>Bad gateway</h1></html>",
                                  headers={"Content-Type": "text/html"}), "unavailable"),
    ("200 HTML page", SimResponse(200, raw=b"<!doctype html><p>maintenance</p>",
                                  headers={"Content-Type": "text/html"}), "malformed"),
    ("truncated JSON", SimResponse(200, raw=b'[{"order": {"id": "x"'), "malformed"),
    ("wrong shape", SimResponse(200, {"trades": []}), "malformed"),
    ("null body", SimResponse(200, raw=b"null"), "malformed"),
    ("huge body", SimResponse(200, raw=b"[" + b"0," * (5 * 1024 * 1024) + b"0]"), "too_large"),
    ("timeout", SimResponse(200, [], delay=3.0), "unavailable"),
    ("trickling body", SimResponse(200, raw=b"[" + b" " * 200 + b"]", trickle=0.05),
     "unavailable"),
    ("rate limited", SimResponse(429, {"code": 429, "message": "slow down", "details": None}),
     "rate_limited"),
]


@pytest.mark.parametrize(("fault", "category"), [(f[1], f[2]) for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
def test_faults_are_contained(tmp_path: Path, receiver: Receiver,
                              caplog: pytest.LogCaptureFixture, fault: SimResponse,
                              category: str) -> None:
    sim = ShioajiSim()
    sim.start()
    injected: list[SimRequest] = []

    def inject(request: SimRequest) -> SimResponse | None:
        if request.path == LIST and len(injected) < 2:
            injected.append(request)
            return fault
        return None

    try:
        account = sim.accounts()[0]
        table = sim.broker_config("tw") | {"interval": 0.2, "timeout": 1.0}
        config = daemon_config(tmp_path, {"tw": table}, receiver.url, announce_existing=True)

        async def scenario() -> dict[str, int]:
            async with running_app(config) as app:
                sim.server.fault = inject
                sim.book.place(account, "2890", "BUY", 1, "27.1")
                await asyncio.to_thread(
                    receiver.wait_for,
                    lambda e: any(x["payload"]["scene_type"] == "PLACED" for x in e), 20)
                return dict(app.trackers["tw"].errors)

        caplog.set_level(logging.INFO)
        if category == "rate_limited":
            # The group pauses past Shioaji's one-minute suspension; let the test's clock be
            # the budget's by pausing for less (the adapter's penalty is the real one).
            saved = ShioajiAdapter.errors
            ShioajiAdapter.errors = dataclasses.replace(saved, penalty=0.5)
            try:
                errors = asyncio.run(scenario())
            finally:
                ShioajiAdapter.errors = saved
        else:
            errors = asyncio.run(scenario())
    finally:
        sim.stop()
    assert errors == {category: 2}
    word = {"rate_limited": "rate-limited", "too_large": "larger than"}.get(category, category)
    lines = [r for r in caplog.records if r.name.startswith("poller") and r.levelno >= logging.INFO
             and word in r.getMessage()]
    assert len(lines) in (1, 2), [r.getMessage() for r in lines]  # one per episode (+recovery)
    assert all(r.getMessage().startswith("tw: ") for r in lines)
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    if category == "unavailable" and fault.delay or fault.trickle:
        assert any("no complete answer within 1 s" in r.getMessage() or "timed out" in
                   r.getMessage() for r in caplog.records)


def test_connection_refused_is_contained(tmp_path: Path, receiver: Receiver,
                                         caplog: pytest.LogCaptureFixture) -> None:
    sim = ShioajiSim()
    port = sim.server.port
    table = sim.broker_config("tw") | {"interval": 0.2, "base_url": f"http://127.0.0.1:{port}"}
    sim.server._httpd.server_close()  # nothing listens there any more
    config = daemon_config(tmp_path, {"tw": table}, receiver.url)

    async def scenario() -> dict[str, int]:
        async with running_app(config) as app:
            tracker = app.trackers["tw"]
            while tracker.errors.get("unavailable", 0) < 3:
                await asyncio.sleep(0.05)
            return dict(tracker.errors)

    caplog.set_level(logging.INFO)
    errors = asyncio.run(scenario())
    assert set(errors) == {"unavailable"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["tw: poll failed (unavailable): request failed (ConnectError)"]


def _trade(sim: ShioajiSim, order_id: str, **status: Any) -> dict[str, Any]:
    trade = sim.render(sim.book.get(order_id), sim.account_list[0])
    trade["status"].update(status)
    return json.loads(json.dumps(trade))


def test_duplicated_reordered_and_unknown_items(tmp_path: Path, receiver: Receiver,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A list answer that repeats an order, shows an older state of another, and carries an
    undocumented status: no duplicate or backwards event, one warning per distinct problem."""
    sim = ShioajiSim()
    sim.start()
    try:
        account = sim.accounts()[0]
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url, announce_existing=True)
        a = sim.book.place(account, "2890", "BUY", 4, "27.1")
        sim.book.accept(a.order_id)
        sim.book.fill(a.order_id, 4)
        b = sim.book.place(account, "2330", "BUY", 2, "1085")
        sim.book.accept(b.order_id)
        served: list[int] = []

        def answer(request: SimRequest) -> SimResponse | None:
            if request.path != LIST or len(served) >= 6:
                return None
            served.append(1)
            older = _trade(sim, a.order_id, status="Submitted", deal_quantity=0, deals=[])
            odd = _trade(sim, b.order_id, status="Mystery")
            fresh = _trade(sim, a.order_id)
            return SimResponse(200, [fresh, fresh, older, odd] if len(served) > 1 else [fresh])

        async def scenario() -> None:
            async with running_app(config):
                sim.server.fault = answer
                await asyncio.to_thread(receiver.wait_for, lambda e: len(served) >= 6 and
                                        len(e) >= 2, 20)

        caplog.set_level(logging.INFO)
        asyncio.run(scenario())
    finally:
        sim.stop()
    assert receiver.scenes(a.order_id) == ["FINAL_FILLED"]
    assert receiver.scenes(b.order_id) in ([], ["PLACED"])
    mystery = [r for r in caplog.records if "Mystery" in r.getMessage()]
    assert len(mystery) == 1


def test_refused_credentials_stop_the_connection_and_a_probe_brings_it_back(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient 401: one BROKER_AUTH_FAILED, probes (one list call each) at the backoff,
    one BROKER_RECOVERED, then orders are announced again. A reload probes at once."""
    from poller import coordinator
    monkeypatch.setattr(coordinator, "PROBE_FIRST", 0.3)
    sim = ShioajiSim()
    sim.start()
    refused: list[float] = []

    def refuse(request: SimRequest) -> SimResponse | None:
        if request.path == LIST and len(refused) < 3:
            refused.append(request.arrived)
            return SimResponse(401, {"code": 401, "message": "token expired", "details": None})
        return None

    try:
        account = sim.accounts()[0]
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.1}},
                               receiver.url, announce_existing=True)

        async def scenario() -> tuple[list[str], str | None]:
            async with running_app(config) as app:
                sim.server.fault = refuse
                await asyncio.to_thread(receiver.wait_for, lambda e: any(
                    x["payload"]["scene_type"] == "BROKER_RECOVERED" for x in e), 30)
                order = sim.book.place(account, "2890", "BUY", 1, "27.1")
                await asyncio.to_thread(receiver.wait_for,
                                        lambda e: "PLACED" in receiver.scenes(order.order_id))
                return receiver.scenes(), app.trackers["tw"].stopped_reason

        scenes, stopped = asyncio.run(scenario())
    finally:
        sim.stop()
    assert [s for s in scenes if s.startswith("BROKER_")] == ["BROKER_AUTH_FAILED",
                                                               "BROKER_RECOVERED"]
    assert stopped is None and len(refused) == 3
    gaps = [b - a for a, b in zip(refused, refused[1:], strict=False)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # one probe at a time, backing off


def test_an_answer_over_the_limit_names_the_cause_and_the_limit_is_configurable(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    sim = ShioajiSim()
    sim.start()
    big = SimResponse(200, raw=b"[" + b" " * (9 * 1024 * 1024) + b"]")
    try:
        for limit, expected in ((None, {"too_large"}), (16.0, set())):
            sim.server.fault = lambda r: big if r.path == LIST else None
            table = sim.broker_config("tw") | {"interval": 0.1}
            if limit is not None:
                table["max_answer_mb"] = limit
            config = daemon_config(tmp_path / str(limit), {"tw": table}, receiver.url)

            async def scenario(config: dict[str, Any]) -> set[str]:
                async with running_app(config) as app:
                    tracker = app.trackers["tw"]
                    while tracker.polls < 3:
                        await asyncio.sleep(0.05)
                    return set(tracker.errors)

            assert asyncio.run(scenario(config)) == expected
    finally:
        sim.stop()
    told = [e for e in receiver.events
            if e["payload"]["scene_type"] == "BROKER_ANSWER_TOO_LARGE"]
    assert len(told) == 1
    assert "larger than 8 MiB (raise brokers.tw.max_answer_mb" in told[0]["payload"]["message"]
    assert "unreachable" not in caplog.text

"""Canary secrets in every secret field; none may appear in logs, errors, the database or
the messages of a full run (with an auth failure and a failing notifier thrown in)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from poller.api import ApiServer
from poller.logsetup import setup_logging
from poller.simulator.coinw import CoinWSim
from poller.simulator.httpserver import SimResponse
from poller.simulator.longport import LongPortSim
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app
from tests.test_api import call
from tests.test_lifecycle import free_port

CANARIES = {
    "sj_key": "cnry-sj-key-11aa", "sj_secret": "cnry-sj-sec-22bb",
    "lp_key": "cnry-lp-key-33cc", "lp_secret": "cnry-lp-sec-44dd",
    "lp_token": "cnry-lp-tok-55ee", "cw_key": "cnry-cw-key-66ff", "cw_secret": "cnry-cw-sec-77aa",
    "cw_wrong": "cnry-cw-bad-88bb", "hook_path": "cnry-hook-99cc", "hook_secret": "cnry-hm-00dd",
    "hook_header": "cnry-hdr-12ef", "dead_path": "cnry-dead-34ab",
    "api_token": "cnry-api-token-56cd-7890",
}


def test_no_canary_anywhere(tmp_path: Path, receiver: Receiver,
                            caplog: pytest.LogCaptureFixture) -> None:
    c = CANARIES
    sj = ShioajiSim(seed=1, api_key=c["sj_key"], secret_key=c["sj_secret"])
    lp = LongPortSim(seed=2, app_key=c["lp_key"], app_secret=c["lp_secret"],
                     access_token=c["lp_token"])
    cw = CoinWSim(seed=3, api_key=c["cw_key"], secret_key=c["cw_secret"])
    sims = [sj, lp, cw]
    for sim in sims:
        sim.start()
    receiver.server.route("POST", f"/{c['hook_path']}/hook", receiver._hook)
    # A receiver whose 404 page echoes the path it was asked for, token and all.
    receiver.server.route("POST", f"/{c['dead_path']}", lambda r: SimResponse(
        404, raw=f"Cannot POST {r.path}".encode(), headers={"Content-Type": "text/plain"}))
    stream = io.StringIO()
    try:
        brokers = {
            "tw": sj.broker_config("tw") | {"interval": 0.2},
            "lp": lp.broker_config("lp") | {"interval": 1.3},
            "cw": cw.broker_config("cw") | {"interval": 0.3},
            "cw-bad": cw.broker_config("cw-bad") | {"secret_key": c["cw_wrong"]},
        }
        api_port = free_port()
        config = daemon_config(tmp_path, brokers, None, announce_existing=True,
                               api_listen=f"127.0.0.1:{api_port}", api_token=c["api_token"])
        config["notifiers"] = {
            "hook": {"kind": "webhook",
                     "url": f"{receiver.server.url}/{c['hook_path']}/hook",
                     "secret": c["hook_secret"], "headers": {"X-Token": c["hook_header"]}},
            "dead": {"kind": "webhook", "url": f"{receiver.server.url}/{c['dead_path']}"},
        }

        redactor = setup_logging(level="DEBUG", stream=stream)
        # The simulators log their own request lines (as a broker's access log would, keys
        # and all); they are the broker side, not poller.
        logging.getLogger("poller.simulator").setLevel(logging.INFO)

        async def scenario() -> None:
            async with running_app(config, redactor=redactor) as app:
                api = ApiServer(app.settings.daemon.database, c["api_token"], "127.0.0.1",
                                api_port, connections=lambda: set(app.trackers),
                                wake=lambda: None)
                api.start()
                try:
                    logging.getLogger("poller").debug("settings: %r / %s", app.settings.daemon,
                                                      c["api_token"])
                    await asyncio.to_thread(call, api_port, "GET", "/v1/actions/1",
                                            token=c["api_token"])
                finally:
                    api.stop()
                for sim in sims:
                    account = sim.accounts()[0]
                    symbol, price = sim.symbols[0]
                    order = sim.book.place(account, symbol, "BUY", 10, price)
                    sim.book.accept(order.order_id)
                    sim.book.fill(order.order_id, 4)
                def done(events: list[dict[str, object]]) -> bool:
                    scenes = [e["payload"]["scene_type"] for e in events]  # type: ignore[index]
                    return ("BROKER_AUTH_FAILED" in scenes and "NOTIFIER_DEAD_LETTER" in scenes
                            and scenes.count("FILLED") >= 3)

                await asyncio.to_thread(receiver.wait_for, done, 30)
                assert app.trackers["cw-bad"].stopped_reason

        caplog.set_level(logging.DEBUG)
        logging.getLogger("poller.simulator").setLevel(logging.INFO)
        asyncio.run(scenario())
    finally:
        for sim in sims:
            sim.stop()
        logging.getLogger().handlers = [h for h in logging.getLogger().handlers
                                        if not getattr(h, "_poller", False)]
        logging.getLogger("poller.simulator").setLevel(logging.NOTSET)
    scenes = [e["payload"]["scene_type"] for e in receiver.events]
    assert "BROKER_AUTH_FAILED" in scenes and "NOTIFIER_DEAD_LETTER" in scenes

    places = {
        "formatted log": stream.getvalue(),
        "log records": "\n".join(
            r.getMessage() + (r.exc_text or "") for r in caplog.records),
        "messages": "\n".join(r.body.decode() for r in receiver.requests),
        "database": b"".join(p.read_bytes() for p in tmp_path.glob("poller.db*")
                             if p.is_file()).decode("latin-1"),
    }
    assert "credentials refused" in places["formatted log"]  # the run did log errors
    for where, text in places.items():
        for name, canary in CANARIES.items():
            assert canary not in text, f"{name} leaked into the {where}"


DB_CANARY = "cnry-db-pass-78ef"


def test_the_database_password_appears_nowhere(tmp_path: Path, receiver: Receiver,
                                               pg_url: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A daemon on PostgreSQL with a password (the test server trusts local connections,
    so the password is sent and ignored), then the commands against a database that does
    not answer: the password is in no log line, message, error or table."""
    sim = ShioajiSim(seed=4)
    sim.start()
    stream = io.StringIO()
    try:
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url, announce_existing=True, lease_seconds=3,
                               database=pg_url, database_password=DB_CANARY)
        redactor = setup_logging(level="DEBUG", stream=stream)

        async def scenario() -> None:
            async with running_app(config, redactor=redactor) as app:
                logging.getLogger("poller").debug("settings: %r", app.settings.daemon)
                account = sim.accounts()[0]
                order = sim.book.place(account, "2890", "BUY", 10, "27.1")
                sim.book.accept(order.order_id)
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1, 30)

        caplog.set_level(logging.DEBUG)
        asyncio.run(scenario())
    finally:
        sim.stop()
        logging.getLogger().handlers = [h for h in logging.getLogger().handlers
                                        if not getattr(h, "_poller", False)]
    config_file = tmp_path / "down.toml"
    config_file.write_text('[daemon]\ndatabase = "postgresql://poller@127.0.0.1:1/poller"\n')
    env = {**os.environ, "POLLER_DAEMON__DATABASE_PASSWORD": DB_CANARY}
    commands = [subprocess.run([sys.executable, "-m", "poller", command, "-c", str(config_file)],
                               capture_output=True, text=True, env=env, timeout=60)
                for command in ("check-config", "status", "orders")]
    with psycopg.connect(pg_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = "\n".join(str(row) for table in tables
                         for row in conn.execute(f'SELECT * FROM "{table}"'))
    assert [c.returncode for c in commands] == [74, 74, 74]
    for done in commands:
        errors = [line for line in done.stderr.splitlines() if "warning" not in line]
        assert len(errors) == 1 and errors[0].startswith(
            "poller: cannot reach the database 127.0.0.1:1/poller: "), done.stderr
        assert "Traceback" not in done.stderr
    places = {"formatted log": stream.getvalue(),
              "log records": "\n".join(r.getMessage() for r in caplog.records),
              "messages": "\n".join(r.body.decode() for r in receiver.requests),
              "database": dump,
              "command output": "\n".join(c.stdout + c.stderr for c in commands)}
    assert "joined the cluster" in places["formatted log"]
    for where, text in places.items():
        assert DB_CANARY not in text, f"the database password leaked into the {where}"

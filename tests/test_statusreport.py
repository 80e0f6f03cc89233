"""``poller status``: a real database with orders, pending and dead deliveries and a queued
action; with no daemon, and with a real ``/healthz`` server on loopback answering today's
shape, the extended one and nonsense; ``--json``; exit codes; ``--watch`` ended by SIGINT."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from poller.cli import main
from poller.databaseurl import DatabaseUrl
from poller.events import OrderEvent, system_event
from poller.models import OrderSnapshot, OrderStatus, SystemScene, iso, utcnow
from poller.pgstore import PgStore
from poller.records import Batch, InstanceInfo
from poller.settings import load_settings
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer
from poller.simulator.shioaji import ShioajiSim
from poller.statusreport import age, gather
from poller.store import Store
from tests.conftest import Receiver, daemon_config
from tests.test_daemon import _toml
from tests.test_lifecycle import FakeSystemd, free_port

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 5, 20, 3, 24, 30, tzinfo=UTC)


def snapshot(order_id: str, status: OrderStatus = OrderStatus.SUBMITTED) -> OrderSnapshot:
    return OrderSnapshot(broker="tw-main", broker_kind="shioaji", account_id="A",
                         order_id=order_id, status=status, broker_status=status.value,
                         symbol="2890", side="BUY", qty=Decimal("2"), price=Decimal("27.1"))


def event(event_id: str, order_id: str) -> OrderEvent:
    return OrderEvent(id=event_id, event_type="TRADE", scene="PLACED", timestamp=NOW,
                      broker="tw-main", account_id="A", order_id=order_id,
                      payload={"scene_type": "PLACED", "broker": "tw-main",
                               "order_id": order_id})


#: An operator event, the newest the database holds for tw-main (routed nowhere).
UNREACHABLE = system_event(SystemScene.BROKER_UNREACHABLE, broker="tw-main",
                           message="down\x1b]0;owned\x07",
                           discriminator="1", detected_at=NOW)


def fill(database: Path, *, dead: bool = True) -> None:
    """Two open orders and a filled one at tw-main; two events for hook (one dead-lettered
    with an error carrying a terminal escape, one still pending) and one for mail; a
    queued cancel."""
    store = Store.open(database)
    try:
        batch = Batch(snapshots=[snapshot("O1"), snapshot("O2"),
                                 snapshot("O3", OrderStatus.FILLED)],
                      events=[event("e1", "O1"), event("e2", "O2"), UNREACHABLE],
                      baselined=[("tw-main", "A")])
        batch.routes.update({"e1": ("hook", "mail"), "e2": ("hook",)})
        store.commit(batch)
        if dead:
            first = store.due("hook")[0]
            store.mark_dead(first.id, error="HTTP 410 \x1b[31mgone\x1b[0m")
        store.add_action("tw-main", "A", "O1", "cancel")
    finally:
        store.close()


def config(tmp_path: Path, database: Path, *, health: str = "",
           extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    listen = f'health_listen = "{health}"\n' if health else ""
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\n{listen}{extra}\n'
        '[brokers.tw-main]\nkind = "shioaji"\nbase_url = "http://127.0.0.1:9"\n'
        'accounts = [{ broker_id = "9A95", account_id = "A" }]\n'
        '[brokers.us-webull]\nkind = "webull"\nbase_url = "http://127.0.0.1:9"\n'
        '[notifiers.hook]\nkind = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
        '[notifiers.mail]\nkind = "console"\n', encoding="utf-8")
    return path


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "poller.db"
    fill(path)
    return path


class Healthz:
    """A real HTTP server on loopback answering ``/healthz`` with ``body`` and ``status``."""

    def __init__(self) -> None:
        self.body: Any = {"status": "ok"}
        self.status = 200
        self.server = SimServer("healthz")
        self.server.route("GET", "/healthz", self._answer)
        self.server.start()

    def _answer(self, request: SimRequest) -> SimResponse:
        if isinstance(self.body, bytes):
            return SimResponse(self.status, raw=self.body)
        return SimResponse(self.status, self.body)

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
def healthz() -> Iterator[Healthz]:
    server = Healthz()
    yield server
    server.server.stop()


def extended(since: str) -> dict[str, Any]:
    """The /healthz shape another engineer is building (every key of it)."""
    return {
        "status": "degraded", "problems": ["notifier hook: backlog 40 min old"],
        "connections": {
            "tw-main": {"last_success": since, "open_orders": 9, "stopped": None,
                        "error": {"category": "unavailable", "since": since,
                                  "message": "HTTP 503 from broker\x07"},
                        "budget": {"orders": {"used": 12, "allowed": 200,
                                              "pad_seconds": 0.06}},
                        "push": {"state": "up", "since": since, "updates": 41, "drops": 1,
                                 "last_update": since, "last_error": "stream reset"}},
            "us-webull": {"last_success": None, "open_orders": 0,
                          "stopped": "credentials refused (HTTP 401)", "error": None,
                          "budget": {},
                          "push": {"state": "stopped", "since": since, "updates": 0,
                                   "drops": 0, "last_update": None,
                                   "last_error": "bad sig\x1b[2J"}},
        },
        "notifiers": {"hook": {"pending": 3, "oldest_pending": since, "dead": 1,
                               "last_error": "HTTP 410", "delivered": 17}},
        "outbox_backlog": {"hook": 3}, "store": {"ok": True},
    }


def table_row(lines: list[str], first: str) -> list[str]:
    """The cells (split on blanks) after ``first`` of the table row that starts with it."""
    rows = [line.split()[1:] for line in lines if line.split()[:1] == [first]]
    assert len(rows) == 1, lines
    return rows[0]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["status", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_without_a_daemon_it_shows_what_the_database_knows(
        tmp_path: Path, database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", str(config(tmp_path, database)))
    assert code == 1, out + err  # a dead letter is something wrong
    assert "daemon: not reachable (daemon.health_listen is not set)" in out
    lines = out.splitlines()
    tw = table_row(lines, "tw-main")  # last seen (an age), open orders, state
    assert tw[1:] == ["s", "ago", "2", "no", "live", "view"]
    # configured, nothing in the database yet
    assert table_row(lines, "us-webull") == ["-", "0", "not", "polled", "yet"]
    hook, mail = table_row(lines, "hook"), table_row(lines, "mail")
    assert (hook[0], hook[2:]) == ("1", ["s", "1", "-"])  # pending, oldest, dead, last sent
    assert (mail[0], mail[2:]) == ("1", ["s", "0", "-"])
    alert = next(line for line in lines if line.startswith("  tw-main: last alert "))
    assert alert.endswith(" ago: BROKER_UNREACHABLE down\\x1b]0;owned\\x07")
    assert "  - notifier hook: 1 dead letter(s); once the cause is fixed, `poller events" \
        in lines
    assert "\x1b" not in out  # the error cannot drive a terminal
    assert "  hook: last error: HTTP 410 \\x1b[31mgone\\x1b[0m" in lines
    assert table_row(lines, "1")[1:] == ["s", "ago", "tw-main", "O1", "cancel", "queued"]
    assert f"database: {database}  " in out
    assert all(len(line) <= 80 for line in lines if not line.startswith("database: "))
    assert err == ""


def test_a_clean_database_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "poller.db"
    fill(path, dead=False)
    code, out, _ = run(capsys, "-c", str(config(tmp_path, path)))
    assert code == 0, out
    assert "problems: none" in out


def test_with_the_extended_healthz(tmp_path: Path, database: Path, healthz: Healthz,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    since = iso(utcnow() - timedelta(minutes=12))
    assert since is not None
    healthz.body, healthz.status = extended(since), 503
    code, out, _ = run(capsys, "-c", str(config(tmp_path, database, health=healthz.listen)))
    assert code == 1
    assert f"daemon: degraded  (http://{healthz.listen}/healthz)" in out
    assert "daemon health is degraded" in out
    assert "daemon: notifier hook: backlog 40 min old" in out
    assert "connection us-webull stopped: credentials refused (HTTP 401)" in out
    lines = out.splitlines()
    tw = next(line for line in lines if line.startswith("  tw-main "))
    assert "12 min ago" in tw and " 9 " in tw and "error: unavailable for 12 min" in tw
    assert "  tw-main: HTTP 503 from broker\\x07" in lines
    assert "  tw-main: budget orders 12/200 (pad 0.06 s)" in lines
    assert "  tw-main: push up since 12 min ago, 41 update(s), 1 drop(s)" in lines
    assert any(line.startswith("  us-webull: push stopped since 12 min ago, 0 update(s), "
                               "0 drop(s): bad sig\\x1b") for line in lines)
    assert "STOPPED: credentials refused" in out
    hook = next(line for line in lines if line.startswith("  hook "))
    assert hook.split()[1:5] == ["3", "12", "min", "1"]
    assert all(len(line) <= 80 for line in lines if not line.startswith("database: "))


def test_with_todays_healthz_and_the_json_document(
        tmp_path: Path, database: Path, healthz: Healthz,
        capsys: pytest.CaptureFixture[str]) -> None:
    last = iso(utcnow())
    healthz.body = {"status": "ok", "connections": {
        "tw-main": {"last_success": last, "open_orders": 2, "stopped": None}},
        "outbox_backlog": {"hook": 1, "mail": 1}, "store": {"ok": True}}
    code, out, _ = run(capsys, "-c", str(config(tmp_path, database, health=healthz.listen)),
                       "--json")
    assert code == 1  # the dead letter, which only the database knows
    doc = json.loads(out)
    assert set(doc) == {"generated_at", "ok", "problems", "daemon", "database", "instances",
                        "connections", "notifiers", "actions"}
    assert doc["ok"] is False and doc["problems"][0].startswith("notifier hook: 1 dead")
    assert doc["daemon"] == {"reachable": True, "reason": None,
                             "url": f"http://{healthz.listen}/healthz", "status": "ok",
                             "problems": [], "store_ok": True}
    assert doc["database"]["path"] == str(database) and doc["database"]["bytes"] > 0
    tw = doc["connections"]["tw-main"]
    assert tw["last_success"] == last and tw["open_orders"] == 2 and tw["stopped"] is None
    assert tw["error"] is None and tw["budget"] == {} and tw["configured"] is True
    assert tw["last_order_seen"] is not None
    assert tw["last_alert"] == {"scene": "BROKER_UNREACHABLE", "at": iso(NOW),
                                "message": "down\x1b]0;owned\x07"}
    assert doc["connections"]["us-webull"]["last_order_seen"] is None
    hook = doc["notifiers"]["hook"]
    assert (hook["pending"], hook["dead"], hook["delivered"]) == (1, 1, None)
    assert hook["last_error"] == "HTTP 410 \x1b[31mgone\x1b[0m"  # escaped by JSON itself
    assert "\x1b" not in out
    assert hook["oldest_pending"] is not None
    assert [(a["id"], a["kind"], a["state"]) for a in doc["actions"]] == [(1, "cancel",
                                                                           "queued")]


@pytest.mark.parametrize("body", [
    b"<html>gateway</html>", [1, 2], {"status": 7, "connections": {"tw-main": "x",
                                                                    "ghost": {"budget": 3}},
                                      "notifiers": [], "outbox_backlog": {"hook": "many"},
                                      "problems": "not a list", "store": None},
])
def test_nonsense_from_healthz_is_tolerated(tmp_path: Path, database: Path, healthz: Healthz,
                                            capsys: pytest.CaptureFixture[str],
                                            body: Any) -> None:
    healthz.body = body
    code, out, err = run(capsys, "-c", str(config(tmp_path, database, health=healthz.listen)))
    assert code == 1 and err == ""  # the dead letter; and no traceback
    assert "notifier hook: 1 dead letter(s)" in out
    if isinstance(body, dict):
        assert "ghost" in out  # a connection only the daemon knows still shows
    else:
        assert "daemon: not reachable (" in out


def test_a_daemon_that_is_not_running(tmp_path: Path, database: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, _ = run(capsys, "-c", str(config(tmp_path, database,
                                                health=f"127.0.0.1:{port}")))
    assert code == 1
    assert f"daemon: not reachable (nothing answers at http://127.0.0.1:{port}/healthz)" in out


def test_a_daemon_that_does_not_answer_in_time(tmp_path: Path, database: Path,
                                               healthz: Healthz) -> None:
    healthz.server.fault = lambda request: SimResponse(200, {"status": "ok"}, delay=1.0)
    settings = load_settings(config(tmp_path, database, health=healthz.listen))
    with httpx.Client(timeout=0.1) as client:
        report = gather(settings, client)
    assert not report.daemon.reachable
    assert report.daemon.reason == f"no answer from http://{healthz.listen}/healthz within " \
                                   "0.1 s"


def test_an_old_backlog_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "poller.db"
    fill(path, dead=False)
    settings = load_settings(config(tmp_path, path, extra="backlog_alert_after = 600"))
    with httpx.Client() as client:
        fresh = gather(settings, client)
        later = gather(settings, client, now=lambda: utcnow() + timedelta(minutes=38))
    assert fresh.problems == []
    assert later.problems == ["notifier hook: oldest waiting message is 38 min old",
                              "notifier mail: oldest waiting message is 38 min old"]


def test_exit_codes_for_storage_and_config(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 200)
    code, out, err = run(capsys, "-c", str(config(tmp_path, broken)))
    assert code == 74 and out == "" and err.startswith("poller: ") and len(err.splitlines()) == 1
    missing = tmp_path / "none" / "poller.db"
    code, _, err = run(capsys, "-c", str(config(tmp_path, missing)))
    assert code == 74 and "no database at" in err
    assert not missing.parent.exists()  # a status command creates nothing
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\n", encoding="utf-8")
    code, out, err = run(capsys, "-c", str(bad))
    assert code == 78 and out == "" and "invalid TOML" in err and "Traceback" not in err


def test_a_kept_demo_database_without_a_config(database: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--database", str(database), "-c", "/dev/null")
    assert code == 1
    assert "not in the config: tw-main" in out
    assert any(line.startswith("  hook ") for line in out.splitlines())


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (59.9, "59 s"), (60, "1 min"), (38 * 60 + 5, "38 min"), (3600, "1 h"),
    (3 * 3600 + 5 * 60, "3 h 5 min"), (2 * 86400 + 4 * 3600, "2 d 4 h"), (-5, "0 s"),
])
def test_ages_for_people(seconds: float, text: str) -> None:
    assert age(seconds) == text


def _read_until(stream: Any, done: Callable[[str], bool], timeout: float = 20.0) -> str:
    """Read a subprocess's stdout until ``done(text)``; fails after ``timeout``."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    text = ""
    deadline = time.monotonic() + timeout
    while not done(text):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {text!r}"
        if selector.select(left):
            chunk = os.read(stream.fileno(), 65536).decode()
            assert chunk, f"the process ended; got {text!r}"
            text += chunk
    selector.close()
    return text


def test_watch_redraws_until_sigint(tmp_path: Path, database: Path) -> None:
    cfg = config(tmp_path, database)
    process = subprocess.Popen(
        [sys.executable, "-m", "poller", "status", "--watch", "0.2", "-c", str(cfg)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        text = _read_until(process.stdout, lambda t: t.count("pending order actions") >= 2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert b"Traceback" not in err
    assert "\x1b[" not in text  # not a terminal: frames one after another, no clearing


def test_watch_clears_the_screen_on_a_terminal(tmp_path: Path, database: Path) -> None:
    cfg = config(tmp_path, database)
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "poller", "status", "--watch", "--json", "-c", str(cfg)],
        cwd=ROOT, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        reader = os.fdopen(master, "rb", buffering=0)
        text = _read_until(reader, lambda t: '"actions"' in t)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
        reader.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0 and b"Traceback" not in err
    assert text.startswith("\x1b[H\x1b[2J{")


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:\n  poller status" in out and "--watch [SECONDS]" in out


def test_on_postgresql_status_and_check_config_show_who_holds_what(
        tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = PgStore.open(DatabaseUrl.parse(pg_url), lock=True)
    try:
        me = InstanceInfo("box1-4242-ab12", "box1", 4242, "2026-12-03T08:00:00Z")
        store.lease_round(me, ["tw-main", "us-webull"], ttl=60, mine={}, budgets={})
    finally:
        store.close()
    path = config(tmp_path, pg_url)  # type: ignore[arg-type]  # a URL, as in the file
    assert main(["status", "-c", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"database: {pg_url}" in shown
    assert "instances: box1-4242-ab12 (box1 pid 4242)" in shown
    header = next(line for line in shown.splitlines() if line.strip().startswith("NAME"))
    assert header.split()[-1] == "HOLDER"
    held = [line for line in shown.splitlines() if "box1-4242-ab12 (box1 pid" in line]
    assert len(held) == 3  # the instances line and both connections
    assert main(["status", "-c", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["connections"]["tw-main"]["holder"] == "box1-4242-ab12 (box1 pid 4242)"
    assert [i["id"] for i in doc["instances"] if i["alive"]] == ["box1-4242-ab12"]
    checked = tmp_path / "check.toml"
    checked.write_text(f'[daemon]\ndatabase = "{pg_url}"\n[brokers.tw-main]\nkind = "shioaji"\n'
                       'base_url = "http://127.0.0.1:9"\n'
                       'accounts = [{ broker_id = "9A95", account_id = "A" }]\n')
    checked.chmod(0o600)
    assert main(["check-config", "-c", str(checked)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("database:"))
    assert line == (f"database: {pg_url} (PostgreSQL, reachable; 1 instance(s) running, "
                    "2 connection lease(s) held; leases last 10 s)")


def test_against_a_live_daemon(tmp_path: Path, receiver: Receiver) -> None:
    """``poller status`` (a process of its own) beside a running ``poller run`` on SQLite:
    it reads the database the daemon holds open and the daemon's ``/healthz``, and shows
    the order the daemon saw and the delivery it made."""
    sim = ShioajiSim(seed=5)
    sim.start()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    port = free_port()
    proc = None
    try:
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url, announce_existing=True,
                               health_listen=f"127.0.0.1:{port}")
        path = tmp_path / "config.toml"
        path.write_text(_toml(config))
        env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        systemd.wait_for("READY=1")
        sim.book.place(sim.accounts()[0], "2890", "BUY", 4, "27.1")
        receiver.wait_for(lambda e: len(e) >= 1)

        def status(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "poller", "status", "-c", str(path),
                                   *args], capture_output=True, text=True, timeout=60)

        as_json, as_text = status("--json"), status()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        systemd.close()
        sim.stop()
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["daemon"]["reachable"] is True and doc["daemon"]["status"] == "ok"
    assert doc["database"]["path"] == str(tmp_path / "poller.db")
    tw = doc["connections"]["tw"]
    assert tw["open_orders"] == 1 and tw["stopped"] is None and tw["last_order_seen"]
    assert tw["budget"]  # from /healthz: the daemon's own limit groups
    assert doc["notifiers"]["hook"]["delivered"] >= 1
    assert doc["notifiers"]["hook"]["pending"] == 0 and doc["notifiers"]["hook"]["dead"] == 0
    assert as_text.returncode == 0 and as_text.stderr == ""
    assert f"daemon: ok  (http://127.0.0.1:{port}/healthz)" in as_text.stdout
    assert any(line.startswith("  tw ") for line in as_text.stdout.splitlines())

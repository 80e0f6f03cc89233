"""The dead-man's switch against a real receiver on loopback: a Heartbeat driven by a fake
view of the daemon and a hand-moved clock, then a real `poller run` process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from poller.heartbeat import FAIL_BURST, Heartbeat, ping_url, problems_of
from poller.logsetup import Redactor
from poller.settings import DaemonSettings
from poller.simulator.configfile import to_toml
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import daemon_config

CHECK = "/ping/5bd3c0a2-7f1e-4c55-9d0b-3a61f2e84c17"  # the secret part, as Healthchecks' UUIDs
T0 = datetime(2026, 5, 20, 3, 0, tzinfo=UTC)


class HeartbeatReceiver:
    """A Healthchecks stand-in: records every ping to :data:`CHECK` and below it."""

    def __init__(self) -> None:
        self.server = SimServer("healthchecks")
        self.pings: list[SimRequest] = []
        self.status = 200
        #: While cleared, the receiver holds its answer (a service that hangs).
        self.answering = threading.Event()
        self.answering.set()
        self._cond = threading.Condition()
        for method in ("GET", "POST"):
            self.server.route_prefix(method, CHECK, self._ping)

    def _ping(self, request: SimRequest) -> SimResponse:
        with self._cond:
            self.pings.append(request)
            self._cond.notify_all()
        self.answering.wait(timeout=30)
        return SimResponse(self.status, raw=b"OK", headers={"Content-Type": "text/plain"})

    @property
    def url(self) -> str:
        return self.server.url + CHECK

    def kinds(self) -> list[str]:
        """``start``, ``success`` or ``fail`` for each ping so far."""
        with self._cond:
            return [r.path.removeprefix(CHECK).strip("/") or "success" for r in self.pings]

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 15.0) -> bool:
        """Block until ``predicate(kinds)`` holds (woken by each ping); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.kinds()), timeout=timeout)

    def bodies(self, kind: str) -> list[str]:
        with self._cond:
            return [r.body.decode() for r in self.pings
                    if (r.path.removeprefix(CHECK).strip("/") or "success") == kind]


@pytest.fixture
def hc() -> Iterator[HeartbeatReceiver]:
    receiver = HeartbeatReceiver()
    receiver.server.start()
    yield receiver
    receiver.answering.set()
    receiver.server.stop()


# -- a fake view of the daemon: the attributes the switch reads ---------------------------

@dataclass
class FakeConnection:
    stopped_reason: str | None = None
    last_success: datetime | None = None


@dataclass
class FakeStore:
    ok: bool = True
    text: str = ""

    def describe(self) -> str:
        return self.text


@dataclass
class FakeDaemon:
    trackers: dict[str, FakeConnection] = field(default_factory=dict)
    store_health: FakeStore = field(default_factory=FakeStore)

    def polled(self, minutes: int) -> None:
        """Every connection's list call succeeded (at T0 + ``minutes``)."""
        for connection in self.trackers.values():
            connection.last_success = T0 + timedelta(minutes=minutes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def step(beat: Heartbeat) -> bool:
    """One main-loop tick; True when it sent a ping (waits for its answer)."""
    task = beat.tick()
    if task is None:
        return False
    await task
    return True


async def begin(beat: Heartbeat) -> None:
    """Startup succeeded: the ``/start`` ping (waits for its answer)."""
    task = beat.start()
    assert task is not None
    await task


def switch(url: str, daemon: FakeDaemon, clock: Clock, *, interval: float = 60.0,
           redactor: Redactor | None = None, timeout: float = 5.0) -> Heartbeat:
    return Heartbeat(url, view=daemon, interval=interval, redactor=redactor or Redactor(),
                     clock=clock, timeout=timeout)


def test_ping_urls_keep_the_query_and_settings_build_the_switch() -> None:
    assert ping_url("https://hc-ping.com/abc", "/start") == "https://hc-ping.com/abc/start"
    assert ping_url("https://hc-ping.com/key/slug/?create=1", "/fail") == \
        "https://hc-ping.com/key/slug/fail?create=1"
    assert ping_url("https://hc-ping.com/abc/") == "https://hc-ping.com/abc/"
    daemon = FakeDaemon()
    assert Heartbeat.from_settings(DaemonSettings(), daemon, Redactor()) is None

    async def build() -> tuple[str, float]:
        beat = Heartbeat.from_settings(
            DaemonSettings(heartbeat_url="https://hc-ping.com" + CHECK, heartbeat_interval=30),
            daemon, Redactor())
        assert beat is not None
        await beat.aclose()
        return beat.url, beat.interval

    assert asyncio.run(build()) == ("https://hc-ping.com" + CHECK, 30.0)


def test_problems_name_stopped_connections_and_a_failing_store() -> None:
    daemon = FakeDaemon({"tw": FakeConnection("credentials refused (HTTP 401)"),
                         "cw": FakeConnection(last_success=T0)})
    assert problems_of(daemon) == {"connection:tw": "connection tw stopped: credentials "
                                                    "refused (HTTP 401)"}
    daemon.store_health = FakeStore(ok=False, text="store cannot commit since … (disk_full)")
    assert list(problems_of(daemon)) == ["connection:tw", "store"]


def test_start_then_success_pings_paced_by_the_interval(hc: HeartbeatReceiver) -> None:
    daemon = FakeDaemon({"tw": FakeConnection(), "cw": FakeConnection()})
    clock = Clock()

    async def scenario() -> list[tuple[str, bool]]:
        beat = switch(hc.url, daemon, clock)
        await begin(beat)
        seen: list[tuple[str, bool]] = []
        clock.now += 120
        seen.append(("no poll yet", await step(beat)))
        daemon.trackers["tw"].last_success = T0
        seen.append(("one connection polled, the other not", await step(beat)))
        daemon.polled(1)
        seen.append(("both polled", await step(beat)))
        daemon.polled(2)
        clock.now += 30
        seen.append(("polled again, but within the interval", await step(beat)))
        clock.now += 30
        seen.append(("the interval is over", await step(beat)))
        clock.now += 600
        seen.append(("no poll since the last ping", await step(beat)))
        daemon.polled(3)
        seen.append(("polled", await step(beat)))
        await beat.aclose()
        return seen

    assert asyncio.run(scenario()) == [
        ("no poll yet", False), ("one connection polled, the other not", False),
        ("both polled", True), ("polled again, but within the interval", False),
        ("the interval is over", True), ("no poll since the last ping", False),
        ("polled", True)]
    assert hc.kinds() == ["start", "success", "success", "success"]
    assert [r.method for r in hc.pings] == ["GET"] * 4


def test_a_stop_fails_once_with_the_reason_then_pings_resume(hc: HeartbeatReceiver) -> None:
    secret = "sk-live-7d1c93be55aa"
    redactor = Redactor([secret])
    daemon = FakeDaemon({"tw": FakeConnection(), "cw": FakeConnection()})
    clock = Clock()

    async def scenario() -> list[str]:
        beat = switch(hc.url, daemon, clock, interval=10, redactor=redactor)
        await begin(beat)
        steps: list[str] = []

        async def tick(minutes: int, polled: bool = True) -> None:
            clock.now += 11
            if polled:
                daemon.polled(minutes)
            if await step(beat):
                steps.append(hc.kinds()[-1])

        await tick(1)
        daemon.trackers["tw"].stopped_reason = (f"credentials refused (HTTP 401): key {secret} "
                                                "unknown")
        for minute in range(2, 6):  # the problem lasts: one /fail, no success pings
            await tick(minute)
        daemon.store_health = FakeStore(ok=False, text="store cannot commit since 03:04 "
                                                       "(disk_full)")
        for minute in range(6, 9):  # a second problem: one more /fail
            await tick(minute)
        daemon.trackers["tw"].stopped_reason = None
        daemon.store_health = FakeStore()
        await tick(9)
        await tick(10)
        daemon.trackers["cw"].stopped_reason = "credentials refused (HTTP 403)"
        await tick(11)  # a new stop after recovering is a new problem
        await tick(12)
        await beat.aclose()
        return steps

    assert asyncio.run(scenario()) == ["success", "fail", "fail", "success", "success", "fail"]
    first, second, third = hc.bodies("fail")
    assert "connection tw stopped: credentials refused (HTTP 401)" in first
    assert secret not in first and "**********" in first
    assert "connection tw stopped" in second and "disk_full" in second
    assert "connection cw stopped: credentials refused (HTTP 403)" in third
    assert "tw" not in third
    fails = [r for r in hc.pings if r.path.endswith("/fail")]
    assert {r.method for r in fails} == {"POST"}
    assert fails[0].headers["content-type"].startswith("text/plain")


def test_a_receiver_that_is_down_costs_one_warning_and_never_the_url(
        hc: HeartbeatReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = FakeDaemon({"tw": FakeConnection()})
    clock = Clock()
    # A port nothing listens on (a server that was there, now gone).
    gone = SimServer("gone")
    down_url = gone.url + CHECK
    gone.stop()

    async def scenario() -> dict[str, object]:
        results: dict[str, object] = {}
        beat = switch(down_url, daemon, clock, interval=5)
        await begin(beat)
        for minute in range(1, 6):  # down all along: retried, warned about once
            clock.now += 6
            daemon.polled(minute)
            await step(beat)
        results["down"] = [r.levelname for r in caplog.records
                           if r.name == "poller.heartbeat" and r.levelno >= logging.WARNING]
        await beat.aclose()

        # Answers, but with errors, then hangs: still one warning, and the loop never waits.
        hc.status = 503
        beat = switch(hc.url, daemon, clock, interval=5, timeout=0.5)
        await begin(beat)
        clock.now += 6
        daemon.polled(6)
        await step(beat)
        hc.answering.clear()
        clock.now += 6
        daemon.polled(7)
        hanging = beat.tick()
        assert hanging is not None
        results["while in flight"] = beat.tick()  # nothing piles up behind a slow service
        await hanging  # given up after the 0.5 s deadline
        hc.answering.set()
        hc.status = 200
        clock.now += 6
        daemon.polled(8)
        results["recovered"] = await step(beat)
        await beat.aclose()
        return results

    results = asyncio.run(scenario())
    assert results == {"down": ["WARNING"], "while in flight": None, "recovered": True}
    mine = [r for r in caplog.records if r.name == "poller.heartbeat"]
    warnings = [r.getMessage() for r in mine if r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # one per episode: the dead port, then the failing service
    assert "did not take the start ping: request failed (ConnectError);" in warnings[0]
    assert "did not take the start ping: HTTP 503;" in warnings[1]
    assert any("takes pings again" in r.getMessage() for r in mine)
    assert hc.kinds()[-1] == "success"
    # Every line of poller's and of the HTTP client's (the receiver's own log is the other
    # side's and names the path it was asked for).
    every = " ".join(r.getMessage() for r in caplog.records
                     if not r.name.startswith("poller.simulator"))
    assert CHECK.rsplit("/", 1)[1] not in every and CHECK not in every


def test_a_flapping_store_is_reported_at_most_fail_burst_times(hc: HeartbeatReceiver) -> None:
    """Each failing episode is a new problem, but a store that fails and recovers at every
    tick must not page at every tick: the soft limit holds the rest back."""
    daemon = FakeDaemon({"tw": FakeConnection()})
    clock = Clock()

    async def scenario() -> None:
        beat = switch(hc.url, daemon, clock, interval=1)
        await begin(beat)
        for minute in range(1, 8):
            clock.now += 2
            daemon.store_health = FakeStore(ok=False, text="store cannot commit (disk_full)")
            await step(beat)
            clock.now += 2
            daemon.store_health = FakeStore()
            daemon.polled(minute)
            await step(beat)
        await beat.aclose()

    asyncio.run(scenario())
    assert hc.kinds().count("fail") == FAIL_BURST
    assert hc.kinds().count("success") == 7


def test_an_unreadable_url_fails_quietly(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        beat = switch("http://[::1", FakeDaemon(), Clock())
        await begin(beat)
        await beat.aclose()

    asyncio.run(scenario())
    assert [r.getMessage().split(":", 2)[-1] for r in caplog.records
            if r.name == "poller.heartbeat"] == [
        " request failed (InvalidURL); poller carries on and tries again (logged once until it "
        "works)"]


# -- a real daemon ------------------------------------------------------------------------

def test_a_running_daemon_pings_fails_once_resumes_and_goes_quiet_when_killed(
        tmp_path: Path, hc: HeartbeatReceiver) -> None:
    sim = ShioajiSim()
    sim.start()
    try:
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               heartbeat_url=hc.url, heartbeat_interval=1)
        path = tmp_path / "config.toml"
        path.write_text(to_toml(config))
        # The watchdog asks for a tick every 0.5 s (instead of 5 s); no notify socket needed.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WATCHDOG_USEC": "1000000"}
        env.pop("WATCHDOG_PID", None)
        env.pop("NOTIFY_SOCKET", None)
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            assert hc.wait_for(lambda k: k[:1] == ["start"] and k.count("success") >= 2)

            # Refused credentials stop the connection: one /fail, then silence.
            sim.server.fault = lambda r: (SimResponse(401, {"code": 401, "message": "who?",
                                                            "details": None})
                                          if sim.is_list_request(r) else None)
            assert hc.wait_for(lambda k: "fail" in k)
            during = len(hc.kinds())
            # Three intervals without any ping while the problem lasts.
            assert not hc.wait_for(lambda k: len(k) > during, timeout=3.0)
            assert "connection tw stopped: credentials refused" in hc.bodies("fail")[0]

            # The key is fixed and the daemon reloaded (with a new interval, so the switch is
            # renewed: a second /start): success pings resume.
            sim.server.fault = None
            config["daemon"]["heartbeat_interval"] = 1.5
            path.write_text(to_toml(config))
            proc.send_signal(signal.SIGHUP)
            assert hc.wait_for(lambda k: k[during:].count("success") >= 2)

            proc.kill()  # kill -9: nothing more, the service alerts on the silence
            proc.wait(timeout=10)
            after = len(hc.kinds())
            assert not hc.wait_for(lambda k: len(k) > after, timeout=3.0)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=10)
    finally:
        sim.stop()
    kinds = hc.kinds()
    assert kinds.count("fail") == 1 and kinds[kinds.index("fail") - 1] == "success"
    assert [i for i, kind in enumerate(kinds) if kind == "start"] == [0, during]
    assert "Traceback" not in err
    assert CHECK not in err and CHECK.rsplit("/", 1)[1] not in err

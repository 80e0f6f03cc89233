"""What the benchmarks share: simulators and the daemon in processes of their own, a webhook
receiver, and readings taken from outside (at the simulator, at the receiver, in /proc)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from poller.simulator.configfile import to_toml
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sims:
    """``bench.simproc`` in its own process: ``count`` simulators of one kind."""

    def __init__(self, kind: str, *, count: int = 1, orders: int = 50, latency: str = "0-0",
                 seed: int = 1, size: int = 1_000_000, options: dict[str, str] | None = None,
                 identify_peers: bool = False) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="poller-sims-")
        ready = Path(self.folder.name) / "ready.json"
        args = [sys.executable, "-m", "bench.simproc", "--kind", kind, "--count", str(count),
                "--orders", str(orders), "--latency-ms", latency, "--seed", str(seed),
                "--size", str(size), "--ready", str(ready)]
        for key, value in (options or {}).items():
            args += ["--sim-option", f"{key}={value}"]
        if identify_peers:
            args.append("--identify-peers")
        self.proc = subprocess.Popen(args)
        deadline = time.monotonic() + 120
        while not ready.exists() or not ready.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulator process did not start")
            time.sleep(0.05)  # polling a file another process writes: nothing to wait on
        self.entries: list[dict[str, Any]] = json.loads(ready.read_text())
        self.client = httpx.Client(timeout=60)

    def config(self, index: int = 0) -> dict[str, Any]:
        """The ``[brokers.NAME]`` table of simulator ``index``."""
        return dict(self.entries[index]["config"])

    def control(self, index: int, action: str, **params: Any) -> Any:
        """Call a ``/_bench/`` route of simulator ``index``."""
        answer = self.client.post(f"{self.entries[index]['url']}/_bench/{action}",
                                  params=params)
        answer.raise_for_status()
        return answer.json()

    def close(self) -> None:
        """Stop the process."""
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.folder.cleanup()


@dataclass
class Received:
    """One webhook delivery at the receiver."""

    at: float
    event: dict[str, Any]


class Receiver:
    """A webhook receiver (a real HTTP server) stamping each event on arrival."""

    def __init__(self) -> None:
        self.server = SimServer("receiver")
        self.events: list[Received] = []
        self.lock = threading.Lock()
        self.server.route("POST", "/hook", self._hook)
        self.server.start()

    def _hook(self, request: SimRequest) -> SimResponse:
        at = time.monotonic()
        try:
            event = json.loads(request.body)
        except ValueError:
            # A sender killed mid-POST leaves a cut-off body: refused, as a real one would.
            return SimResponse(400, {"error": "the body is not JSON"})
        with self.lock:
            self.events.append(Received(at, event))
        return SimResponse(200, {"ok": True})

    @property
    def url(self) -> str:
        """Where the daemon delivers."""
        return self.server.url + "/hook"

    def close(self) -> None:
        """Stop serving."""
        self.server.stop()


@dataclass
class Daemon:
    """``poller run`` in its own process, with its health endpoint for readings."""

    brokers: dict[str, dict[str, Any]]
    receiver_url: str
    daemon: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and wait until it says READY=1."""
        self.folder = tempfile.TemporaryDirectory(prefix="poller-bench-")
        folder = Path(self.folder.name)
        self.health = free_port()
        config = {"daemon": {"database": str(folder / "bench.db"), "log_level": "WARNING",
                             "health_listen": f"127.0.0.1:{self.health}", **self.daemon},
                  "brokers": self.brokers,
                  "notifiers": {"hook": {"kind": "webhook", "url": self.receiver_url}}}
        path = folder / "config.toml"
        path.write_text(to_toml(config))
        path.chmod(0o600)  # it holds the simulators' keys (check-config warns otherwise)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(folder / "notify.sock"))
        notify.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(folder / "notify.sock"),
               "PYTHONUNBUFFERED": "1"}
        # BENCH_PROFILE=FILE runs the daemon under cProfile and writes its statistics to
        # FILE at exit (read with pstats): where a benchmark's CPU goes.
        profile = os.environ.get("BENCH_PROFILE")
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        self.proc = subprocess.Popen([sys.executable, *prefix, "-m", "poller", "run",
                                      "-c", str(path)], env=env)
        try:
            while b"READY=1" not in notify.recv(65536):
                pass
        finally:
            notify.close()
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        """The daemon's peak resident memory (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The daemon's Prometheus metrics now, by (name, labels)."""
        text = httpx.get(f"http://127.0.0.1:{self.health}/metrics", timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        """SIGTERM, and wait for a clean exit."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.folder.cleanup()


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` in any interval of ``window`` seconds (a sliding window)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

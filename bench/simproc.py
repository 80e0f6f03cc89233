"""One or more broker simulators in a process of their own, for honest benchmarks.

    python -m bench.simproc --kind coinw --orders 500 --latency-ms 0-300 --ready FILE

The daemon's CPU and memory are then its own, and requests cross a real socket between two
processes. Each simulator places its orders, optionally delays every answer (``--latency-ms
LO-HI``, uniform), and counts requests on arrival. The process writes one JSON line to
``--ready`` (each simulator's URL and ``[brokers.NAME]`` table) and then serves until it is
killed. Control routes on each simulator (not broker paths):

* ``POST /_bench/start?every=S&seed=N`` — one random partial fill every ``S`` seconds;
* ``POST /_bench/stop`` — stop changing orders;
* ``POST /_bench/report`` — everything measured: requests (arrival time, kind, order id),
  changes (time, order id, filled after), the broker windows' most-seen and refusals.

Times are ``time.monotonic()``, one clock for every process on the machine (Linux).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from poller.simulator.base import BrokerSim
from poller.simulator.catalog import SIMULATORS
from poller.simulator.httpserver import SimRequest, SimResponse


class Bench:
    """One simulator with its order population, mover and report."""

    def __init__(self, sim: BrokerSim, orders: int, size: int) -> None:
        self.sim = sim
        self.changes: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        account = sim.accounts()[0]
        for index in range(orders):
            symbol, price = sim.symbols[index % len(sim.symbols)]
            order = sim.book.place(account, symbol, "BUY", size, price)
            sim.book.accept(order.order_id)
        server = sim.server
        server.route("POST", "/_bench/start", self.start)
        server.route("POST", "/_bench/stop", self.stop)
        server.route("POST", "/_bench/report", self.report)

    def start(self, request: SimRequest) -> SimResponse:
        every = float(request.param("every") or 0.5)
        rng = random.Random(int(request.param("seed") or 1))

        def move() -> None:
            while not self._stop.wait(every):
                live = [o for o in self.sim.book.open_orders()]
                if not live:
                    continue
                order = rng.choice(live)
                self.sim.book.fill(order.order_id, 1)
                self.changes.append((time.monotonic(), order.order_id,
                                     str(self.sim.book.get(order.order_id).filled)))

        self._stop.clear()
        self._thread = threading.Thread(target=move, name="mover", daemon=True)
        self._thread.start()
        return SimResponse(200, {"ok": True})

    def stop(self, request: SimRequest) -> SimResponse:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return SimResponse(200, {"ok": True})

    def report(self, request: SimRequest) -> SimResponse:
        sim = self.sim
        requests = []
        peers = []
        for r in list(sim.server.log):
            if r.path.startswith("/_bench/"):
                continue
            peers.append(r.peer_pid)
            kind = "list" if sim.is_list_request(r) else "order" if sim.polled_order(r) \
                else "other"
            requests.append((r.arrived, kind, sim.polled_order(r) or "",
                             r.path + ("?" + r.query.split("&")[0] if r.query else "")))
        return SimResponse(200, {
            "requests": requests, "changes": self.changes,
            # With --identify-peers: the process that sent each request (same order).
            "peers": peers,
            "windows": {name: [w.max_seen, w.count, w.window, w.violations]
                        for name, w in sim.windows.items()},
            "violations": sim.violations(),
        })


def main(argv: list[str] | None = None) -> None:
    """Command line: start the simulators, say where they are, serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--kind", default="coinw", choices=sorted(SIMULATORS))
    parser.add_argument("--count", type=int, default=1, help="simulators (connections)")
    parser.add_argument("--orders", type=int, default=50, help="open orders per simulator")
    parser.add_argument("--size", type=int, default=1_000_000, help="quantity per order")
    parser.add_argument("--latency-ms", default="0-0", help="answer delay range, e.g. 0-300")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ready", required=True, help="file to write the JSON line to")
    parser.add_argument("--identify-peers", action="store_true",
                        help="record which local process sent each request (cluster runs)")
    parser.add_argument("--sim-option", action="append", default=[],
                        help="KEY=VALUE passed to the simulator (e.g. region=hk)")
    args = parser.parse_args(argv)
    low, _, high = args.latency_ms.partition("-")
    latency = (float(low) / 1000, float(high or low) / 1000)
    options: dict[str, Any] = {key: _option(value) for key, value in
                               (o.split("=", 1) for o in args.sim_option)}
    benches = []
    for index in range(args.count):
        sim = SIMULATORS[args.kind](seed=args.seed + index, **options)
        if latency != (0.0, 0.0):
            sim.server.latency = latency
            stream = getattr(sim, "events", None)  # a push stream has latency too
            if stream is not None:
                stream.latency = latency
        sim.server.identify_peers = args.identify_peers
        benches.append(Bench(sim, args.orders, args.size))
        sim.start()
    ready = [{"url": b.sim.url, "config": b.sim.broker_config(f"c{i}"),
              "orders": [o.order_id for o in b.sim.book.open_orders()]}
             for i, b in enumerate(benches)]
    Path(args.ready).write_text(json.dumps(ready, default=_plain))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    for bench in benches:
        bench.sim.stop()


def _option(value: str) -> Any:
    """``true``/``false`` as booleans (``push_events=true``), anything else as given."""
    return {"true": True, "false": False}.get(value.lower(), value)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    main()

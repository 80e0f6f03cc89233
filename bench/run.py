"""Benchmark: the daemon against simulators with strict server-side windows.

    python -m bench.run --broker coinw --orders 50,500,5000 --duration 60

For each N it places N open orders in the simulator, lets the daemon take its baseline, then
changes one random order every ``--change-every`` seconds (a small partial fill, so N stays
constant) and prints, measured at the simulator: the most requests seen in any window of each
limit group against the limit, rate-limit answers, utilisation of the per-order budget, mean and
p99 detection latency (simulator change → event committed) next to the round-robin bound
N ÷ rate, how soon a just-changed order was polled again, CPU seconds per 1 000 polls (the
daemon's threads only) and peak RSS. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poller.adapter import RequestKind
from poller.app import App
from poller.compose import validate
from poller.events import OrderEvent
from poller.logsetup import Redactor
from poller.plugins import DEFAULT_PLUGINS, get_plugin_manager
from poller.settings import load_settings
from poller.simulator.base import BrokerSim
from poller.simulator.catalog import SIMULATORS
from poller.store import Store


@dataclass
class Result:
    """Figures of one run."""

    broker: str
    orders: int
    duration: float
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # group → (max, limit)
    rate_limit_answers: int = 0
    per_order_polls: int = 0
    allowed_rate: float = 0.0
    achieved_rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    repoll_delays: list[float] = field(default_factory=list)
    bound: float = 0.0
    cpu_per_1000: float = 0.0
    peak_rss_mb: float = 0.0
    changes: int = 0

    def lines(self) -> list[str]:
        """The figures as printable lines."""
        out = [f"{self.broker} N={self.orders} ({self.duration:g} s, {self.changes} changes)"]
        for group, (seen, limit) in sorted(self.windows.items()):
            out.append(f"  max in window {group}: {seen} (limit {limit})")
        out.append(f"  rate-limit answers: {self.rate_limit_answers}")
        if self.allowed_rate:
            out.append(f"  per-order polls: {self.per_order_polls}, {self.achieved_rate:.2f}/s of "
                       f"{self.allowed_rate:.2f}/s allowed → utilisation "
                       f"{self.achieved_rate / self.allowed_rate:.3f}")
        if self.latencies:
            lat = sorted(self.latencies)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            bound = f"round-robin bound N/rate = {self.bound:.2f} s, " if self.bound else ""
            out.append(f"  detection latency: mean {statistics.mean(lat):.2f} s, p99 {p99:.2f} s"
                       f" ({bound}{len(lat)} changes matched)")
        if self.repoll_delays:
            out.append(f"  re-poll after a change: mean {statistics.mean(self.repoll_delays):.2f}"
                       f" s, max {max(self.repoll_delays):.2f} s")
        out.append(f"  CPU per 1 000 polls: {self.cpu_per_1000:.3f} s; peak RSS "
                   f"{self.peak_rss_mb:.0f} MB")
        return out


class ThreadCpu:
    """CPU time of the event-loop thread and the store thread (not the simulator's)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor

    async def sample(self) -> float:
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(self.executor, time.thread_time)
        return time.thread_time() + store


async def run_one(kind: str, n: int, duration: float, change_every: float, seed: int,
                  extra: dict[str, Any]) -> Result:
    """One benchmark run."""
    sim: BrokerSim = SIMULATORS[kind](seed=seed)
    sim.start()
    rng = random.Random(seed)
    result = Result(kind, n, duration)
    try:
        account = sim.accounts()[0]
        symbols = sim.symbols
        for i in range(n):
            symbol, price = symbols[i % len(symbols)]
            order = sim.book.place(account, symbol, "BUY", 1_000_000, price)
            sim.book.accept(order.order_id)
        with tempfile.TemporaryDirectory(prefix="poller-bench-") as folder:
            config = {
                "daemon": {"database": str(Path(folder) / "bench.db"), "log_level": "WARNING"},
                "brokers": {"bench": sim.broker_config("bench") | extra},
                "notifiers": {},
            }
            settings = load_settings(data=config)
            plugins = get_plugin_manager(builtins=DEFAULT_PLUGINS)
            validated = validate(settings, plugins.registry(), "<bench>")
            store = Store.open(settings.daemon.database, lock=True)
            app = App.create(settings, plugins, validated, redactor=Redactor(), store=store)
            committed: list[tuple[float, OrderEvent]] = []
            app.event_listeners.append(
                lambda events: committed.extend((time.monotonic(), e) for e in events))
            await app.start()
            tracker = app.trackers["bench"]
            # Baseline: wait until every order is known.
            while len(tracker.known) < n:
                await asyncio.sleep(0.05)
            cpu = ThreadCpu(app._executor)
            # Let the per-order budget reach its steady state first: right after the baseline
            # its window is empty, and a first burst would flatter the rate.
            await asyncio.sleep(5.0)
            cpu0, polls0, t0 = await cpu.sample(), tracker.order_polls, time.monotonic()
            log0 = len(sim.server.log)
            stop = threading.Event()
            changed: list[tuple[float, str]] = []

            def mover() -> None:
                while not stop.wait(change_every):
                    live = sim.book.open_orders()
                    if live:
                        order = rng.choice(live)
                        sim.book.fill(order.order_id, 1)
                        changed.append((time.monotonic(), order.order_id))

            thread = threading.Thread(target=mover, daemon=True)
            thread.start()
            await asyncio.sleep(duration)
            stop.set()
            thread.join()
            cpu1, polls1, t1 = await cpu.sample(), tracker.order_polls, time.monotonic()
            await asyncio.sleep(max(2.0, min(30.0, tracker.recheck_after() * 2)))
            await app.stop()
            store.close()
        result.changes = len(changed)
        result.per_order_polls = polls1 - polls0
        polls = result.per_order_polls + sum(
            1 for r in sim.server.log[log0:] if sim.is_list_request(r))
        result.cpu_per_1000 = (cpu1 - cpu0) / max(1, polls) * 1000
        result.rate_limit_answers = tracker.rate_limit_answers + sim.violations()
        for name, window in sim.windows.items():
            result.windows[name] = (window.max_seen, window.count)
        adapter = app.adapters["bench"]
        groups = [adapter.budget.groups[g] for g in adapter.groups_of(RequestKind.DETAIL)]
        if groups and adapter.polls_each_order:
            # The contract's rate: floor(share × N) per W (the budget's own window is padded).
            rate = min(g.allowed / g.base_window for g in groups)
            result.allowed_rate = rate
            result.achieved_rate = result.per_order_polls / (t1 - t0)
            result.bound = n / rate
        result.latencies = _latencies(changed, committed)
        result.repoll_delays = _repolls(sim, committed)
        result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result
    finally:
        sim.stop()


def _latencies(changed: list[tuple[float, str]],
               committed: list[tuple[float, OrderEvent]]) -> list[float]:
    by_order: dict[str, list[float]] = {}
    for at, event in committed:
        by_order.setdefault(event.order_id, []).append(at)
    out = []
    for at, order_id in changed:
        later = [t for t in by_order.get(order_id, []) if t >= at]
        if later:
            out.append(min(later) - at)
    return out


def _repolls(sim: BrokerSim, committed: list[tuple[float, OrderEvent]]) -> list[float]:
    polls: dict[str, list[float]] = {}
    for request in list(sim.server.log):
        order_id = sim.polled_order(request)
        if order_id:
            polls.setdefault(order_id, []).append(request.arrived)
    out = []
    for at, event in committed:
        later = [t for t in polls.get(event.order_id, []) if t > at]
        if later:
            out.append(min(later) - at)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--broker", default="coinw", choices=sorted(SIMULATORS))
    parser.add_argument("--orders", default="50,500,5000", help="comma-separated N values")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per N")
    parser.add_argument("--change-every", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--list-only", action="store_true",
                        help="do not poll each order (CoinW: per_order_polling off)")
    args = parser.parse_args(argv)
    extra: dict[str, Any] = {}
    if args.broker == "coinw" and not args.list_only:
        # Per-order polling on returnOrderStatus at the full budget; discovery every 5 s.
        extra = {"per_order_polling": True, "interval": 5.0}
    for n in [int(x) for x in args.orders.split(",")]:
        result = asyncio.run(run_one(args.broker, n, args.duration, args.change_every,
                                     args.seed, extra))
        print("\n".join(result.lines()), flush=True)


if __name__ == "__main__":
    main()


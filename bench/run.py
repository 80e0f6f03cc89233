"""Benchmark: per-order polling against CoinW, measured from outside, beside its peers.

    python -m bench.run --orders 50,500,5000 --duration 60 --latency-ms 0-300 --peers

The simulator runs in a process of its own (answers delayed by ``--latency-ms``, requests
counted on arrival), the daemon in another (``poller run``, its CPU and memory its own),
and a webhook receiver in this one. For each N: N open orders, the daemon's baseline, a
warm-up, then one random partial fill every ``--change-every`` seconds for ``--duration``
seconds. Printed, never asserted:

* the most per-order reads (``returnOrderTrades``, CoinW's order detail), the most of any
  other endpoint in any 2 s, and all-endpoint requests in any 1 s at the simulator (by
  arrival) against the documented 30 / 30 / 300, and refusals;
* utilisation: per-order reads per second against the documented 15/s, and against what
  the share allows after the slots' hold (floor(share × 30) / (2 s + hold): each request
  holds its slot for 2 s after its own answer or after send + the jitter pad, whichever is
  sooner; the daemon's ``poller_budget_hold_seconds`` is the mean);
* detection latency, simulator change → webhook receiver (mean, p99, unseen), beside the
  round-robin bounds N/(2R) (mean) and N/R (max) for the rate R actually allowed;
* re-poll of a just-changed order (mean) against the round-robin period N/R;
* with ``--list-interval``: the longest gap between two polls of one order against
  1.2 × N/R (no starvation while the lists run too);
* daemon CPU per request and peak RSS; with ``--peers``, the naive ``AsyncLimiter(30, 2)``
  and a 5 %-margin sliding window, each against its own simulator process, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.harness import Daemon, Receiver, Sims, max_in_window, percentile
from bench.peers import run_peer

READ = "command=returnOrderTrades"  # the per-order read (poller's and the peers')
ENDPOINTS = ("returnOrderTrades", "returnOrderStatus", "returnOpenOrders", "cancelOrder")
#: The list interval of a per-order-only run (seconds): longer than any run.
NO_LISTS = 86_400.0


@dataclass
class Figures:
    """One row of the comparison."""

    name: str
    n: int
    max_read: int = 0
    #: The most requests of any other CoinW endpoint in any 2 s (each documented 30).
    max_other: int = 0
    max_uid: int = 0
    refused: int = 0
    read_rate: float = 0.0
    allowed_rate: float = 0.0
    pad: float = 0.0
    hold: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: Of each latency: the wait for the first request that arrived after the change and
    #: could see it (a per-order read of its order, or a list call).
    waits: list[float] = field(default_factory=list)
    #: The same wait for a change at a uniformly random moment of the run, computed from the
    #: reads' arrival times (no sampling noise: the fills land independently of the reads).
    schedule_wait: float = 0.0
    unseen: int = 0
    repoll: list[float] = field(default_factory=list)
    max_gap: float = 0.0
    cpu_per_request_ms: float = 0.0
    rss_mb: float = 0.0

    @property
    def wait_error(self) -> float:
        """The standard error of the changes' mean wait (their spread over √count)."""
        if len(self.waits) < 2:
            return 0.0
        return statistics.stdev(self.waits) / math.sqrt(len(self.waits))

    @property
    def bound_mean(self) -> float:
        """N/(2R): the mean latency of a perfect round-robin at the allowed rate."""
        return self.n / (2 * self.allowed_rate) if self.allowed_rate else 0.0

    def lines(self) -> list[str]:
        """Printable figures."""
        out = [f"{self.name} N={self.n}:"]
        out.append(f"  max in any 2 s (server, by arrival): returnOrderTrades "
                   f"{self.max_read}, any other endpoint {self.max_other} (documented 30 "
                   f"each); all endpoints in any 1 s {self.max_uid} (documented 300); "
                   f"refusals {self.refused}")
        if self.allowed_rate:
            out.append(f"  utilisation: {self.read_rate:.2f} reads/s = "
                       f"{self.read_rate / 15:.3f} of the documented 15/s; "
                       f"{self.read_rate / self.allowed_rate:.3f} of the "
                       f"{self.allowed_rate:.2f}/s the share allows after the "
                       f"{self.hold:.3f} s mean hold (jitter pad {self.pad:.3f} s)")
        else:
            out.append(f"  per-order reads: {self.read_rate:.2f}/s = "
                       f"{self.read_rate / 15:.3f} of the documented 15/s")
        if self.latencies:
            mean = statistics.mean(self.latencies)
            ratio = f" = {mean / self.bound_mean:.2f} × N/(2R) {self.bound_mean:.2f} s" \
                if self.bound_mean else ""
            out.append(f"  detection latency to the receiver: mean {mean:.2f} s{ratio}; "
                       f"p99 {percentile(self.latencies, 0.99):.2f} s; max "
                       f"{max(self.latencies):.2f} s (N/R {2 * self.bound_mean:.1f} s); "
                       f"{len(self.latencies)} seen, {self.unseen} not seen")
            if self.waits:
                wait = statistics.mean(self.waits)
                out.append(f"    of which waiting for the next request to see it {wait:.2f} s "
                           f"({wait / self.bound_mean:.2f} × N/(2R)), that poll's arrival "
                           f"to the receiver {mean - wait:.2f} s")
                if self.schedule_wait:
                    expected = self.schedule_wait + mean - wait
                    out.append(f"    expected from the read schedule (a change at a random "
                               f"moment): wait {self.schedule_wait / self.bound_mean:.3f} × "
                               f"+ that rest = {expected / self.bound_mean:.3f} × N/(2R); "
                               f"the {len(self.waits)} changes' own mean has a standard "
                               f"error of ±{self.wait_error / self.bound_mean:.3f} ×")
        elif self.unseen:
            out.append(f"  detection: none of {self.unseen} changes seen")
        if self.repoll and self.bound_mean:
            mean = statistics.mean(self.repoll)
            out.append(f"  re-poll after a change: mean {mean:.2f} s vs round-robin "
                       f"{2 * self.bound_mean:.1f} s ({2 * self.bound_mean / mean:.1f} × "
                       f"sooner)")
        if self.max_gap and self.bound_mean:
            out.append(f"  longest gap between two polls of one order: {self.max_gap:.1f} s "
                       f"vs 1.2 × N/R = {2.4 * self.bound_mean:.1f} s")
        out.append(f"  CPU per request {self.cpu_per_request_ms:.2f} ms"
                   + (f"; peak RSS {self.rss_mb:.0f} MB" if self.rss_mb else ""))
        return out


def detection(changes: list[list[Any]], seen: list[tuple[float, str, Decimal]],
              since: float) -> tuple[list[float], int]:
    """Latencies from each change to the first sighting of at least its filled quantity."""
    by_order: dict[str, list[tuple[float, Decimal]]] = {}
    for at, order_id, filled in seen:
        by_order.setdefault(order_id, []).append((at, filled))
    latencies, unseen = [], 0
    for at, order_id, filled in changes:
        if at < since:
            continue
        later = [t for t, f in by_order.get(order_id, []) if t >= at and f >= Decimal(filled)]
        if later:
            latencies.append(min(later) - at)
        else:
            unseen += 1
    return latencies, unseen


def schedule_wait(report: dict[str, Any], polls: dict[str, list[float]], start: float,
                  end: float) -> float:
    """The mean wait, from a uniformly random moment in [start, end) and a uniformly random
    order, until the next request that can see a change of that order arrives (its next
    per-order read or the next list call): the integral of the time to the next read.
    Fills land independently of the reads, so this is the expectation the changes' own mean
    estimates, without their sampling noise."""
    lists = [r[0] for r in report["requests"] if "command=returnOpenOrders" in r[3]]
    total = 0.0
    for times in polls.values():
        reads = sorted(t for t in times + lists if t >= start)
        edge = start
        for read in reads:
            if edge >= end:
                break
            stop = min(read, end)
            # Over [edge, stop) the time to the next read falls from read - edge to read - stop.
            total += ((read - edge) ** 2 - (read - stop) ** 2) / 2
            edge = read
    return total / (len(polls) * (end - start)) if polls else 0.0


def next_polls(changes: list[list[Any]], report: dict[str, Any], polls: dict[str, list[float]],
               since: float) -> list[float]:
    """For each change, the time to the first request that arrived after it and could see it:
    a per-order read of its order (``polls``, from :func:`read_polls`), or a list call (the
    round-robin's and the lists' share of the latency; the rest is answer, commit and
    delivery)."""
    lists = [r[0] for r in report["requests"] if "command=returnOpenOrders" in r[3]]
    waits = []
    for at, order_id, _filled in changes:
        later = [p for p in polls.get(order_id, []) + lists if p >= at] if at >= since else []
        if later:
            waits.append(min(later) - at)
    return waits


def read_polls(report: dict[str, Any], start: float, end: float) -> dict[str, list[float]]:
    """Arrival times of per-order reads (returnOrderTrades) per order in [start, end)."""
    polls: dict[str, list[float]] = {}
    for at, _kind, order_id, path in report["requests"]:
        if READ in path and start <= at < end:
            polls.setdefault(order_id, []).append(at)
    return polls


def server_side(figures: Figures, report: dict[str, Any], start: float, end: float) -> int:
    """Fill in what the simulator counted; returns the requests in [start, end)."""
    reads = [r[0] for r in report["requests"] if READ in r[3]]
    everything = [r[0] for r in report["requests"]]
    figures.max_read = max_in_window(reads, 2.0)
    figures.max_other = max(max_in_window([r[0] for r in report["requests"]
                                           if f"command={name}" in r[3]], 2.0)
                            for name in ENDPOINTS[1:])
    figures.max_uid = max_in_window(everything, 1.0)
    figures.refused = report["violations"]
    figures.read_rate = sum(1 for t in reads if start <= t < end) / (end - start)
    return sum(1 for t in everything if start <= t < end)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def run_poller(args: argparse.Namespace, n: int) -> Figures:
    """poller (a daemon process) against its own simulator process."""
    sims = Sims("coinw", orders=n, latency=args.latency_ms, seed=args.seed)
    receiver = Receiver()
    # Without --list-interval, per-order reads only: the open-orders list runs once, at
    # start (the baseline), and not again within any run.
    table = sims.config(0) | {"per_order_polling": True, "share": args.share,
                              "interval": args.list_interval or NO_LISTS, "timeout": 30.0}
    daemon = Daemon({"c0": table}, receiver.url)
    figures = Figures("poller", n)
    try:
        daemon.start()

        def baselined() -> bool:
            return daemon.metrics().get(("poller_open_orders", (("connection", "c0"),)),
                                        0) >= n
        await wait_for(baselined, 120, "the baseline")
        await asyncio.sleep(args.warm_up)  # the budget's first window is a burst
        cpu0, t0 = daemon.cpu_seconds(), time.monotonic()
        sims.control(0, "start", every=args.change_every, seed=args.seed)
        await asyncio.sleep(args.duration)
        sims.control(0, "stop")
        cpu1, t1 = daemon.cpu_seconds(), time.monotonic()
        metrics = daemon.metrics()
        # Long enough for the last changes to come round: a round-robin period and more.
        period = n / (math.floor(args.share * 30) / (2.0 + 0.3))
        await asyncio.sleep(max(args.cool_down, 1.3 * period))
        figures.rss_mb = daemon.peak_rss_mb()
        report = sims.control(0, "report")
    finally:
        daemon.stop()
        receiver.close()
        sims.close()
    if os.environ.get("BENCH_DUMP"):  # the raw readings, for a closer look
        Path(os.environ["BENCH_DUMP"]).write_text(json.dumps(
            {"t0": t0, "t1": t1, "report": report,
             "seen": [(r.at, r.event["payload"]) for r in receiver.events]}, default=str))
    requests = server_side(figures, report, t0, t1)
    figures.cpu_per_request_ms = (cpu1 - cpu0) / max(1, requests) * 1000
    figures.pad = metrics.get(("poller_budget_pad_seconds",
                               (("connection", "c0"), ("group", "returnOrderTrades"))), 0.0)
    allowed = math.floor(args.share * 30)
    figures.hold = metrics.get(("poller_budget_hold_seconds",
                                (("connection", "c0"), ("group", "returnOrderTrades"))),
                               figures.pad)
    figures.allowed_rate = allowed / (2.0 + figures.hold)
    seen = [(r.at, str(r.event["payload"]["order_id"]),
             Decimal(r.event["payload"].get("filled_qty") or 0)) for r in receiver.events
            if r.event["event_type"] == "TRADE"]
    figures.latencies, figures.unseen = detection(report["changes"], seen, t0)
    polls = read_polls(report, t0, float("inf"))
    figures.waits = next_polls(report["changes"], report, polls, t0)
    figures.schedule_wait = schedule_wait(report, polls, t0, t1)
    for at, order_id, _ in seen:
        if t0 <= at < t1:
            later = [p for p in polls.get(order_id, []) if p > at]
            if later:
                figures.repoll.append(min(later) - at)
    if args.list_interval:
        steady = read_polls(report, t0, t1)
        gaps = [b - a for times in steady.values() for a, b in zip(times, times[1:],
                                                                   strict=False)]
        figures.max_gap = max(gaps, default=0.0)
    return figures


async def run_peer_figures(args: argparse.Namespace, n: int, strategy: str) -> Figures:
    """A peer strategy in this process against its own simulator process."""
    sims = Sims("coinw", orders=n, latency=args.latency_ms, seed=args.seed)
    figures = Figures(f"peer {strategy}", n)
    try:
        t0 = time.monotonic()
        sims.control(0, "start", every=args.change_every, seed=args.seed)
        result = await run_peer(strategy, sims.entries[0]["url"], sims.config(0),
                                sims.entries[0]["orders"], args.duration)
        t1 = time.monotonic()
        sims.control(0, "stop")
        report = sims.control(0, "report")
    finally:
        sims.close()
    requests = server_side(figures, report, t0, t1)
    figures.refused = max(figures.refused, result.refused)
    figures.cpu_per_request_ms = result.cpu / max(1, requests) * 1000
    figures.latencies, figures.unseen = detection(report["changes"], result.seen, t0)
    return figures


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--orders", default="50,500,5000", help="comma-separated N values")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per N")
    parser.add_argument("--latency-ms", default="0-300", help="answer delay range at the sim")
    parser.add_argument("--change-every", type=float, default=0.5)
    parser.add_argument("--share", type=float, default=0.8)
    parser.add_argument("--list-interval", type=float, default=0.0,
                        help="also run the open-orders list every S seconds (0: per-order "
                             "reads only, the list once at start)")
    parser.add_argument("--warm-up", type=float, default=5.0)
    parser.add_argument("--cool-down", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--peers", action="store_true", help="also run the peers")
    args = parser.parse_args(argv)
    print(f"CoinW per-order polling, answers delayed {args.latency_ms} ms, share {args.share}, "
          f"one partial fill every {args.change_every} s, {args.duration:g} s per run",
          flush=True)
    for n in [int(x) for x in args.orders.split(",")]:
        print("\n".join(asyncio.run(run_poller(args, n)).lines()), flush=True)
        if args.peers:
            for strategy in ("naive", "window"):
                figures = asyncio.run(run_peer_figures(args, n, strategy))
                print("\n".join(figures.lines()), flush=True)


if __name__ == "__main__":
    main()

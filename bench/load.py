"""Benchmark: many connections at full budget in one daemon — CPU, memory, loop lag.

    python -m bench.load --connections 20 --orders 200 --duration 60

The simulators (one per connection, all in one process of their own, answers delayed
``--latency-ms``) each hold ``--orders`` open orders; the daemon (its own process) polls every
order of every connection per order at the full budget while one partial fill a second lands
somewhere. Printed: the daemon's CPU as a share of one core, its peak RSS, the event loop's
lag (p50/p99, from its own metrics), requests per second at the simulators, and the most
per-order reads (``returnOrderTrades``) any connection sent in any 2 s (documented 30).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.harness import Daemon, Receiver, Sims, max_in_window


def run(args: argparse.Namespace) -> list[str]:
    """One run; printable lines."""
    sims = Sims("coinw", count=args.connections, orders=args.orders, latency=args.latency_ms)
    receiver = Receiver()
    brokers: dict[str, Any] = {
        f"c{i}": sims.config(i) | {"per_order_polling": True, "interval": 30.0}
        for i in range(args.connections)}
    daemon = Daemon(brokers, receiver.url)
    try:
        daemon.start()
        total = args.connections * args.orders
        deadline = time.monotonic() + 300
        while sum(v for (name, _), v in daemon.metrics().items()
                  if name == "poller_open_orders") < total:
            if time.monotonic() > deadline:
                raise RuntimeError("no baseline")
            time.sleep(0.5)  # reading another process's metrics: nothing to wait on
        time.sleep(args.warm_up)
        every = args.connections / args.changes_per_second
        for i in range(args.connections):
            sims.control(i, "start", every=every, seed=i + 1)
        cpu0, t0 = daemon.cpu_seconds(), time.monotonic()
        time.sleep(args.duration)
        cpu1, t1 = daemon.cpu_seconds(), time.monotonic()
        metrics = daemon.metrics()
        rss = daemon.peak_rss_mb()
        reports = [sims.control(i, "report") for i in range(args.connections)]
        for i in range(args.connections):
            sims.control(i, "stop")
    finally:
        daemon.stop()
        receiver.close()
        sims.close()
    requests = [r[0] for rep in reports for r in rep["requests"] if t0 <= r[0] < t1]
    worst = max(max_in_window([r[0] for r in rep["requests"]
                               if "command=returnOrderTrades" in r[3]], 2.0)
                for rep in reports)
    lag = {dict(labels)["quantile"]: value for (name, labels), value in metrics.items()
           if name == "poller_event_loop_lag_seconds"}
    return [
        f"{args.connections} connections × {args.orders} open orders, answers delayed "
        f"{args.latency_ms} ms, {args.duration:g} s:",
        f"  daemon CPU {100 * (cpu1 - cpu0) / (t1 - t0):.1f} % of one core; peak RSS "
        f"{rss:.0f} MB; event-loop lag p50 {1000 * lag.get('0.5', 0):.1f} ms, p99 "
        f"{1000 * lag.get('0.99', 0):.1f} ms",
        f"  {len(requests) / (t1 - t0):.1f} requests/s at the simulators; most "
        f"returnOrderTrades from one connection in any 2 s: {worst} (documented 30); "
        f"refusals {sum(rep['violations'] for rep in reports)}",
    ]


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--latency-ms", default="0-300")
    parser.add_argument("--changes-per-second", type=float, default=1.0)
    parser.add_argument("--warm-up", type=float, default=5.0)
    args = parser.parse_args(argv)
    print("\n".join(run(args)), flush=True)


if __name__ == "__main__":
    main()

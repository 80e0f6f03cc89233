"""Push vs poll-only: detection latency and the budget each uses, on the same lifecycle.

    python -m bench.push --kind webull --orders 50 --duration 60 --latency-ms 0-300

The simulator runs in a process of its own (answers delayed by ``--latency-ms``), moves one
random open order every ``--change-every`` seconds, and counts requests by arrival time.
The same run is made twice: once with the broker's push stream (the daemon's list calls
then only reconcile), once polling only. Latency is from the simulator's change to the
webhook receiver; the budget is the requests per second that arrived at the simulator,
against the documented limit of the list call.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from decimal import Decimal

from bench.harness import Daemon, Receiver, Sims, max_in_window, percentile
from bench.run import detection, wait_for

#: The documented limit of each broker's list call (requests, seconds), for the ratio.
DOCUMENTED = {"webull": (2, 2.0), "shioaji": (250, 10.0)}


async def one_run(args: argparse.Namespace, push: bool) -> list[str]:
    """One daemon against one simulator process; the lines to print."""
    options = {"push_events": "true"} if push else {}
    sims = Sims(args.kind, orders=args.orders, latency=args.latency_ms, seed=args.seed,
                size=1000, options=options)
    receiver = Receiver()
    table = sims.config(0) | {"push": push, "timeout": 30.0}
    daemon = Daemon({"c0": table}, receiver.url)
    try:
        daemon.start()

        def baselined() -> bool:
            found = daemon.metrics().get(("poller_open_orders", (("connection", "c0"),)), 0)
            return bool(found >= args.orders)
        await wait_for(baselined, 120, "the baseline")
        if push:
            await wait_for(lambda: daemon.metrics().get(
                ("poller_push_up", (("connection", "c0"),)), 0) == 1, 60, "the stream")
        await asyncio.sleep(args.warm_up)
        t0 = time.monotonic()
        sims.control(0, "start", every=args.change_every, seed=args.seed)
        await asyncio.sleep(args.duration)
        sims.control(0, "stop")
        t1 = time.monotonic()
        await asyncio.sleep(args.cool_down)
        report = sims.control(0, "report")
        metrics = daemon.metrics()
    finally:
        daemon.stop()
        receiver.close()
        sims.close()
    seen = [(r.at, str(r.event["payload"]["order_id"]),
             Decimal(r.event["payload"].get("filled_qty") or 0)) for r in receiver.events
            if r.event["event_type"] == "TRADE"]
    latencies, unseen = detection(report["changes"], seen, t0)
    arrived = [r[0] for r in report["requests"] if t0 <= r[0] < t1]
    lists = [r[0] for r in report["requests"] if r[1] == "list" and t0 <= r[0] < t1]
    count, window = DOCUMENTED.get(args.kind, (1, 1.0))
    pushed_first = sum(1 for r in receiver.events if r.event["payload"].get("via") == "push")
    name = "push + reconcile" if push else "poll only"
    lines = [f"{args.kind} {name}: {len(latencies)} changes detected, {unseen} not seen"]
    if latencies:
        lines.append(f"  detection latency p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                     f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
                     f"max {max(latencies) * 1000:.0f} ms")
    lines.append(f"  requests {len(arrived) / (t1 - t0):.2f}/s ({len(lists) / (t1 - t0):.2f}/s "
                 f"list calls) vs documented {count}/{window:g} s = {count / window:.2f}/s; "
                 f"most in any {window:g} s window {max_in_window(lists, window)}; "
                 f"refusals {report['violations']}")
    drops = metrics.get(("poller_push_drops_total", (("connection", "c0"),)), 0.0)
    lines.append(f"  events announced first by the stream: {pushed_first} of "
                 f"{len(receiver.events)}; stream drops {drops:.0f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--kind", default="webull", choices=sorted(DOCUMENTED))
    parser.add_argument("--orders", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--latency-ms", default="0-300")
    parser.add_argument("--change-every", type=float, default=0.5)
    parser.add_argument("--warm-up", type=float, default=3.0)
    parser.add_argument("--cool-down", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"{args.kind}: {args.orders} open orders, answers delayed {args.latency_ms} ms, "
          f"one partial fill every {args.change_every} s, {args.duration:g} s per run",
          flush=True)
    for push in (True, False):
        print("\n".join(asyncio.run(one_run(args, push))), flush=True)




if __name__ == "__main__":
    main()

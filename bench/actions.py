"""Benchmark: a queue of replaces through the daemon against the Webull simulator.

    python -m bench.actions --replaces 100 --orders 20 --latency-ms 0-300 --share 1.0

The simulator (its own process, answers delayed ``--latency-ms``) holds N working orders; the
daemon (its own process) takes its baseline; then all replaces are queued at once in the
daemon's database — as ``poller replace`` does — with distinct new prices spread over the
orders, while status polling goes on. Printed, measured at the simulator by arrival:
replaces per second against the documented 1/s and against the share, the most replaces in
any 1 s (limit 1), the most order queries in any window against their limit, refusals, and
how many replaces ended with a verified MODIFY_SUCCESS.
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal
from pathlib import Path

from bench.harness import Daemon, Receiver, Sims, max_in_window
from poller.simulator.webull import WebullSim
from poller.store import Store


def run(args: argparse.Namespace) -> list[str]:
    """One run; printable lines."""
    sims = Sims("webull", orders=args.orders, size=100, latency=args.latency_ms,
                options={"region": args.region})
    receiver = Receiver()
    table = sims.config(0) | {"share": args.share, "timeout": 30.0}
    daemon = Daemon({"wb": table}, receiver.url)
    try:
        daemon.start()
        database = Path(daemon.folder.name) / "bench.db"
        store = Store.open(database)
        try:
            deadline = time.monotonic() + 300
            while len(store.list_orders("wb", include_final=False)) < args.orders:
                if time.monotonic() > deadline:
                    raise RuntimeError("no baseline")
                time.sleep(0.5)  # another process's database: nothing to wait on
            order_ids = sims.entries[0]["orders"]
            account = str(table["account_ids"][0])
            price = Decimal(WebullSim.symbols[0][1])
            start = time.monotonic()
            queued = [store.add_action("wb", account, order_ids[n % args.orders], "replace",
                                       price=str(price - Decimal("0.01") * (n // args.orders
                                                                           + 1)))
                      for n in range(args.replaces)]
            while True:
                rows = [store.action(a) for a in queued]
                if all(r is not None and r.done for r in rows):
                    break
                time.sleep(0.5)
            took = time.monotonic() - start
        finally:
            store.close()
        report = sims.control(0, "report")
    finally:
        daemon.stop()
        receiver.close()
        sims.close()
    replaces = sorted(r[0] for r in report["requests"] if r[3].startswith(
        "/trade/order/replace"))
    queries = [r[0] for r in report["requests"] if r[3].startswith(("/trade/orders/",
                                                                      "/trade/order/detail"))]
    succeeded = sum(1 for r in rows if r is not None and r.outcome == "MODIFY_SUCCESS")
    span = replaces[-1] - replaces[0] if len(replaces) > 1 else 0.0
    rate = (len(replaces) - 1) / span if span else 0.0
    query_window = report["windows"].get("order_query", [0, 0, 2.0, 0])
    lines = [
        f"webull {args.region}: {args.replaces} replaces queued at once over {args.orders} "
        f"orders, answers delayed {args.latency_ms} ms, share {args.share}: {took:.1f} s",
        f"  replaces at the simulator: {len(replaces)}, {rate:.3f}/s = {rate:.3f} of the "
        f"documented 1/s, {rate / args.share:.3f} of the share; most in any 1 s: "
        f"{max_in_window(replaces, 1.0)} (limit 1)",
        f"  order queries: {len(queries)}, most in any {query_window[2]:g} s "
        f"{max_in_window(queries, query_window[2])} (limit {query_window[1]}); refusals "
        f"{report['violations']}",
        f"  verified MODIFY_SUCCESS: {succeeded}/{args.replaces}",
    ]
    for message in sorted({r.message for r in rows
                           if r is not None and r.outcome != "MODIFY_SUCCESS"}):
        lines.append(f"  not verified: {message}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--replaces", type=int, default=100)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--region", default="hk", choices=["hk", "us", "jp"])
    parser.add_argument("--latency-ms", default="0-300")
    parser.add_argument("--share", type=float, default=0.8)
    args = parser.parse_args(argv)
    print("\n".join(run(args)), flush=True)


if __name__ == "__main__":
    main()

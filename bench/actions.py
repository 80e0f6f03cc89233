"""Benchmark: replace-heavy traffic through the daemon against the Webull simulator.

    python -m bench.actions --replaces 100 --orders 20

Places N working orders, lets the daemon take its baseline, then queues all replaces at once
(distinct new prices spread over the orders) while status polling goes on, and prints,
measured at the simulator: replace requests in any 1 s window (limit: 1 per second per app
key), order-query requests in any window against their limit, rate-limit answers, how long
the batch took, and how many replaces ended with a verified MODIFY_SUCCESS.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from poller.app import App
from poller.compose import validate
from poller.logsetup import Redactor
from poller.plugins import get_plugin_manager
from poller.settings import load_settings
from poller.simulator.webull import WebullSim
from poller.store import Store


async def run(replaces: int, orders: int, region: str) -> list[str]:
    """One run; returns printable lines."""
    sim = WebullSim(seed=1, region=region)  # type: ignore[arg-type]
    sim.start()
    try:
        account = sim.accounts()[0]
        symbol, price = sim.symbols[0]
        ids = []
        for _ in range(orders):
            order = sim.book.place(account, symbol, "BUY", 100, price)
            sim.book.accept(order.order_id)
            ids.append(order.order_id)
        with tempfile.TemporaryDirectory(prefix="poller-bench-") as folder:
            database = Path(folder) / "bench.db"
            settings = load_settings(data={
                "daemon": {"database": str(database)},
                "brokers": {"wb": sim.broker_config("wb")}, "notifiers": {}})
            plugins = get_plugin_manager()
            validated = validate(settings, plugins.registry(), "<bench>")
            store = Store.open(database, lock=True)
            app = App.create(settings, plugins, validated, redactor=Redactor(), store=store)
            await app.start()
            tracker = app.trackers["wb"]
            while len(tracker.known) < orders:
                await asyncio.sleep(0.05)
            queued = []
            for n in range(replaces):
                order_id = ids[n % orders]
                new_price = Decimal(price) - Decimal("0.01") * (n // orders + 1)
                queued.append(store.add_action("wb", account, order_id, "replace",
                                               price=str(new_price)))
            start = time.monotonic()
            assert app.actions is not None
            app.actions.wake()
            while True:
                rows = [store.action(a) for a in queued]
                if all(r is not None and r.done for r in rows):
                    break
                await asyncio.sleep(0.5)
            took = time.monotonic() - start
            await app.stop()
            store.close()
        succeeded = sum(1 for r in rows if r is not None and r.outcome == "MODIFY_SUCCESS")
        replace_times = sorted(r.arrived for r in sim.server.log
                               if r.path == "/trade/order/replace")
        spacing = min((b - a for a, b in zip(replace_times, replace_times[1:], strict=False)),
                      default=0.0)
        lines = [f"webull {region}: {replaces} replaces over {orders} orders in {took:.1f} s"]
        for name, window in sim.windows.items():
            lines.append(f"  max in window {name}: {window.max_seen} (limit {window.count} per "
                         f"{window.window:g} s), refused {window.violations}")
        lines.append(f"  replace requests at the simulator: {len(replace_times)}, closest two "
                     f"{spacing:.3f} s apart")
        lines.append(f"  verified MODIFY_SUCCESS: {succeeded}/{replaces}; rate-limit answers: "
                     f"{tracker.rate_limit_answers}; list polls during the batch: "
                     f"{tracker.polls}")
        for message in sorted({r.message for r in rows if r is not None
                               and r.outcome != "MODIFY_SUCCESS"}):
            lines.append(f"  not verified: {message}")
        return lines
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description="replace-heavy benchmark (Webull)")
    parser.add_argument("--replaces", type=int, default=100)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--region", default="hk", choices=["hk", "us", "jp"])
    args = parser.parse_args(argv)
    print("\n".join(asyncio.run(run(args.replaces, args.orders, args.region))), flush=True)


if __name__ == "__main__":
    main()

"""Micro-benchmark: CPU per poll for parse + diff + store, with N open orders tracked.

    python -m bench.cpu --orders 5000 --polls 20000

Reads ``returnOrderTrades``-shaped answers (CoinW's order detail) from bytes, diffs each against
the tracked snapshot, and commits the changes to a real SQLite file (WAL, synchronous=FULL)
the way the tracker does, one transaction per changed poll. One poll in ten carries a change
(a partial fill); the rest are unchanged. Prints CPU seconds per poll (process time, so the
fsync waits are not counted as CPU) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from poller.brokers.coinw import parse_order_detail
from poller.diff import diff
from poller.models import OrderSnapshot, OrderStatus, utcnow
from poller.records import Batch
from poller.store import Store


def main(argv: list[str] | None = None) -> None:
    """Run the micro-benchmark and print its figures."""
    parser = argparse.ArgumentParser(description="CPU per poll: parse + diff + store")
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--polls", type=int, default=20000)
    parser.add_argument("--change-every", type=int, default=10)
    args = parser.parse_args(argv)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(Path(folder) / "cpu.db")
        known: dict[str, OrderSnapshot] = {}
        filled: dict[str, int] = {}
        for i in range(args.orders):
            oid = str(4624544807079846405 + i)
            known[oid] = OrderSnapshot(
                broker="bench", broker_kind="coinw", account_id="spot", order_id=oid,
                status=OrderStatus.SUBMITTED, broker_status="1", symbol="BTC_USDT",
                side="BUY", qty=Decimal(1_000_000), price=Decimal("67000"))
            filled[oid] = 0
        store.commit(Batch(snapshots=list(known.values())))
        ids = list(known)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        changes = 0
        for n in range(args.polls):
            oid = ids[n % len(ids)] if n % args.change_every else rng.choice(ids)
            if n % args.change_every == 0:
                filled[oid] += 1
                changes += 1
            status = 2 if filled[oid] else 1
            body = json.dumps({"code": "200", "data": {
                "tradeID": int(oid), "status": status, "currencyPair": "BTC_USDT",
                "date": "2026-05-20 11:24:30", "total": "1000000", "type": "buy",
                "amount": "67000000000", "success_total": str(filled[oid]),
                "success_amount": str(67000 * filled[oid]), "fee": "0"},
                "msg": "SUCCESS", "success": True, "failed": False}).encode()
            data = json.loads(body, parse_float=Decimal)["data"]
            probed = parse_order_detail(data, broker="bench", account_id="spot", order_id=oid)
            current = replace(probed, price=Decimal("67000"), extra={})
            result = diff(known[oid], current, detected_at=utcnow())
            if result.snapshot is not None and result.snapshot != known[oid]:
                known[oid] = result.snapshot
                store.commit(Batch(snapshots=[result.snapshot], events=result.events,
                                   routes={e.id: ("hook",) for e in result.events}))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        store.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.polls} polls over {args.orders} tracked orders ({changes} with a change): "
          f"{cpu / args.polls * 1000:.3f} ms CPU per poll (parse + diff + store), "
          f"{wall / args.polls * 1000:.3f} ms wall; peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()

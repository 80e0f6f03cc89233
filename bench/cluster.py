"""Benchmark: several instances on one PostgreSQL database, killed one after another.

    python -m bench.cluster --instances 3 --connections 20 --kills 5 --lease 10

A PostgreSQL server of its own (``tests.pgserver``), one process of ``--connections`` Shioaji
simulators (answers delayed ``--latency-ms``, ``--orders`` open orders each, every request's
sending process recorded), a webhook receiver in this process, and ``--instances`` ``poller
run`` processes sharing the database (``daemon.lease_seconds = --lease``). Orders move at every
simulator. Then ``--kills`` times: wait until the leases are spread stably over live
instances, ``kill -9`` the instance holding the most, start a replacement, and run
``--duration-per-kill`` seconds. Printed, never asserted (a table, then one JSON line):

* per instance: CPU as a share of one core over its life (from ``/proc/<pid>/stat``) and peak
  RSS; a killed instance's readings are its last ones, taken just before the kill;
* the spread at the end: connections per instance against ⌈C / I⌉;
* take-over time per connection of a killed instance: its first request at the simulator
  from another process minus the kill (one monotonic clock for every process on Linux);
  median and max against the bound lease + lease/3 + one polling round;
* at the simulators: refusals, and the most arrivals in any documented window against the
  documented count; concurrent polling: per connection, the runs of requests from one
  process against the lease epoch (each change of holder raises it by one, so more runs than
  epochs means two processes took turns on one key);
* events delivered to the receiver, duplicates (one event id twice), lost (a moved order
  whose final filled quantity never reached the receiver once the movers stopped and the
  outbox drained), and events about orders that never moved (re-announcements).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from bench.harness import Daemon, Receiver, Sims
from tests.pgserver import running_server


@dataclass
class Instance:
    """One ``poller run`` of the cluster and its readings."""

    number: int
    daemon: Daemon
    cpu0: float = 0.0
    cpu: float = 0.0
    rss_mb: float = 0.0
    ended: float = 0.0
    killed: bool = False

    @property
    def pid(self) -> int:
        """Its process id (also what the simulators record as the sender)."""
        return self.daemon.pid

    def read(self) -> None:
        """Take its CPU and memory readings now (before a kill, or at the end)."""
        self.cpu = self.daemon.cpu_seconds()
        self.rss_mb = self.daemon.peak_rss_mb()
        self.ended = time.monotonic()

    @property
    def cpu_percent(self) -> float:
        """CPU since it was ready, as a percentage of one core."""
        span = self.ended - self.daemon.started
        return 100 * (self.cpu - self.cpu0) / span if span > 0 else 0.0


@dataclass
class Kill:
    """One ``kill -9`` and what it left behind."""

    at: float
    pid: int
    connections: list[str]
    #: connection → seconds from the kill to its first request from another process.
    takeover: dict[str, float] = field(default_factory=dict)
    #: connection → the process that sent that request.
    taken_by: dict[str, int] = field(default_factory=dict)


@dataclass
class Holding:
    """The lease table as read at one moment: connection → (holder pid, epoch, unexpired)."""

    rows: dict[str, tuple[int | None, int, bool]]

    def by_pid(self) -> dict[int, list[str]]:
        """Connections per holder pid (unexpired leases only)."""
        out: dict[int, list[str]] = {}
        for name, (pid, _epoch, live) in sorted(self.rows.items()):
            if pid is not None and live:
                out.setdefault(pid, []).append(name)
        return out


def read_leases(url: str) -> Holding:
    """Every lease with its holder's pid, read on the database's clock."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.connection, i.pid, l.epoch, "
            "l.expires_at > extract(epoch FROM clock_timestamp())::float8 "
            "FROM leases l LEFT JOIN instances i ON i.id = l.holder AND l.holder <> ''"
        ).fetchall()
    return Holding({str(c): (None if p is None else int(p), int(e), bool(live))
                    for c, p, e, live in rows})


def baselined(url: str, connections: int) -> bool:
    """Whether every connection's account has its baseline committed."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(DISTINCT broker) FROM accounts").fetchone()
    return row is not None and int(row[0]) >= connections


def pending_outbox(url: str) -> int:
    """Outbox rows not delivered yet."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()
    return int(row[0]) if row is not None else 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-check ``predicate`` with a short nap until it holds; raise at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)  # another process's tables: nothing to wait on


def wait_stable(url: str, names: Sequence[str], alive: Callable[[], set[int]], lease: float,
                timeout: float) -> dict[int, list[str]]:
    """Wait until every connection is leased to a live instance, none holds more than
    ⌈C / I⌉, and the assignment stayed the same for two lease rounds; the assignment."""
    deadline = time.monotonic() + timeout
    settle = 2 * lease / 3
    last: dict[int, list[str]] | None = None
    since = time.monotonic()
    while True:
        pids = alive()
        spread = read_leases(url).by_pid()
        target = math.ceil(len(names) / max(1, len(pids)))
        good = (set(spread) <= pids and sum(len(v) for v in spread.values()) == len(names)
                and max((len(v) for v in spread.values()), default=0) <= target)
        now = time.monotonic()
        if not good or spread != last:
            last, since = (spread if good else None), now
        elif now - since >= settle:
            return spread
        if now > deadline:
            raise RuntimeError(f"no stable spread after {timeout:g} s: {spread}")
        time.sleep(0.25)  # another process's tables: nothing to wait on


def takeovers(kill: Kill, reports: Sequence[dict[str, Any]]) -> None:
    """Fill in, per connection of a killed instance, its first request from another pid."""
    for name in kill.connections:
        report = reports[int(name.removeprefix("c"))]
        firsts = [(r[0], pid) for r, pid in zip(report["requests"], report["peers"],
                                                strict=True)
                  if r[0] > kill.at and pid is not None and pid != kill.pid]
        if firsts:
            at, pid = min(firsts)
            kill.takeover[name] = at - kill.at
            kill.taken_by[name] = pid


def pid_runs(report: dict[str, Any]) -> tuple[int, int]:
    """Runs of consecutive requests from one process (by arrival), and requests whose
    sender could not be identified."""
    ordered = sorted(zip((r[0] for r in report["requests"]), report["peers"], strict=True),
                     key=lambda pair: pair[0])
    runs, previous, unknown = 0, None, 0
    for _at, pid in ordered:
        if pid is None:
            unknown += 1
            continue
        if pid != previous:
            runs += 1
            previous = pid
    return runs, unknown


def final_fills(reports: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    """(connection, order id) → the filled quantity after the last move."""
    final: dict[tuple[str, str], Decimal] = {}
    for index, report in enumerate(reports):
        for _at, order_id, filled in report["changes"]:
            key = (f"c{index}", str(order_id))
            final[key] = max(final.get(key, Decimal(0)), Decimal(filled))
    return final


def delivered_fills(receiver: Receiver) -> dict[tuple[str, str], Decimal]:
    """(connection, order id) → the most filled quantity any delivered event carried."""
    with receiver.lock:
        events = [r.event for r in receiver.events]
    seen: dict[tuple[str, str], Decimal] = {}
    for event in events:
        payload = event.get("payload", {})
        if event.get("event_type") != "TRADE":
            continue
        key = (str(payload.get("broker", "")), str(payload.get("order_id", "")))
        seen[key] = max(seen.get(key, Decimal(0)), Decimal(payload.get("filled_qty") or 0))
    return seen


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Rows as aligned text: the first column to the left, the others to the right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in cells]


def run(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The whole benchmark; printable lines and the figures for the JSON line."""
    names = [f"c{i}" for i in range(args.connections)]
    instances: list[Instance] = []
    kills: list[Kill] = []
    lines: list[str] = []
    with running_server() as server:
        url = server.database()
        sims = Sims("shioaji", count=args.connections, orders=args.orders,
                    latency=args.latency_ms, identify_peers=True)
        receiver = Receiver()
        brokers = {name: sims.config(i) for i, name in enumerate(names)}
        interval = float(brokers[names[0]].get("interval", 1.0))
        settings = {"database": url, "lease_seconds": args.lease, "log_level": "WARNING"}
        bound = args.lease + args.lease / 3 + interval
        spread_timeout = 4 * args.lease + 60
        started = time.monotonic()

        def launch() -> Instance:
            daemon = Daemon(brokers, receiver.url, daemon=dict(settings))
            daemon.start()
            instance = Instance(len(instances) + 1, daemon)
            instance.cpu0 = daemon.cpu_seconds()
            instances.append(instance)
            return instance

        def alive() -> set[int]:
            return {i.pid for i in instances if not i.killed}

        try:
            for _ in range(args.instances):
                launch()
            wait_until(lambda: baselined(url, args.connections), 120 + 10 * args.lease,
                       "every connection's baseline")
            for i in range(args.connections):
                sims.control(i, "start", every=args.change_every, seed=i + 1)
            moving = time.monotonic()
            for number in range(args.kills):
                wait_stable(url, names, alive, args.lease, spread_timeout)
                time.sleep(max(0.0, args.duration_per_kill
                               - (time.monotonic() - moving)))  # the run itself
                spread = read_leases(url).by_pid()
                pid = max(sorted(spread), key=lambda p: len(spread[p]))
                victim = next(i for i in instances if i.pid == pid)
                victim.read()
                kill = Kill(time.monotonic(), pid, spread[pid])
                assert victim.daemon.proc is not None
                victim.daemon.proc.kill()
                victim.daemon.proc.wait(timeout=30)
                victim.killed = True
                kills.append(kill)
                print(f"kill {number + 1}: instance {victim.number} (pid {pid}) held "
                      f"{len(kill.connections)}: {' '.join(kill.connections)}", flush=True)
                launch()
                moving = time.monotonic()
            wait_stable(url, names, alive, args.lease, spread_timeout)
            time.sleep(max(0.0, args.duration_per_kill - (time.monotonic() - moving)))
            for i in range(args.connections):
                sims.control(i, "stop")
            stopped = time.monotonic()
            reports = [sims.control(i, "report") for i in range(args.connections)]
            final = final_fills(reports)

            def drained() -> bool:
                seen = delivered_fills(receiver)
                return (all(seen.get(k, Decimal(-1)) >= v for k, v in final.items())
                        and pending_outbox(url) == 0)
            try:
                wait_until(drained, args.drain + 2 * args.lease, "the last deliveries")
            except RuntimeError as err:
                lines.append(f"  (not drained: {err})")
            drain = time.monotonic() - stopped
            # Requests after the stop count too (the report is taken again).
            reports = [sims.control(i, "report") for i in range(args.connections)]
            holding = read_leases(url)
            outbox = pending_outbox(url)
            for instance in instances:
                if not instance.killed:
                    instance.read()
        finally:
            for instance in instances:
                instance.daemon.stop()
            receiver.close()
            sims.close()
    ended = time.monotonic()
    return summarise(args, names, instances, kills, reports, receiver, final, holding,
                     outbox, bound, interval, drain, ended - started, lines)


def summarise(args: argparse.Namespace, names: list[str], instances: list[Instance],
              kills: list[Kill], reports: list[dict[str, Any]], receiver: Receiver,
              final: dict[tuple[str, str], Decimal], holding: Holding, outbox: int,
              bound: float, interval: float, drain: float, took: float,
              lines: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Work the figures out of the readings; printable lines and the JSON figures."""
    for kill in kills:
        takeovers(kill, reports)
    times = [t for kill in kills for t in kill.takeover.values()]
    never = sum(len(k.connections) - len(k.takeover) for k in kills)
    spread = holding.by_pid()
    live = [i for i in instances if not i.killed]
    target = math.ceil(len(names) / max(1, len(live)))
    # The simulators' documented windows: most arrivals seen in any one vs its count.
    worst: dict[str, list[Any]] = {}
    for report in reports:
        for group, (max_seen, count, window, _violations) in report["windows"].items():
            if group not in worst or max_seen > worst[group][0]:
                worst[group] = [max_seen, count, window]
    violations = sum(int(r["violations"]) for r in reports)
    runs = {name: pid_runs(reports[i]) for i, name in enumerate(names)}
    epochs = {name: holding.rows.get(name, (None, 0, False))[1] for name in names}
    concurrent = sorted(n for n in names if runs[n][0] > epochs[n])
    unknown = sum(u for _r, u in runs.values())
    with receiver.lock:
        events = [r.event for r in receiver.events]
    ids = Counter(str(e.get("id")) for e in events)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    seen = delivered_fills(receiver)
    lost = sorted(f"{b}/{o}" for (b, o), v in final.items()
                  if seen.get((b, o), Decimal(-1)) < v)
    reannounced = sum(1 for e in events if e.get("event_type") == "TRADE"
                      and (str(e["payload"].get("broker")), str(e["payload"].get("order_id")))
                      not in final)
    median = statistics.median(times) if times else 0.0
    worst_takeover = max(times, default=0.0)

    rows = []
    for instance in instances:
        held = len(spread.get(instance.pid, []))
        rows.append([f"#{instance.number}", instance.pid,
                     "killed" if instance.killed else "alive",
                     "-" if instance.killed else held, f"{instance.cpu_percent:.1f}",
                     f"{instance.rss_mb:.0f}"])
    out = [f"Shioaji cluster: {args.instances} instances × {len(names)} connections "
           f"({args.orders} open orders each, answers delayed {args.latency_ms} ms, one fill "
           f"every {args.change_every:g} s per connection), lease {args.lease:g} s, "
           f"{len(kills)} kills, {took:.0f} s in all", *lines]
    out += table(["instance", "pid", "state", "connections", "CPU % of a core",
                  "peak RSS MB"], rows)
    out.append(f"  spread at the end: {sorted((len(v) for v in spread.values()), reverse=True)}"
               f" over {len(live)} instances (⌈C/I⌉ = {target}); "
               f"{sum(len(v) for v in spread.values())}/{len(names)} connections held")
    kill_rows = [[f"kill {n + 1}", k.pid, len(k.connections),
                  f"{statistics.median(k.takeover.values()):.2f}" if k.takeover else "-",
                  f"{max(k.takeover.values()):.2f}" if k.takeover else "-",
                  len(k.connections) - len(k.takeover)] for n, k in enumerate(kills)]
    if kill_rows:
        out += table(["", "pid", "connections", "take-over median s", "max s", "never"],
                     kill_rows)
    out.append(f"  take-over: median {median:.2f} s, max {worst_takeover:.2f} s over "
               f"{len(times)} connections ({never} never polled again); bound lease + "
               f"lease/3 + one round = {args.lease:g} + {args.lease / 3:.2f} + {interval:g} = "
               f"{bound:.2f} s")
    windows = "; ".join(f"{g}: {v[0]} in any {v[2]:g} s (documented {v[1]})"
                        for g, v in sorted(worst.items()))
    out.append(f"  at the simulators: {violations} violations; most arrivals {windows}")
    out.append(f"  concurrent polling: {len(concurrent)} connections with more runs of one "
               f"sender than lease epochs ({sum(r for r, _u in runs.values())} runs, "
               f"{sum(epochs.values())} epochs; {unknown} requests of unknown sender)"
               + (f": {' '.join(concurrent)}" if concurrent else ""))
    out.append(f"  events: {len(events)} delivered, {duplicates} duplicates, {len(lost)} lost "
               f"of {len(final)} moved orders, {reannounced} about orders that never moved; "
               f"outbox pending {outbox}; drained {drain:.1f} s after the movers stopped"
               + (f"; lost: {' '.join(lost[:10])}" if lost else ""))
    figures: dict[str, Any] = {
        "instances": args.instances, "connections": len(names), "kills": len(kills),
        "lease_seconds": args.lease, "latency_ms": args.latency_ms,
        "per_instance": [{"number": i.number, "pid": i.pid, "killed": i.killed,
                          "connections": None if i.killed else len(spread.get(i.pid, [])),
                          "cpu_percent": round(i.cpu_percent, 2),
                          "peak_rss_mb": round(i.rss_mb, 1)} for i in instances],
        "spread": sorted((len(v) for v in spread.values()), reverse=True),
        "spread_target": target,
        "takeover_median_s": round(median, 3), "takeover_max_s": round(worst_takeover, 3),
        "takeover_bound_s": round(bound, 3), "takeovers": len(times), "never_taken": never,
        "violations": violations,
        "windows": {g: {"max_seen": v[0], "count": v[1], "window_s": v[2]}
                    for g, v in sorted(worst.items())},
        "concurrent_connections": concurrent,
        "pid_runs": sum(r for r, _u in runs.values()), "epochs": sum(epochs.values()),
        "events": len(events), "duplicates": duplicates, "lost": len(lost),
        "moved_orders": len(final), "reannounced": reannounced, "outbox_pending": outbox,
    }
    return out, figures


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--lease", type=float, default=10.0, help="daemon.lease_seconds")
    parser.add_argument("--latency-ms", default="0-300", help="answer delay range at the sims")
    parser.add_argument("--orders", type=int, default=20, help="open orders per connection")
    parser.add_argument("--duration-per-kill", type=float, default=20.0,
                        help="seconds at least from the movers' start or a kill to the next "
                             "kill (and after the last)")
    parser.add_argument("--change-every", type=float, default=1.0,
                        help="seconds between two fills at one simulator")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds at most for the last deliveries after the movers stop")
    args = parser.parse_args(argv)
    lines, figures = run(args)
    print("\n".join(lines), flush=True)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()

"""The commands that show the database to a person (or to ``jq``): ``poller orders``,
``poller events`` and ``poller actions``. They read a running daemon's database safely (the
store waits a bounded time for a lock and never moves anything aside)."""

from __future__ import annotations

import argparse
import json

from poller.api import action_json
from poller.clicommon import (
    EX_FAIL,
    EX_OK,
    known,
    number,
    print_table,
    settings_of,
)
from poller.statestore import open_configured
from poller.timetext import shown_time


def cmd_orders(args: argparse.Namespace) -> int:
    """``poller orders``: the tracked orders and their last known state."""
    settings = settings_of(args)
    broker = None if args.broker is None else known("connection", args.broker,
                                                    settings.brokers)
    store = open_configured(settings.daemon)
    try:
        rows = store.list_orders(broker, include_final=not args.open)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps(row.snapshot.to_json()))
        return EX_OK
    table = [("BROKER", "ACCOUNT", "ORDER", "SYMBOL", "SIDE", "QTY", "PRICE", "FILLED",
              "STATUS", "CHANGED")]
    for row in rows:
        s = row.snapshot
        status = s.status.value
        if s.provisional:
            status += " (provisional: may still change)"
        if row.stale:
            status += " (stale)"
        table.append((s.broker, s.account_id, s.order_id, s.symbol, s.side, number(s.qty),
                      number(s.price), number(s.filled_qty), status,
                      shown_time(row.last_changed, utc=args.utc)))
    print_table(table)
    if not rows:
        print("no tracked orders")
    return EX_OK


def cmd_events(args: argparse.Namespace) -> int:
    """``poller events``: recent events with their delivery state, or ``--requeue``."""
    settings = settings_of(args)
    broker = None if args.broker is None else known("connection", args.broker,
                                                    settings.brokers)
    if args.requeue not in (None, "*"):
        known("notifier", args.requeue, settings.notifiers)
    store = open_configured(settings.daemon)
    try:
        if args.requeue:
            count = store.requeue_dead(None if args.requeue == "*" else args.requeue)
            print(f"re-queued {count} dead-lettered deliveries")
            return EX_OK
        rows = store.recent_events(args.limit, broker=broker)
    finally:
        store.close()
    if args.json:
        for event, deliveries in rows:
            data = event.to_json()
            data["deliveries"] = [d.__dict__ for d in deliveries]
            print(json.dumps(data, ensure_ascii=False))
        return EX_OK
    table = [("TIME", "ID", "BROKER", "ORDER", "SCENE", "STATUS", "DELIVERY")]
    for event, deliveries in rows:
        p = event.payload
        delivery = ", ".join(
            f"{d.notifier}:{d.state}" + (f"({d.attempts})" if d.attempts > 1 else "")
            + (f" [{d.last_error[:60]}]" if d.last_error and d.state != "sent" else "")
            for d in deliveries) or "-"
        table.append((shown_time(p.get("detected_at"), utc=args.utc), event.short_id,
                      event.broker or "-", event.order_id or "-", event.scene,
                      p.get("order_status") or "-", delivery))
    print_table(table)
    if not rows:
        print("no events yet")
    return EX_OK


def cmd_actions(args: argparse.Namespace) -> int:
    """``poller actions``: queued (and with ``--all`` finished) replaces and cancels;
    ``--drop ID`` takes back one that was not sent yet."""
    settings = settings_of(args)
    store = open_configured(settings.daemon)
    try:
        if args.drop is not None:
            dropped = store.drop_action(args.drop, reason="dropped with `poller actions "
                                                         "--drop` before it was sent")
            row = store.action(args.drop)
            if dropped:
                print(f"action {args.drop} dropped; it will not be sent")
                return EX_OK
            state = "no such action" if row is None else f"it is {row.state}"
            print(f"action {args.drop} cannot be dropped: {state} (only queued ones can)")
            return EX_FAIL
        rows = store.list_actions(include_done=args.all, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps(action_json(row)))
        return EX_OK
    table = [("ID", "QUEUED", "BROKER", "ORDER", "ACTION", "STATE", "OUTCOME", "MESSAGE")]
    for row in rows:
        change = " ".join(part for part in (f"qty {row.qty}" if row.qty else "",
                                            f"price {row.price}" if row.price else "") if part)
        table.append((str(row.id), shown_time(row.created_at, utc=args.utc), row.broker,
                      row.order_id, f"{row.kind} {change}".strip(), row.state,
                      row.outcome or "-", row.message[:70] or "-"))
    print_table(table)
    if not rows:
        print("no queued actions" if not args.all else "no actions")
    return EX_OK

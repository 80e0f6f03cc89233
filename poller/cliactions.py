"""The commands that change something: ``replace`` / ``cancel`` (queued for the daemon),
``watch`` / ``unwatch``, and ``test-notify`` (a sample event through the real notifiers)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from poller.actionqueue import ActionRefused, submit
from poller.clicommon import (
    EX_FAIL,
    EX_OK,
    EX_TEMPFAIL,
    UsageError,
    known,
    loaded_of,
    settings_of,
)
from poller.compose import Validated, build_notifier
from poller.errors import DeliveryFailed, PollerError
from poller.events import OrderEvent
from poller.logsetup import Redactor, setup_logging
from poller.samples import sample_event
from poller.settings import Settings
from poller.statestore import open_configured, secret_text


def cmd_action(args: argparse.Namespace) -> int:
    """``poller replace`` / ``poller cancel``."""
    loaded = loaded_of(args)
    brokers = loaded.validated.brokers
    cls = brokers[known("connection", args.broker, brokers)][0]
    kind = args.command
    supported = cls.supports_replace if kind == "replace" else cls.supports_cancel
    if not supported:
        raise UsageError(f"{cls.kind} cannot {kind} orders through its API"
                         + ("; cancel it and place a new one" if kind == "replace" else ""))
    try:
        row = submit(loaded.settings.daemon.database, args.broker, args.order_id, kind,
                     account_id=args.account, qty=getattr(args, "qty", None),
                     price=getattr(args, "price", None), wait=not args.no_wait,
                     timeout=args.timeout, password=secret_text(
                         loaded.settings.daemon.database_password))
    except ActionRefused as err:
        raise UsageError(str(err)) from None
    what = f"{kind} of {args.broker} order {args.order_id}"
    if args.no_wait:
        print(f"{what}: queued as action {row.id} (`poller actions` shows it; it expires "
              f"unsent after {loaded.settings.daemon.action_expiry:g} s)")
        return EX_OK
    if not row.done:
        print(f"{what}: no outcome within {args.timeout:g} s (action {row.id} is {row.state}; "
              "is `poller run` running? `poller actions --drop "
              f"{row.id}` takes it back)")
        return EX_TEMPFAIL
    if row.state == "succeeded":
        print(f"{what}: {row.outcome or 'done'} — {row.message}")
        return EX_OK
    print(f"{what}: {row.outcome or 'refused'} — {row.message}")
    return EX_FAIL


def cmd_watch(args: argparse.Namespace) -> int:
    """``poller watch``."""
    loaded = loaded_of(args)
    brokers = loaded.validated.brokers
    cls = brokers[known("connection", args.broker, brokers)][0]
    if not cls.supports_fetch:
        raise UsageError(f"{cls.kind} has no per-order call; every order of a "
                         "configured account is already listed")
    account = args.account or _only_account(loaded.settings, args.broker)
    store = open_configured(loaded.settings.daemon)
    try:
        added = store.watch(args.broker, account, args.order_id)
    finally:
        store.close()
    print(("watching " if added else "already watching ") + f"{args.broker} {args.order_id}")
    return EX_OK


def cmd_unwatch(args: argparse.Namespace) -> int:
    """``poller unwatch``."""
    settings = settings_of(args)
    known("connection", args.broker, settings.brokers)
    store = open_configured(settings.daemon)
    try:
        removed = store.unwatch(args.broker, args.order_id)
    finally:
        store.close()
    print(("stopped watching " if removed else "was not watching ")
          + f"{args.broker} {args.order_id}")
    return EX_OK if removed else EX_FAIL


def _only_account(settings: Settings, broker: str) -> str:
    table = settings.brokers[broker]
    accounts = table.get("accounts") or []
    ids = [a.get("account_id", "") for a in accounts if isinstance(a, dict)]
    ids += [str(a) for a in table.get("account_ids") or [] if isinstance(a, str | int)]
    if len(ids) == 1:
        return str(ids[0])
    account = settings.brokers[broker].get("account_id")
    if account:
        return str(account)
    if not ids:
        return ""
    raise UsageError(f"{broker} has several accounts; name one with --account")


def cmd_test_notify(args: argparse.Namespace) -> int:
    """``poller test-notify``."""
    loaded = loaded_of(args)
    validated = loaded.validated
    if args.name is not None:
        known("notifier", args.name, validated.notifiers)
    broker, kind = next(((n, c.kind) for n, (c, _) in validated.brokers.items()),
                        ("tw-main", "shioaji"))
    event = sample_event(args.scene, broker=broker, broker_kind=kind, test=True)
    setup_logging(level="WARNING", redactor=Redactor(validated.secrets()))
    names = [args.name] if args.name else list(validated.notifiers)
    if not names:
        print("no notifiers configured: nothing to send to", file=sys.stderr)
        return EX_FAIL
    return asyncio.run(_test_notify(validated, names, event, args.dry_run))


async def _test_notify(validated: Validated, names: list[str], event: OrderEvent,
                       dry_run: bool) -> int:
    redactor = Redactor(validated.secrets())
    failures = 0
    for name in names:
        cls, cfg = validated.notifiers[name]
        notifier = build_notifier(name, cls, cfg) if not dry_run else cls(name, cfg, None)
        try:
            wanted = notifier.accepts(event)
            if dry_run:
                verdict = "would receive" if wanted else "would NOT receive (routing)"
                print(f"{name} ({cls.kind}): {verdict} {event.scene} {event.short_id}")
                for line in redactor(notifier.preview(event)).splitlines():
                    print(f"    {line}")
                continue
            if not wanted:
                print(f"{name} ({cls.kind}): note: its routing would not send {event.scene}; "
                      "sending anyway")
            try:
                await notifier.send(event)
            except PollerError as err:
                failures += 1
                verdict = "refused" if isinstance(err, DeliveryFailed) else "failed (retryable)"
                print(f"{name} ({cls.kind}): {verdict}: {redactor(str(err))}")
            else:
                print(f"{name} ({cls.kind}): delivered {event.scene} {event.short_id} "
                      "(marked as a test)")
        finally:
            await notifier.aclose()
    return EX_FAIL if failures else EX_OK

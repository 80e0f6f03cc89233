"""The ``poller`` command line.

Exit codes: 0 success, 2 bad arguments, 78 bad configuration (EX_CONFIG; systemd is told not
to restart on it), 74 the database cannot be used (EX_IOERR), 75 an order action got no
outcome in time (EX_TEMPFAIL), 1 anything else (e.g. an action the broker refused).

Over 400 lines: one short handler per command beside the one argument parser that names
them all, so a command's flags and its behaviour are read together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from poller import budgetplan
from poller.__about__ import __version__
from poller.app import App
from poller.compose import Validated, build_budget, load
from poller.errors import ConfigError, DeliveryFailed, PollerError, StoreError
from poller.logsetup import Redactor, setup_logging
from poller.plugins import Plugins, get_plugin_manager
from poller.settings import Settings, config_path, load_settings
from poller.store import Store

logger = logging.getLogger("poller")

EX_OK, EX_FAIL, EX_USAGE, EX_IOERR, EX_TEMPFAIL, EX_CONFIG = 0, 1, 2, 74, 75, 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller", description="Watch orders at several brokers and notify once per change."
    )
    parser.add_argument("--version", action="version", version=f"poller {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("-c", "--config", metavar="PATH",
                           help="config file (default: $POLLER_CONFIG, else "
                                "/etc/poller/config.toml)")
        return p

    run = command("run", "run the daemon in the foreground")
    run.add_argument("--log-format", choices=("text", "json"), help="override daemon.log_format")
    run.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    demo = command("demo", "run against built-in broker simulators (no setup)", config=False)
    demo.add_argument("--duration", type=float, metavar="SECONDS",
                      help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--seed", type=int, help="seed the simulators' random lifecycles")
    demo.add_argument("--brokers", metavar="KINDS",
                      help="comma-separated simulator kinds (default: all)")
    demo.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                      default="WARNING")
    command("check-config", "validate the config and summarise brokers and notifiers")
    orders = command("orders", "list tracked orders")
    orders.add_argument("--broker", help="only this connection")
    orders.add_argument("--open", action="store_true", help="only orders that can still change")
    orders.add_argument("--json", action="store_true", help="JSON lines")
    events = command("events", "recent events and their delivery state")
    events.add_argument("--limit", type=int, default=30, help="how many (default 30)")
    events.add_argument("--broker", help="only this connection")
    events.add_argument("--json", action="store_true", help="event JSON, one per line")
    events.add_argument("--requeue", metavar="NOTIFIER", nargs="?", const="*",
                        help="re-queue dead-lettered deliveries (of one notifier, or all)")
    command("plugins", "list loaded plugins and registered broker/notifier kinds")
    test = command("test-notify", "send a realistic sample event through the real notifiers")
    test.add_argument("name", nargs="?", help="only this notifier ([notifiers.NAME])")
    test.add_argument("--scene", default="FINAL_FILLED",
                      help="scene of the sample event (default FINAL_FILLED; SYSTEM for an "
                           "operator event)")
    test.add_argument("--dry-run", action="store_true",
                      help="print who would receive it and the rendered text; send nothing")
    watch = command("watch", "track an order id that no list call discovers")
    watch.add_argument("broker", help="connection name ([brokers.NAME])")
    watch.add_argument("order_id")
    watch.add_argument("--account", default="", help="account id (default: the only one)")
    for name, text in (("replace", "change an order's quantity and/or price through the "
                                   "daemon (within the broker's limits)"),
                       ("cancel", "cancel an order through the daemon")):
        action = command(name, text)
        action.add_argument("broker", help="connection name ([brokers.NAME])")
        action.add_argument("order_id")
        if name == "replace":
            action.add_argument("--qty", help="new total quantity")
            action.add_argument("--price", help="new limit price")
        action.add_argument("--account", default="", help="account id (when ambiguous)")
        action.add_argument("--no-wait", action="store_true",
                            help="queue it and return at once")
        action.add_argument("--timeout", type=float, default=60.0,
                            help="seconds to wait for the outcome (default 60)")
    unwatch = command("unwatch", "stop tracking a watched order id")
    unwatch.add_argument("broker")
    unwatch.add_argument("order_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as err:
        for problem in err.problems:
            print(f"poller: {problem}", file=sys.stderr)
        return EX_CONFIG
    except StoreError as err:
        print(f"poller: {err}", file=sys.stderr)
        return EX_IOERR
    except PollerError as err:
        print(f"poller: {err}", file=sys.stderr)
        return EX_FAIL
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace) -> tuple[str, Settings]:
    path = config_path(getattr(args, "config", None))
    return str(path), load_settings(path)


def _load(args: argparse.Namespace) -> tuple[Settings, Plugins, Validated]:
    loaded = load(config_path(getattr(args, "config", None)))
    return loaded.settings, loaded.plugins, loaded.validated


def cmd_run(args: argparse.Namespace) -> int:
    """``poller run``."""
    from poller.daemon import serve

    path = config_path(args.config)
    loaded = load(path)
    settings, validated = loaded.settings, loaded.validated
    redactor = setup_logging(level=args.log_level or settings.daemon.log_level,
                             fmt=args.log_format or settings.daemon.log_format,
                             redactor=Redactor(validated.secrets()))
    store = Store.open(settings.daemon.database, lock=True,
                       max_mb=settings.daemon.max_database_mb)
    try:
        app = App.create(settings, loaded.plugins, validated, redactor=redactor, store=store)
        lifecycle = asyncio.run(serve(app, reloader=lambda: load(path)))
    finally:
        store.close()
    return lifecycle.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    """``poller demo``."""
    from poller.demo import run_demo
    from poller.simulator.catalog import SIMULATORS

    kinds = list(SIMULATORS) if not args.brokers else [
        k.strip() for k in args.brokers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SIMULATORS]
    if unknown:
        print(f"poller: demo --brokers: unknown kind(s) {', '.join(unknown)} "
              f"(known: {', '.join(SIMULATORS)})", file=sys.stderr)
        return EX_USAGE
    if args.duration is not None and args.duration <= 0:
        print("poller: demo --duration: must be positive", file=sys.stderr)
        return EX_USAGE
    redactor = setup_logging(level=args.log_level)
    asyncio.run(run_demo(duration=args.duration, seed=args.seed, kinds=kinds,
                         redactor=redactor))
    return EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """``poller check-config``."""
    settings, plugins, validated = _load(args)
    print(f"configuration OK: {len(validated.brokers)} broker connection(s), "
          f"{len(validated.notifiers)} notifier(s)")
    print(f"database: {settings.daemon.database}")
    open_orders = _open_orders(settings)
    for name, (cls, cfg) in validated.brokers.items():
        state = "" if cfg.enabled else " (disabled)"
        print(f"broker {name}: {cls.kind} at {cfg.base_url}, list every {cfg.interval:g} s"
              f"{state}")
        budget = build_budget(cls, cfg)
        for line in budgetplan.describe(cls, cfg, budgetplan.plan(cls, cfg, budget),
                                        open_orders.get(name)):
            print(line)
    for name, (ncls, ncfg) in validated.notifiers.items():
        routes = []
        if ncfg.scenes:
            routes.append("scenes " + ",".join(ncfg.scenes))
        if ncfg.brokers:
            routes.append("brokers " + ",".join(ncfg.brokers))
        if ncfg.event_types:
            routes.append("types " + ",".join(ncfg.event_types))
        print(f"notifier {name}: {ncls.kind}" + (f" ({'; '.join(routes)})" if routes else ""))
    return EX_OK


def _open_orders(settings: Settings) -> dict[str, int]:
    """Open orders per connection from an existing database (none when there is none)."""
    if not settings.daemon.database.exists():
        return {}
    try:
        store = Store.open(settings.daemon.database)
    except StoreError:
        return {}
    try:
        counts: dict[str, int] = {}
        for row in store.list_orders(include_final=False):
            counts[row.snapshot.broker] = counts.get(row.snapshot.broker, 0) + 1
        return counts
    finally:
        store.close()


def cmd_orders(args: argparse.Namespace) -> int:
    """``poller orders``."""
    _, settings = _settings(args)
    store = Store.open(settings.daemon.database)
    try:
        rows = store.list_orders(args.broker, include_final=not args.open)
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
        status = s.status.value + (" (stale)" if row.stale else "")
        table.append((s.broker, s.account_id, s.order_id, s.symbol, s.side, _d(s.qty),
                      _d(s.price), _d(s.filled_qty), status, row.last_changed[:19]))
    _print_table(table)
    if not rows:
        print("no tracked orders")
    return EX_OK


def cmd_events(args: argparse.Namespace) -> int:
    """``poller events``."""
    _, settings = _settings(args)
    store = Store.open(settings.daemon.database)
    try:
        if args.requeue:
            count = store.requeue_dead(None if args.requeue == "*" else args.requeue)
            print(f"re-queued {count} dead-lettered deliveries")
            return EX_OK
        rows = store.recent_events(args.limit, broker=args.broker)
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
        table.append(((p.get("detected_at") or "")[:19], event.short_id, event.broker or "-",
                      event.order_id or "-", event.scene, p.get("order_status") or "-",
                      delivery))
    _print_table(table)
    if not rows:
        print("no events yet")
    return EX_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    """``poller plugins``."""
    try:
        _, settings = _settings(args)
        names, dirs = settings.daemon.plugins, settings.daemon.plugins_dirs
    except ConfigError:
        if getattr(args, "config", None):
            raise
        names, dirs = [], []
    plugins = get_plugin_manager(entry_point_names=names, plugin_dirs=dirs)
    registry = plugins.registry()
    for info in plugins.infos:
        print(f"{info.name}  [{info.source}, {info.version}]  hooks: {', '.join(info.hooks)}")
    print("broker kinds: " + ", ".join(sorted(registry.brokers)))
    print("notifier kinds: " + ", ".join(sorted(registry.notifiers)))
    return EX_OK


def cmd_test_notify(args: argparse.Namespace) -> int:
    """``poller test-notify``."""
    from poller.samples import SCENES, sample_event

    settings, _, validated = _load(args)
    if args.scene not in SCENES:
        print(f"poller: test-notify --scene: unknown scene {args.scene!r} "
              f"(known: {', '.join(SCENES)})", file=sys.stderr)
        return EX_USAGE
    if args.name and args.name not in validated.notifiers:
        known = ", ".join(validated.notifiers) or "none"
        print(f"poller: test-notify: no notifier {args.name!r} (known: {known})",
              file=sys.stderr)
        return EX_USAGE
    broker, kind = next(((n, c.kind) for n, (c, _) in validated.brokers.items()),
                        ("tw-main", "shioaji"))
    event = sample_event(args.scene, broker=broker, broker_kind=kind)
    setup_logging(level="WARNING", redactor=Redactor(validated.secrets()))
    names = [args.name] if args.name else list(validated.notifiers)
    return asyncio.run(_test_notify(validated, names, event, args.dry_run))


async def _test_notify(validated: Validated, names: list[str], event: Any,
                       dry_run: bool) -> int:
    from poller.httpclient import build_client

    redactor = Redactor(validated.secrets())
    failures = 0
    for name in names:
        cls, cfg = validated.notifiers[name]
        client = build_client("", timeout=cfg.timeout) if cls.uses_http and not dry_run else None
        notifier = cls(name, cfg, client)
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
                kind = "refused" if isinstance(err, DeliveryFailed) else "failed (retryable)"
                print(f"{name} ({cls.kind}): {kind}: {redactor(str(err))}")
            else:
                print(f"{name} ({cls.kind}): delivered {event.scene} {event.short_id}")
        finally:
            await notifier.aclose()
    return EX_FAIL if failures else EX_OK


def cmd_action(args: argparse.Namespace) -> int:
    """``poller replace`` / ``poller cancel``."""
    from poller.actionqueue import ActionRefused, submit

    settings, _, validated = _load(args)
    if args.broker not in validated.brokers:
        raise ConfigError([_problem(args.broker, validated)])
    cls = validated.brokers[args.broker][0]
    kind = args.command
    qty, price = getattr(args, "qty", None), getattr(args, "price", None)
    supported = cls.supports_replace if kind == "replace" else cls.supports_cancel
    if not supported:
        print(f"poller: {kind}: {cls.kind} cannot {kind} orders through its API"
              + ("; cancel it and place a new one" if kind == "replace" else ""),
              file=sys.stderr)
        return EX_USAGE
    if args.timeout <= 0:
        print(f"poller: {kind} --timeout: must be positive", file=sys.stderr)
        return EX_USAGE
    try:
        row = submit(settings.daemon.database, args.broker, args.order_id, kind,
                     account_id=args.account, qty=qty, price=price, wait=not args.no_wait,
                     timeout=args.timeout)
    except ActionRefused as err:
        print(f"poller: {kind}: {err}", file=sys.stderr)
        return EX_USAGE
    what = f"{kind} of {args.broker} order {args.order_id}"
    if args.no_wait:
        print(f"{what}: queued as action {row.id}")
        return EX_OK
    if not row.done:
        print(f"{what}: no outcome within {args.timeout:g} s (action {row.id} is {row.state}; "
              "is `poller run` running?)")
        return EX_TEMPFAIL
    if row.state == "succeeded":
        print(f"{what}: {row.outcome or 'done'} — {row.message}")
        return EX_OK
    print(f"{what}: {row.outcome or 'refused'} — {row.message}")
    return EX_FAIL


def cmd_watch(args: argparse.Namespace) -> int:
    """``poller watch``."""
    settings, _, validated = _load(args)
    if args.broker not in validated.brokers:
        raise ConfigError([_problem(args.broker, validated)])
    cls = validated.brokers[args.broker][0]
    if not cls.supports_fetch:
        print(f"poller: watch: {cls.kind} has no per-order call; every order of a configured "
              "account is already listed", file=sys.stderr)
        return EX_USAGE
    account = args.account or _only_account(settings, args.broker)
    store = Store.open(settings.daemon.database)
    try:
        added = store.watch(args.broker, account, args.order_id)
    finally:
        store.close()
    print(("watching " if added else "already watching ") + f"{args.broker} {args.order_id}")
    return EX_OK


def cmd_unwatch(args: argparse.Namespace) -> int:
    """``poller unwatch``."""
    _, settings = _settings(args)
    store = Store.open(settings.daemon.database)
    try:
        removed = store.unwatch(args.broker, args.order_id)
    finally:
        store.close()
    print(("stopped watching " if removed else "was not watching ")
          + f"{args.broker} {args.order_id}")
    return EX_OK if removed else EX_FAIL


def _problem(broker: str, validated: Validated) -> Any:
    from poller.errors import ConfigProblem

    known = ", ".join(validated.brokers) or "none"
    return ConfigProblem("arguments", "broker", f"no connection {broker!r} (known: {known})")


def _only_account(settings: Settings, broker: str) -> str:
    accounts = settings.brokers[broker].get("accounts") or []
    ids = [a.get("account_id", "") for a in accounts if isinstance(a, dict)]
    if len(ids) == 1:
        return str(ids[0])
    account = settings.brokers[broker].get("account_id")
    if account:
        return str(account)
    if not ids:
        return ""
    from poller.errors import ConfigProblem

    raise ConfigError([ConfigProblem("arguments", "--account",
                                     f"{broker} has several accounts; name one with --account")])


def _d(value: Any) -> str:
    from poller.models import decimal_text

    return decimal_text(value) or "-" if value is not None else "-"


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "demo": cmd_demo,
    "check-config": cmd_check_config,
    "orders": cmd_orders,
    "events": cmd_events,
    "plugins": cmd_plugins,
    "test-notify": cmd_test_notify,
    "replace": cmd_action,
    "cancel": cmd_action,
    "watch": cmd_watch,
    "unwatch": cmd_unwatch,
}



"""The ``poller`` command line: the parser, exit codes, and the daemon-side commands.

Exit codes: 0 success, 1 a refusal (an action the broker refused, a test send that failed),
2 bad arguments (an unknown connection or notifier, a bad number), 74 the database cannot be
used (EX_IOERR), 75 an order action got no outcome in time (EX_TEMPFAIL), 78 bad
configuration (EX_CONFIG; systemd is told not to restart on it). The commands that read the
database live in :mod:`poller.clitables`, those that change something in
:mod:`poller.cliactions`. Output into a pipe that closes (``poller orders | head``) ends the
command quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from poller import budgetplan
from poller.__about__ import __version__
from poller.app import App
from poller.cliactions import cmd_action, cmd_test_notify, cmd_unwatch, cmd_watch
from poller.clicommon import (
    EX_CONFIG,
    EX_FAIL,
    EX_IOERR,
    EX_OK,
    EX_USAGE,
    UsageError,
    config_of,
    database_argument,
    order_id,
    positive_float,
    positive_int,
    settings_of,
)
from poller.clitables import cmd_actions, cmd_events, cmd_orders
from poller.compose import build_budget, exposed_secrets, load
from poller.databaseurl import DatabaseUrl
from poller.errors import ConfigError, PollerError, StoreError
from poller.logsetup import Redactor, setup_logging
from poller.plugins import get_plugin_manager
from poller.samples import SCENES
from poller.settings import Settings
from poller.statestore import open_configured, store_exists
from poller.statusreport import add_arguments as add_status_arguments
from poller.statusreport import cmd_status

logger = logging.getLogger("poller")

EXAMPLES = {
    "run": "poller run -c /etc/poller/config.toml\n"
           "poller run --log-format json --log-level DEBUG",
    "demo": "poller demo --duration 30\n"
            "poller demo --brokers shioaji,coinw --seed 7 --keep-db /tmp/demo.db\n"
            "poller orders --database /tmp/demo.db   # explore it afterwards",
    "check-config": "poller check-config -c /etc/poller/config.toml",
    "orders": "poller orders --open\npoller orders --broker tw-main --json | jq .status",
    "events": "poller events --limit 10 --utc\npoller events --requeue hook   # after fixing it",
    "actions": "poller actions --all\npoller actions --drop 12",
    "status": "poller status\npoller status --watch 5\npoller status --json | jq .problems",
    "plugins": "poller plugins -c /etc/poller/config.toml",
    "test-notify": "poller test-notify --dry-run\npoller test-notify phone --scene FILLED",
    "watch": "poller watch us-webull 036LVV5P4I8BV0KHKN60000000",
    "unwatch": "poller unwatch us-webull 036LVV5P4I8BV0KHKN60000000",
    "replace": "poller replace us-webull 036LVV5P4I8BV0KHKN60000000 --price 101.0 --qty 600",
    "cancel": "poller cancel tw-main a647f23d --no-wait",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller", description="Watch orders at several brokers and notify once per "
                                   "change.",
        epilog="Run `poller COMMAND --help` for a command's flags and examples.")
    parser.add_argument("--version", action="version", version=f"poller {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog="examples:\n  " + EXAMPLES[name].replace("\n", "\n  "),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if config:
            p.add_argument("-c", "--config", metavar="PATH",
                           help="config file (default: $POLLER_CONFIG, else "
                                "/etc/poller/config.toml)")
        return p

    def utc(p: argparse.ArgumentParser) -> None:
        p.add_argument("--utc", action="store_true",
                       help="times in UTC (marked Z) instead of local time with its offset")
        p.add_argument("--database", type=database_argument, metavar="PATH",
                       help="read this database instead of daemon.database (e.g. one kept "
                            "by `poller demo --keep-db`; the config is then optional)")

    run = command("run", "run the daemon in the foreground")
    run.add_argument("--log-format", choices=("text", "json"), help="override daemon.log_format")
    run.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                     help="override daemon.log_level")
    demo = command("demo", "run against built-in broker simulators (no setup)", config=False)
    demo.add_argument("--duration", type=positive_float, metavar="SECONDS",
                      help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--seed", type=int, help="seed the simulators' random lifecycles")
    demo.add_argument("--brokers", metavar="KINDS",
                      help="comma-separated simulator kinds (default: all four: shioaji, "
                           "longport, webull, coinw)")
    demo.add_argument("--keep-db", type=Path, metavar="PATH",
                      help="keep the demo's database there, to explore with orders/events")
    demo.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                      default="WARNING", help="log level (default WARNING)")
    command("check-config", "validate the config and summarise brokers and notifiers")
    orders = command("orders", "list tracked orders")
    orders.add_argument("--broker", help="only this connection")
    orders.add_argument("--open", action="store_true", help="only orders that can still change")
    orders.add_argument("--json", action="store_true", help="JSON lines")
    utc(orders)
    events = command("events", "recent events and their delivery state")
    events.add_argument("--limit", type=positive_int, default=30,
                        help="how many (default 30)")
    events.add_argument("--broker", help="only this connection")
    events.add_argument("--json", action="store_true", help="event JSON, one per line")
    events.add_argument("--requeue", metavar="NOTIFIER", nargs="?", const="*",
                        help="re-queue dead-lettered deliveries (of one notifier, or all)")
    utc(events)
    actions = command("actions", "queued order actions (replace/cancel); drop one unsent")
    actions.add_argument("--all", action="store_true", help="finished ones too")
    actions.add_argument("--limit", type=positive_int, default=50,
                         help="how many (default 50)")
    actions.add_argument("--drop", type=positive_int, metavar="ID",
                         help="take back a queued action before the daemon sends it")
    actions.add_argument("--json", action="store_true", help="JSON lines")
    utc(actions)
    add_status_arguments(command("status", "one screen: connections, notifiers, pending "
                                           "actions and the database; exit 1 if something "
                                           "is wrong"))
    command("plugins", "list loaded plugins and registered broker/notifier kinds")
    test = command("test-notify", "send a sample event, marked as a test, through the real "
                                  "notifiers")
    test.add_argument("name", nargs="?", help="only this notifier ([notifiers.NAME])")
    test.add_argument("--scene", default="FINAL_FILLED", choices=SCENES,
                      help="scene of the sample event (default FINAL_FILLED; SYSTEM for an "
                           "operator event)")
    test.add_argument("--dry-run", action="store_true",
                      help="print who would receive it and the rendered text; send nothing")
    watch = command("watch", "track an order id that no list call discovers")
    watch.add_argument("broker", help="connection name ([brokers.NAME])")
    watch.add_argument("order_id", type=order_id)
    watch.add_argument("--account", default="", help="account id (default: the only one)")
    for name, text in (("replace", "change an order's quantity and/or price through the "
                                   "daemon (within the broker's limits)"),
                       ("cancel", "cancel an order through the daemon")):
        action = command(name, text)
        action.add_argument("broker", help="connection name ([brokers.NAME])")
        action.add_argument("order_id", type=order_id)
        if name == "replace":
            action.add_argument("--qty", help="new total quantity")
            action.add_argument("--price", help="new limit price")
        action.add_argument("--account", default="", help="account id (when ambiguous)")
        action.add_argument("--no-wait", action="store_true",
                            help="queue it and return at once")
        action.add_argument("--timeout", type=positive_float, default=60.0,
                            help="seconds to wait for the outcome (default 60)")
    unwatch = command("unwatch", "stop tracking a watched order id")
    unwatch.add_argument("broker", help="connection name ([brokers.NAME])")
    unwatch.add_argument("order_id", type=order_id)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (argparse printed it)
        return done.code if isinstance(done.code, int) else EX_USAGE
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        return _quiet_after_broken_pipe()
    except ConfigError as err:
        for problem in err.problems:
            print(f"poller: {problem}", file=sys.stderr)
        return EX_CONFIG
    except StoreError as err:
        print(f"poller: {err}", file=sys.stderr)
        return EX_IOERR
    except UsageError as err:
        print(f"poller: {args.command}: {err}", file=sys.stderr)
        return EX_USAGE
    except PollerError as err:
        print(f"poller: {err}", file=sys.stderr)
        return EX_FAIL
    except KeyboardInterrupt:
        return 130


def _quiet_after_broken_pipe() -> int:
    """The reader went away (``| head``): say nothing more, and do not let the interpreter
    complain about flushing stdout at exit (the Python docs' recipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``poller run``."""
    from poller.daemon import serve

    path = config_of(args)
    loaded = load(path)
    settings, validated = loaded.settings, loaded.validated
    redactor = setup_logging(level=args.log_level or settings.daemon.log_level,
                             fmt=args.log_format or settings.daemon.log_format,
                             redactor=Redactor(validated.secrets()))
    store = open_configured(settings.daemon, lock=True)
    if not validated.brokers:
        logger.warning("no broker connections are configured: nothing will be polled")
    exposed = exposed_secrets(path, validated)
    if exposed:
        logger.warning("%s", exposed)
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
        raise UsageError(f"--brokers: unknown kind(s) {', '.join(unknown)} "
                         f"(known: {', '.join(SIMULATORS)})")
    redactor = setup_logging(level=args.log_level)
    asyncio.run(run_demo(duration=args.duration, seed=args.seed, kinds=kinds,
                         redactor=redactor, keep_db=args.keep_db))
    return EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """``poller check-config``: every problem at once, else a summary with the budgets."""
    path = config_of(args)
    loaded = load(path)
    settings, validated = loaded.settings, loaded.validated
    print(f"configuration OK: {len(validated.brokers)} broker connection(s), "
          f"{len(validated.notifiers)} notifier(s)")
    if not validated.brokers:
        print("poller: warning: no [brokers.NAME] table: nothing will be polled",
              file=sys.stderr)
    if not validated.notifiers:
        print("poller: warning: no [notifiers.NAME] table: events are stored but sent "
              "nowhere", file=sys.stderr)
    exposed = exposed_secrets(path, validated)
    if exposed:
        print(f"poller: warning: {exposed}", file=sys.stderr)
    print(f"database: {_database_line(settings)}")
    open_orders = _open_orders(settings)
    for name, (cls, cfg) in validated.brokers.items():
        state = "" if cfg.enabled else " (disabled)"
        problem = cls.push_problem(cfg)
        if problem is None:
            print(f"broker {name}: {cls.kind} at {cfg.base_url}, push stream on; list every "
                  f"{cfg.reconcile_interval:g} s while it is up, every {cfg.interval:g} s "
                  f"while it is down{state}")
        else:
            print(f"broker {name}: {cls.kind} at {cfg.base_url}, list every {cfg.interval:g} s"
                  f"{state}" + (f" (no push: {problem})" if cls.supports_push else ""))
            if cfg.push and cls.supports_push:
                print(f"poller: warning: broker {name}: push = true, but {problem}",
                      file=sys.stderr)
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


def _database_line(settings: Settings) -> str:
    """What ``check-config`` says of the database: the SQLite path, or for PostgreSQL the
    URL (no password), whether it answers, and who shares it.

    :raises StoreError: a PostgreSQL database that cannot be reached or used (exit 74).
    """
    target = settings.daemon.database
    if not isinstance(target, DatabaseUrl):
        return str(target)
    store = open_configured(settings.daemon)
    try:
        live = [row for row in store.instances() if row.alive]
        held = sum(1 for lease in store.leases() if lease.holder)
        return (f"{target} (PostgreSQL, reachable; {len(live)} instance(s) running, "
                f"{held} connection lease(s) held; leases last "
                f"{settings.daemon.lease_seconds:g} s)")
    finally:
        store.close()


def _open_orders(settings: Settings) -> dict[str, int]:
    """Open orders per connection from an existing database (none when there is none)."""
    if not store_exists(settings.daemon.database):
        return {}
    try:
        store = open_configured(settings.daemon)
    except StoreError:
        return {}
    try:
        counts: dict[str, int] = {}
        for row in store.list_orders(include_final=False):
            counts[row.snapshot.broker] = counts.get(row.snapshot.broker, 0) + 1
        return counts
    finally:
        store.close()


def cmd_plugins(args: argparse.Namespace) -> int:
    """``poller plugins``."""
    try:
        settings = settings_of(args)
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "demo": cmd_demo,
    "check-config": cmd_check_config,
    "orders": cmd_orders,
    "events": cmd_events,
    "actions": cmd_actions,
    "status": cmd_status,
    "plugins": cmd_plugins,
    "test-notify": cmd_test_notify,
    "replace": cmd_action,
    "cancel": cmd_action,
    "watch": cmd_watch,
    "unwatch": cmd_unwatch,
}

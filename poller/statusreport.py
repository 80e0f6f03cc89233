"""``poller status``: one screen for a person (or one JSON document for a program) on how
the daemon is doing — per connection, per notifier, pending order actions, the database.

Facts come from two places: the database (always; read the way the other read commands do,
safe while the daemon runs) and, when ``daemon.health_listen`` is set and the daemon answers,
its ``/healthz`` JSON. That JSON grows over time, so it is read tolerantly: any key may be
missing or of the wrong type and is then simply not shown. Gathering (:func:`gather`) and
rendering (:func:`render_text`, :func:`render_json`) are separate, so ``--watch`` redraws
the same report and tests read it directly.

Over 400 lines: gathering and rendering one report are one job, and splitting the text
layout from the facts it lays out would only spread one screen over two files.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from poller.__about__ import __version__
from poller.api import action_json
from poller.clicommon import EX_FAIL, EX_OK, database_argument, positive_float, settings_of
from poller.errors import StoreError
from poller.models import iso, parse_iso, utcnow
from poller.records import ActionRow, InstanceRow, OutboxSummary
from poller.settings import Settings, parse_listen
from poller.statestore import open_configured, store_exists
from poller.timetext import printable, shown_time

#: Seconds to wait for ``/healthz``: a status screen must come up even when the daemon hangs.
HEALTH_TIMEOUT = 2.0
#: How many of the newest events are searched for each connection's last operator event
#: (bounded, so a redraw every 2 s never scans a large events table).
RECENT_EVENTS = 2000
CLEAR = "\x1b[H\x1b[2J"
WIDTH = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``poller status`` (``-c`` is added by the command line)."""
    parser.add_argument("--json", action="store_true",
                        help="one JSON document of the same facts (one per line with --watch)")
    parser.add_argument("--watch", type=positive_float, nargs="?", const=2.0,
                        metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    parser.add_argument("--database", type=database_argument, metavar="PATH",
                        help="read this database instead of daemon.database (e.g. one kept "
                             "by `poller demo --keep-db`; the config is then optional)")


# -- the facts ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectionFault:
    """The error a connection is in, as the daemon reports it."""

    category: str
    since: datetime | None
    message: str


@dataclass(frozen=True)
class BudgetUse:
    """One limit group's use in the current window, as the daemon reports it."""

    group: str
    used: int | None
    allowed: int | None
    pad_seconds: float | None


@dataclass(frozen=True)
class Alert:
    """The newest operator event the database holds for a connection."""

    scene: str
    at: datetime | None
    message: str


@dataclass
class ConnectionStatus:
    """What is known of one broker connection."""

    name: str
    configured: bool = False
    enabled: bool = True
    open_orders: int = 0
    stale_orders: int = 0
    last_order_seen: datetime | None = None
    last_success: datetime | None = None
    stopped: str | None = None
    error: ConnectionFault | None = None
    budget: list[BudgetUse] = field(default_factory=list)
    last_alert: Alert | None = None
    #: The push stream as /healthz reports it: state, since, updates, drops, last error.
    push: dict[str, object] | None = None
    #: PostgreSQL: the instance holding the connection's lease ("" when none holds it).
    holder: str | None = None


@dataclass
class NotifierStatus:
    """What is known of one notifier's deliveries."""

    name: str
    configured: bool = False
    pending: int = 0
    oldest_pending: datetime | None = None
    dead: int = 0
    last_error: str = ""
    last_sent: datetime | None = None
    delivered: int | None = None


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon as seen over ``/healthz`` (or why it could not be asked)."""

    reachable: bool
    reason: str = ""
    url: str = ""
    status: str = ""
    problems: tuple[str, ...] = ()
    store_ok: bool | None = None


@dataclass
class Report:
    """Everything ``poller status`` shows, gathered at ``generated_at``."""

    generated_at: datetime
    database: str
    database_bytes: int
    wal_bytes: int
    daemon: DaemonStatus
    connections: dict[str, ConnectionStatus]
    notifiers: dict[str, NotifierStatus]
    actions: list[ActionRow]
    problems: list[str]
    #: PostgreSQL: the instances sharing the database (empty for SQLite).
    instances: list[InstanceRow] = field(default_factory=list)


# -- /healthz, read tolerantly --------------------------------------------------------------

def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _time(value: Any) -> datetime | None:
    try:
        return parse_iso(value) if isinstance(value, str) else None
    except ValueError:
        return None


def health_url(settings: Settings) -> str | None:
    """The ``/healthz`` URL of the daemon, or None when ``health_listen`` is off."""
    listen = settings.daemon.health_listen
    if not listen:
        return None
    host, port = parse_listen(listen)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def fetch_health(client: httpx.Client, settings: Settings) -> tuple[DaemonStatus, Any]:
    """Ask the daemon's ``/healthz``; its JSON body (or None) and what it said of itself."""
    url = health_url(settings)
    if url is None:
        return DaemonStatus(False, "daemon.health_listen is not set"), None
    if url.endswith(":0/healthz"):
        return DaemonStatus(False, "daemon.health_listen has port 0 (chosen at start)",
                            url), None
    try:
        answer = client.get(url)
        body = answer.json()
    except httpx.TimeoutException:
        return DaemonStatus(False, f"no answer from {url} within "
                                   f"{client.timeout.read or HEALTH_TIMEOUT:g} s", url), None
    except httpx.ConnectError:
        return DaemonStatus(False, f"nothing answers at {url}", url), None
    except httpx.HTTPError as err:
        return DaemonStatus(False, f"{url}: {type(err).__name__}", url), None
    except ValueError:
        return DaemonStatus(False, f"{url} answered HTTP {answer.status_code}, not JSON",
                            url), None
    if not isinstance(body, dict):
        return DaemonStatus(False, f"{url} answered JSON that is not an object", url), None
    store = _dict(body.get("store"))
    problems = body.get("problems")
    return DaemonStatus(
        True, url=url, status=_text(body.get("status")) or f"HTTP {answer.status_code}",
        problems=tuple(p for p in problems if isinstance(p, str))
        if isinstance(problems, list) else (),
        store_ok=store["ok"] if isinstance(store.get("ok"), bool) else None), body


def _merge_health(body: Any, connections: dict[str, ConnectionStatus],
                  notifiers: dict[str, NotifierStatus]) -> None:
    """Lay the daemon's live view over what the database knows."""
    health = _dict(body)
    for name, raw in _dict(health.get("connections")).items():
        data = _dict(raw)
        conn = connections.setdefault(name, ConnectionStatus(name))
        conn.last_success = _time(data.get("last_success")) or conn.last_success
        live_open = _int(data.get("open_orders"))
        if live_open is not None:
            conn.open_orders = live_open
        conn.stopped = _text(data.get("stopped")) or None
        error = data.get("error")
        if isinstance(error, dict):
            conn.error = ConnectionFault(_text(error.get("category")) or "error",
                                          _time(error.get("since")),
                                          _text(error.get("message")))
        conn.budget = [
            BudgetUse(group, _int(_dict(use).get("used")), _int(_dict(use).get("allowed")),
                      _float(_dict(use).get("pad_seconds")))
            for group, use in _dict(data.get("budget")).items()]
        push = data.get("push")
        conn.push = dict(push) if isinstance(push, dict) else None
    for name, count in _dict(health.get("outbox_backlog")).items():
        if _int(count) is not None:
            notifiers.setdefault(name, NotifierStatus(name)).pending = count
    for name, raw in _dict(health.get("notifiers")).items():
        data = _dict(raw)
        notifier = notifiers.setdefault(name, NotifierStatus(name))
        for key in ("pending", "dead", "delivered"):
            if _int(data.get(key)) is not None:
                setattr(notifier, key, data[key])
        notifier.oldest_pending = _time(data.get("oldest_pending")) or notifier.oldest_pending
        notifier.last_error = _text(data.get("last_error")) or notifier.last_error


# -- the database -----------------------------------------------------------------------------

def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _operator_alerts(rows: list[tuple[str, str, str, str]]) -> dict[str, Alert]:
    """Each connection's newest operator event, from the store's rows (newest first)."""
    alerts: dict[str, Alert] = {}
    for broker, scene, created, body in rows:
        if broker not in alerts:
            payload = _dict(_dict(json.loads(body)).get("payload"))
            alerts[broker] = Alert(scene, _time(payload.get("detected_at")) or _time(created),
                                   _text(payload.get("message")))
    return alerts


def gather(settings: Settings, client: httpx.Client, *,
           now: Callable[[], datetime] = utcnow) -> Report:
    """Build the report: the config's names, the database, then the daemon's live view.

    :raises StoreError: the database does not exist or cannot be read.
    """
    path = settings.daemon.database
    if not store_exists(path):
        raise StoreError(f"no database at {path} (has `poller run` started with this "
                         "config?)", reason="other")
    size = wal = 0
    if isinstance(path, Path):
        # Measured before opening: closing the last connection checkpoints and removes -wal.
        size, wal = _file_size(path), _file_size(path.with_name(path.name + "-wal"))
    daemon, body = fetch_health(client, settings)
    store = open_configured(settings.daemon)
    try:
        summaries: dict[str, OutboxSummary] = store.outbox_summary()
        actions = store.open_actions()
        orders = store.connection_orders()
        leases, instances = store.leases(), store.instances()
        if not isinstance(path, Path):
            size = store.size_bytes() or 0
        try:
            alerts = _operator_alerts(store.recent_operator_events(RECENT_EVENTS))
        except ValueError as err:  # an event body that is not JSON: a damaged file
            raise StoreError(f"cannot read {store.location}: an event is not JSON ({err})",
                             reason="corrupt") from err
    finally:
        store.close()
    connections = {name: ConnectionStatus(name, configured=True,
                                          enabled=bool(table.get("enabled", True)))
                   for name, table in settings.brokers.items()}
    for name, (open_orders, stale, seen) in orders.items():
        conn = connections.setdefault(name, ConnectionStatus(name))
        conn.open_orders, conn.stale_orders, conn.last_order_seen = open_orders, stale, seen
        conn.last_alert = alerts.get(name)
    notifiers = {name: NotifierStatus(name, configured=True) for name in settings.notifiers}
    for name, s in summaries.items():
        notifier = notifiers.setdefault(name, NotifierStatus(name))
        notifier.pending, notifier.oldest_pending, notifier.dead = (s.pending,
                                                                    s.oldest_pending, s.dead)
        notifier.last_error, notifier.last_sent = s.last_error, s.last_sent
    alive = {row.id: row for row in instances if row.alive}
    for lease in leases:
        conn = connections.setdefault(lease.connection, ConnectionStatus(lease.connection))
        row = alive.get(lease.holder)
        conn.holder = f"{row.id} ({row.host} pid {row.pid})" if row else ""
    if daemon.reachable:
        _merge_health(body, connections, notifiers)
    report = Report(now(), str(path), size, wal, daemon, connections, notifiers, actions, [],
                    instances)
    report.problems = problems_of(report, settings.daemon.backlog_alert_after)
    return report


def problems_of(report: Report, backlog_alert_after: float) -> list[str]:
    """What is wrong (each one makes the exit code 1)."""
    problems: list[str] = []
    daemon = report.daemon
    if daemon.reachable and daemon.status not in ("ok", ""):
        problems.append(f"daemon health is {daemon.status}")
    problems.extend(f"daemon: {p}" for p in daemon.problems)
    if daemon.store_ok is False:
        problems.append("daemon: the database does not accept commits")
    for conn in report.connections.values():
        if conn.stopped:
            problems.append(f"connection {conn.name} stopped: {conn.stopped}")
    for n in report.notifiers.values():
        if n.dead:
            problems.append(f"notifier {n.name}: {n.dead} dead letter(s); once the cause "
                            f"is fixed, `poller events --requeue {n.name}` resends them")
        waited = _seconds(report.generated_at, n.oldest_pending)
        if n.pending and waited is not None and waited > backlog_alert_after:
            problems.append(f"notifier {n.name}: oldest waiting message is "
                            f"{age(waited)} old")
    return [printable(p) for p in problems]


# -- text -----------------------------------------------------------------------------------

def _seconds(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


def age(seconds: float) -> str:
    """A duration for people: ``12 s``, ``38 min``, ``3 h 5 min``, ``2 d 4 h``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def ago(now: datetime, then: datetime | None) -> str:
    """``12 s ago`` (``-`` for never)."""
    seconds = _seconds(now, then)
    return "-" if seconds is None else f"{age(seconds)} ago"


def _size(count: int) -> str:
    """``812 B``, ``1.4 MB``."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def _clip(text: str, width: int) -> str:
    text = printable(text)
    return text if len(text) <= width else text[:max(1, width - 1)] + "…"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _connection_state(conn: ConnectionStatus, now: datetime, live: bool) -> str:
    if conn.stopped:
        return f"STOPPED: {conn.stopped}"
    if not conn.enabled:
        return "disabled"
    if conn.error is not None:
        since = f" for {age(_seconds(now, conn.error.since) or 0)}" if conn.error.since else ""
        return f"error: {conn.error.category}{since}"
    if conn.last_success is None and conn.last_order_seen is None:
        return "not polled yet"
    # Without the daemon's view the database cannot tell a healthy connection from one in
    # trouble since its last commit: say so rather than "ok".
    return "ok" if live else "no live view"


def render_text(report: Report) -> str:
    """The report as aligned plain text, readable at 80 columns."""
    now = report.generated_at
    daemon = report.daemon
    lines = [f"poller status at {shown_time(iso(now))}  (poller {__version__})", ""]
    if daemon.reachable:
        lines.append(f"daemon: {_clip(daemon.status, 30)}  ({daemon.url})")
    else:
        lines.append(_clip(f"daemon: not reachable ({daemon.reason})", WIDTH))
        lines.append("        showing what the database knows")
    # Never clipped: a path is only useful whole.
    if report.wal_bytes or not report.database.startswith("postgres"):
        lines.append(f"database: {printable(report.database)}  "
                     f"{_size(report.database_bytes)} + wal {_size(report.wal_bytes)}")
    else:
        lines.append(f"database: {printable(report.database)}  {_size(report.database_bytes)}")
    if report.instances:
        live = [i for i in report.instances if i.alive]
        lines.append(_clip("instances: " + ", ".join(
            f"{i.id} ({i.host} pid {i.pid})" for i in live) + (
            f"; {len(report.instances) - len(live)} gone" if len(live) < len(report.instances)
            else ""), WIDTH))
    lines.append("problems: none" if not report.problems else "problems:")
    for problem in report.problems:  # wrapped, not clipped: each is something to act on
        lines += textwrap.wrap(problem, WIDTH, initial_indent="  - ", subsequent_indent="    ",
                               break_on_hyphens=False)

    lines += ["", "connections"]
    if not report.connections:
        lines.append("  none configured or in the database")
    else:
        last_label = "LAST POLL" if daemon.reachable else "LAST SEEN"
        clustered = any(c.holder is not None for c in report.connections.values())
        rows: list[tuple[str, ...]] = [("NAME", last_label, "OPEN", "STATE")
                                       + (("HOLDER",) if clustered else ())]
        for c in report.connections.values():
            last = c.last_success if daemon.reachable else c.last_order_seen
            opened = str(c.open_orders) + (f" ({c.stale_orders} stale)" if c.stale_orders
                                           else "")
            rows.append((_clip(c.name, 20), ago(now, last), opened,
                         _clip(_connection_state(c, now, daemon.reachable), 40))
                        + ((_clip(c.holder or "none", 30),) if clustered else ()))
        lines += _table(rows)
        unknown = [c.name for c in report.connections.values() if not c.configured]
        if unknown:
            lines.append(_clip("  not in the config: " + ", ".join(unknown), WIDTH))
        for c in report.connections.values():
            name = _clip(c.name, 20)
            if c.error is not None and c.error.message:
                lines.append(_clip(f"  {name}: {c.error.message}", WIDTH))
            if c.budget:
                uses = ", ".join(
                    f"{b.group} {'?' if b.used is None else b.used}/"
                    f"{'?' if b.allowed is None else b.allowed}"
                    + (f" (pad {b.pad_seconds:.2f} s)" if b.pad_seconds else "")
                    for b in c.budget)
                lines.append(_clip(f"  {name}: budget {uses}", WIDTH))
            if c.push is not None:
                since = _time(c.push.get("since"))
                text = (f"  {name}: push {printable(_text(c.push.get('state')))}"
                        + (f" since {ago(now, since)}" if since else "")
                        + f", {_int(c.push.get('updates')) or 0} update(s), "
                          f"{_int(c.push.get('drops')) or 0} drop(s)")
                error = _text(c.push.get("last_error"))
                if error and c.push.get("state") != "up":
                    text += f": {printable(error)}"
                lines.append(_clip(text, WIDTH))
            if c.last_alert is not None:
                lines.append(_clip(f"  {name}: last alert {ago(now, c.last_alert.at)}: "
                                   f"{c.last_alert.scene} {c.last_alert.message}", WIDTH))

    lines += ["", "notifiers"]
    if not report.notifiers:
        lines.append("  none configured or in the database")
    else:
        rows = [("NAME", "PENDING", "OLDEST", "DEAD", "LAST SENT")]
        for n in report.notifiers.values():
            oldest = age(_seconds(now, n.oldest_pending) or 0) if n.oldest_pending else "-"
            rows.append((_clip(n.name, 20), str(n.pending), oldest, str(n.dead),
                         ago(now, n.last_sent)))
        lines += _table(rows)
        for n in report.notifiers.values():
            if n.last_error:
                lines.append(_clip(f"  {n.name}: last error: {n.last_error}", WIDTH))

    lines += ["", "pending order actions"]
    if not report.actions:
        lines.append("  none")
    else:
        rows = [("ID", "QUEUED", "CONNECTION", "ORDER", "ACTION", "STATE")]
        for a in report.actions:
            change = " ".join(p for p in (f"qty {a.qty}" if a.qty else "",
                                          f"price {a.price}" if a.price else "") if p)
            rows.append((str(a.id), ago(now, _time(a.created_at)), _clip(a.broker, 16),
                         _clip(a.order_id, 16), _clip(f"{a.kind} {change}".strip(), 24),
                         a.state))
        lines += _table(rows)
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> dict[str, Any]:
    """The same facts as a stable JSON document (times ISO 8601 UTC, or null)."""
    daemon = report.daemon
    return {
        "generated_at": iso(report.generated_at),
        "ok": not report.problems,
        "problems": report.problems,
        "daemon": {"reachable": daemon.reachable, "reason": daemon.reason or None,
                   "url": daemon.url or None, "status": daemon.status or None,
                   "problems": list(daemon.problems), "store_ok": daemon.store_ok},
        "database": {"path": report.database, "bytes": report.database_bytes,
                     "wal_bytes": report.wal_bytes},
        "instances": [{"id": i.id, "host": i.host, "pid": i.pid, "started_at": i.started_at,
                       "seen_at": i.seen_at, "alive": i.alive} for i in report.instances],
        "connections": {c.name: {
            "configured": c.configured, "enabled": c.enabled, "open_orders": c.open_orders,
            "stale_orders": c.stale_orders, "last_success": iso(c.last_success),
            "last_order_seen": iso(c.last_order_seen), "stopped": c.stopped,
            "error": None if c.error is None else {
                "category": c.error.category, "since": iso(c.error.since),
                "message": c.error.message},
            "budget": {b.group: {"used": b.used, "allowed": b.allowed,
                                 "pad_seconds": b.pad_seconds} for b in c.budget},
            "push": c.push,
            "holder": c.holder,
            "last_alert": None if c.last_alert is None else {
                "scene": c.last_alert.scene, "at": iso(c.last_alert.at),
                "message": c.last_alert.message},
        } for c in report.connections.values()},
        "notifiers": {n.name: {
            "configured": n.configured, "pending": n.pending,
            "oldest_pending": iso(n.oldest_pending), "dead": n.dead,
            "last_error": n.last_error, "last_sent": iso(n.last_sent),
            "delivered": n.delivered,
        } for n in report.notifiers.values()},
        "actions": [action_json(a) for a in report.actions],
    }


# -- the command ----------------------------------------------------------------------------

def _frame(report: Report, as_json: bool) -> str:
    if as_json:
        # ensure_ascii: every control character (C1 included) leaves as a \u escape.
        return json.dumps(render_json(report)) + "\n"
    return render_text(report)


def cmd_status(args: argparse.Namespace, *, out: TextIO | None = None,
               stop: threading.Event | None = None) -> int:
    """``poller status``: 0 all good, 1 something is wrong, 74 no readable database."""
    settings = settings_of(args)
    stream = out or sys.stdout
    # One client for every frame: --watch asks /healthz again over the same connection.
    with httpx.Client(timeout=HEALTH_TIMEOUT, follow_redirects=False,
                      headers={"User-Agent": f"poller/{__version__}"}) as client:
        if args.watch is None:
            report = gather(settings, client)
            stream.write(_frame(report, args.json))
            return EX_FAIL if report.problems else EX_OK
        try:
            return _watch(settings, client, args, stream, stop or threading.Event())
        except KeyboardInterrupt:  # Ctrl-C is how a person ends --watch: not an error
            return EX_OK


def _watch(settings: Settings, client: httpx.Client, args: argparse.Namespace,
           stream: TextIO, stop: threading.Event) -> int:
    """Redraw until Ctrl-C (or ``stop``): in place on a terminal, one frame after another
    into a pipe or file. A database that cannot be read is shown, not fatal: it may be
    locked for a moment."""
    tty = stream.isatty()
    while True:
        try:
            frame = _frame(gather(settings, client), args.json)
        except StoreError as err:
            frame = (json.dumps({"error": str(err)}) + "\n" if args.json
                     else f"poller status: {printable(str(err))}\n")
        stream.write((CLEAR if tty else "") + frame + ("" if tty or args.json else "\n"))
        stream.flush()
        if stop.wait(args.watch):
            return EX_OK

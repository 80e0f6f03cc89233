"""Message text from events: Jinja2 templates (sandboxed) per scene, overridable per notifier.

Templates render plain text; each notifier escapes the result for its own markup (Telegram
HTML/MarkdownV2, Slack mrkdwn, email HTML), so nothing a broker sends can inject markup.

Variables available in a template: every key of the event payload (``symbol``, ``side``,
``qty``, ``price``, ``filled_qty``, ``order_status``, ``changes``…), plus ``event`` (the whole
event JSON), ``scene``, ``event_type``, ``short_id`` (``#7F3A``), ``late`` (``"late by 12 min"``
or ``""``), ``changes_text`` (``"price 101.5 → 101, qty 1 000 → 600"``), ``fill_summary``
(``"filled 600 / 1 000 (60 %), avg 101.2"``), ``fills_text`` (``"12 fills in one message"``
when partial fills were coalesced, else empty), and the filter ``num`` (groups thousands:
``1 000``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from poller.events import OrderEvent
from poller.fillcoalescing import fills_text
from poller.models import parse_iso, utcnow

#: Default title (first line) and body per scene; SYSTEM events use "SYSTEM".
DEFAULT_TITLES: dict[str, str] = {
    "PLACED": "{{ broker }}: {{ side }} {{ qty|num }} {{ symbol }}{% if price %} @ {{ price }}"
              "{% endif %} placed",
    "FILLED": "{{ broker }}: {{ side }} {{ symbol }} partly filled {{ last_fill_qty|num }}"
              "{% if last_fill_price %} @ {{ last_fill_price }}{% endif %}",
    "FINAL_FILLED": "{{ broker }}: {{ side }} {{ qty|num }} {{ symbol }} filled"
                    "{% if filled_price %} @ {{ filled_price }}{% endif %}",
    "PLACE_FAILED": "{{ broker }}: {{ side }} {{ qty|num }} {{ symbol }} rejected",
    "MODIFY_SUCCESS": "{{ broker }}: {{ side }} {{ symbol }} modified",
    "MODIFY_FAILED": "{{ broker }}: {{ side }} {{ symbol }} modify failed",
    "CANCEL_SUCCESS": "{{ broker }}: {{ side }} {{ qty|num }} {{ symbol }} cancelled",
    "CANCEL_FAILED": "{{ broker }}: {{ side }} {{ symbol }} cancel failed",
    "EXPIRED": "{{ broker }}: {{ side }} {{ qty|num }} {{ symbol }} expired",
    "SYSTEM": "poller: {{ scene }}{% if broker %} ({{ broker }}){% endif %}",
}

DEFAULT_BODY = """\
{%- if event_type == "SYSTEM" -%}
{{ message }}
{%- else -%}
{{ scene }} · order {{ order_id }}{% if account_id %} · account {{ account_id }}{% endif %}
{% if changes_text %}{{ changes_text }}
{% endif %}{{ fill_summary }}{% if fills_text %} · {{ fills_text }}{% endif %}
{% if message and scene in failures %}reason: {{ message }}
{% endif %}status {{ order_status }}{% if broker_status %} ({{ broker_status }}){% endif %}
{%- endif %}
{% if late %}{{ late }} · {% endif %}{% if via == "push" %}pushed · {% endif %}{{ short_id }}"""


@dataclass(frozen=True)
class Message:
    """A rendered notification: one-line title, plain-text body, and the event's short id."""

    title: str
    body: str
    short_id: str
    scene: str
    event_type: str

    @property
    def text(self) -> str:
        """Title and body as one plain text."""
        return f"{self.title}\n{self.body}".strip()


def group_thousands(value: Any) -> str:
    """``1000000`` → ``1 000 000`` (non-numbers pass through unchanged)."""
    if value is None or value == "":
        return ""
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    text = format(number, "f")
    whole, _, fraction = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    whole = whole.lstrip("-")
    groups: list[str] = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    return sign + " ".join(groups) + (f".{fraction}" if fraction else "")


def changes_text(changes: Mapping[str, Mapping[str, Any]] | None) -> str:
    """``{"price": {"old": "101.5", "new": "101"}}`` → ``price 101.5 → 101``."""
    if not changes:
        return ""
    return ", ".join(f"{name} {group_thousands(c.get('old'))} → {group_thousands(c.get('new'))}"
                     for name, c in changes.items())


def fill_summary(payload: Mapping[str, Any]) -> str:
    """``filled 600 / 1 000 (60 %), avg 101.2`` (or ``nothing filled``)."""
    try:
        filled = Decimal(str(payload.get("filled_qty") or 0))
        qty = Decimal(str(payload.get("qty") or 0))
    except InvalidOperation:
        return ""
    if not filled:
        return "nothing filled"
    text = f"filled {group_thousands(filled)} / {group_thousands(qty)}"
    if qty:
        text += f" ({(filled * 100 / qty).quantize(Decimal(1))} %)"
    if payload.get("filled_price"):
        text += f", avg {payload['filled_price']}"
    return text


def lateness(event: OrderEvent, now: datetime, late_after: float) -> str:
    """``late by 12 min`` when the event is delivered long after it was detected."""
    happened = parse_iso(event.payload.get("detected_at")) or event.timestamp
    seconds = (now - happened).total_seconds()
    if seconds < late_after:
        return ""
    if seconds < 3600:
        return f"late by {int(seconds // 60)} min"
    return f"late by {seconds / 3600:.1f} h"


def environment() -> ImmutableSandboxedEnvironment:
    """The Jinja2 environment of every template: sandboxed, and immutable so a template
    cannot change the event it renders; undefined names are errors (then the default)."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                        keep_trailing_newline=False)
    env.filters["num"] = group_thousands
    return env


class Templates:
    """The templates of one notifier: defaults plus its overrides, compiled once.

    :param overrides: scene (or ``SYSTEM``, or ``body``) → template text.
    :raises TemplateError: when an override does not compile (reported as a config problem).
    """

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self._env = environment()
        overrides = dict(overrides or {})
        body = overrides.pop("body", DEFAULT_BODY)
        self._titles = {scene: self._env.from_string(text)
                        for scene, text in {**DEFAULT_TITLES, **overrides}.items()}
        self._body = self._env.from_string(body)

    def variables(self, event: OrderEvent, now: datetime, late_after: float) -> dict[str, Any]:
        """Everything a template can use for ``event``."""
        payload = event.payload
        values: dict[str, Any] = {key: "" for key in (
            "broker", "account_id", "order_id", "symbol", "side", "qty", "price", "filled_qty",
            "filled_price", "last_fill_qty", "last_fill_price", "order_status", "broker_status",
            "message", "notifier", "via")}
        values.update({k: ("" if v is None else v) for k, v in payload.items()})
        values.update(
            event=event.to_json(), scene=event.scene, event_type=event.event_type,
            short_id=event.short_id, late=lateness(event, now, late_after),
            failures=("PLACE_FAILED", "MODIFY_FAILED", "CANCEL_FAILED"),
            changes_text=changes_text(payload.get("changes")),
            fill_summary=fill_summary(event.payload), fills_text=fills_text(event.payload),
        )
        return values

    def render(self, event: OrderEvent, *, now: datetime | None = None,
               late_after: float = 300.0) -> Message:
        """Render ``event``; a template that fails at render time falls back to the default."""
        now = now or utcnow()
        values = self.variables(event, now, late_after)
        key = "SYSTEM" if event.event_type == "SYSTEM" else event.scene
        template = self._titles.get(key) or self._titles["SYSTEM"]
        try:
            title = template.render(values).strip()
            body = self._body.render(values).strip()
        except Exception as err:  # an operator's template must never lose a message
            # (TemplateError, but also TypeError for `qty + 1` or the sandbox's OverflowError)
            fallback = Templates()
            title = fallback._titles.get(key, fallback._titles["SYSTEM"]).render(values).strip()
            body = fallback._body.render(values).strip() + f"\n(template error: {err})"
        if event.payload.get("test"):  # a test-notify sample, whatever the template says
            title = f"[test] {title}"
        return Message(title=title, body=body, short_id=event.short_id, scene=event.scene,
                       event_type=event.event_type)

    @staticmethod
    def check(overrides: Mapping[str, str]) -> list[tuple[str, str]]:
        """Problems with template overrides, as (key, message), for config validation."""
        problems = []
        env = environment()
        for scene, text in overrides.items():
            if scene not in DEFAULT_TITLES and scene != "body":
                problems.append((scene, "not a scene type (or 'SYSTEM', or 'body')"))
                continue
            try:
                env.from_string(text)  # compiled, not only parsed: unknown filters fail here
            except TemplateError as err:
                problems.append((scene, f"template does not compile: {err}"))
        return problems


def digest(messages: list[Message], *, title: str) -> Message:
    """One message summarising several held ones (quiet hours)."""
    lines = [f"• {m.title} {m.short_id}" for m in messages]
    return Message(title=title, body="\n".join(lines), short_id="", scene="DIGEST",
                   event_type="DIGEST")

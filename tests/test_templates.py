"""Message text: the default title and body of every scene, changes and fills, late marking,
overrides, the sandbox, and the checks run on a notifier's configuration."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from jinja2 import TemplateError

from poller.events import OrderEvent
from poller.samples import SCENES, sample_event
from poller.templates import (
    DEFAULT_TITLES,
    Message,
    Templates,
    changes_text,
    digest,
    fill_summary,
    group_thousands,
)

HEAD = "order TEST0001 · account 1234567"

#: Title and body (without the short id line) of each scene's sample event.
RENDERED: dict[str, tuple[str, list[str]]] = {
    "PLACED": ("tw-main: BUY 1 000 2890 @ 27.1 placed",
               [f"PLACED · {HEAD}", "nothing filled", "status SUBMITTED (Submitted)"]),
    "FILLED": ("tw-main: BUY 2890 partly filled 400 @ 27.1",
               [f"FILLED · {HEAD}", "filled 400 / 1 000 (40 %), avg 27.1",
                "status PARTIAL_FILLED (PartFilled)"]),
    "FINAL_FILLED": ("tw-main: BUY 1 000 2890 filled @ 27.06",
                     [f"FINAL_FILLED · {HEAD}", "filled 1 000 / 1 000 (100 %), avg 27.06",
                      "status FILLED (Filled)"]),
    "PLACE_FAILED": ("tw-main: BUY 1 000 2890 rejected",
                     [f"PLACE_FAILED · {HEAD}", "nothing filled",
                      "reason: insufficient buying power", "status FAILED (Failed)"]),
    "MODIFY_SUCCESS": ("tw-main: BUY 2890 modified",
                       [f"MODIFY_SUCCESS · {HEAD}", "qty 1 000 → 600, price 27.1 → 27",
                        "nothing filled", "status SUBMITTED (Submitted)"]),
    "MODIFY_FAILED": ("tw-main: BUY 2890 modify failed",
                      [f"MODIFY_FAILED · {HEAD}", "nothing filled",
                       "status SUBMITTED (Submitted)"]),
    "CANCEL_SUCCESS": ("tw-main: BUY 1 000 2890 cancelled",
                       [f"CANCEL_SUCCESS · {HEAD}", "nothing filled",
                        "status CANCELLED (Cancelled)"]),
    "CANCEL_FAILED": ("tw-main: BUY 2890 cancel failed",
                      [f"CANCEL_FAILED · {HEAD}", "nothing filled",
                       "status SUBMITTED (Submitted)"]),
    "EXPIRED": ("tw-main: BUY 1 000 2890 expired",
                [f"EXPIRED · {HEAD}", "nothing filled", "status EXPIRED (Expired)"]),
    "SYSTEM": ("poller: BROKER_UNREACHABLE (tw-main)",
               ["tw-main: test message from poller test-notify"]),
}


def test_every_scene_has_a_default_title_and_a_row_here() -> None:
    assert set(RENDERED) == set(SCENES) == set(DEFAULT_TITLES)


@pytest.mark.parametrize("scene", SCENES)
def test_default_rendering_per_scene(scene: str) -> None:
    event = sample_event(scene)
    message = Templates().render(event, now=event.timestamp)
    title, lines = RENDERED[scene]
    assert message.title == title
    assert message.body.splitlines() == [*lines, event.short_id]
    assert message.text == f"{title}\n{message.body}"
    assert (message.short_id, message.scene, message.event_type) == (
        event.short_id, event.scene, event.event_type)


def with_payload(event: OrderEvent, **changes: Any) -> OrderEvent:
    return replace(event, payload={**event.payload, **changes})


def test_a_reason_is_shown_for_failures_only() -> None:
    cancelled = with_payload(sample_event("CANCEL_SUCCESS"), message="cancelled by user")
    failed = with_payload(sample_event("CANCEL_FAILED"), message="order already filled")
    assert "cancelled by user" not in Templates().render(cancelled).body
    assert "reason: order already filled" in Templates().render(failed).body


def test_broker_text_is_rendered_verbatim() -> None:
    """Plain text: each notifier escapes for its own markup, so nothing is escaped here."""
    event = with_payload(sample_event("PLACED"), symbol="<b>A&B</b>", side="{{ side }}")
    assert Templates().render(event).title == "tw-main: {{ side }} 1 000 <b>A&B</b> @ 27.1 placed"


@pytest.mark.parametrize(("delay", "late_after", "mark"), [
    (0, 300, ""),
    (299, 300, ""),
    (300, 300, "late by 5 min · "),
    (12 * 60 + 59, 300, "late by 12 min · "),
    (3599, 300, "late by 59 min · "),
    (3600, 300, "late by 1.0 h · "),
    (9000, 300, "late by 2.5 h · "),
    (60, 30, "late by 1 min · "),
    (600, 3600, ""),
])
@pytest.mark.parametrize("scene", ["FILLED", "SYSTEM"])
def test_late_marking(scene: str, delay: float, late_after: float, mark: str) -> None:
    event = sample_event(scene)
    message = Templates().render(event, now=event.timestamp + timedelta(seconds=delay),
                                 late_after=late_after)
    assert message.body.splitlines()[-1] == f"{mark}{event.short_id}"


def test_lateness_counts_from_the_event_time_without_detected_at() -> None:
    event = sample_event("FILLED")
    event = replace(event, payload={k: v for k, v in event.payload.items()
                                    if k != "detected_at"})
    late = Templates().render(event, now=event.timestamp + timedelta(minutes=7))
    assert late.body.endswith(f"late by 7 min · {event.short_id}")


@pytest.mark.parametrize(("value", "text"), [
    (1000000, "1 000 000"),
    ("1234567.891", "1 234 567.891"),
    ("-1234.50", "-1 234.50"),
    ("999", "999"),
    ("1E+3", "1 000"),
    (0, "0"),
    (None, ""),
    ("", ""),
    ("n/a", "n/a"),
])
def test_group_thousands(value: Any, text: str) -> None:
    assert group_thousands(value) == text


@pytest.mark.parametrize(("changes", "text"), [
    (None, ""),
    ({}, ""),
    ({"price": {"old": "101.5", "new": "101"}}, "price 101.5 → 101"),
    ({"qty": {"old": "1000", "new": "600"}, "price": {"old": "27.1", "new": None}},
     "qty 1 000 → 600, price 27.1 → "),
])
def test_changes_text(changes: dict[str, dict[str, Any]] | None, text: str) -> None:
    assert changes_text(changes) == text


@pytest.mark.parametrize(("payload", "text"), [
    ({"filled_qty": "0", "qty": "1000"}, "nothing filled"),
    ({"filled_qty": None, "qty": None}, "nothing filled"),
    ({"filled_qty": "600", "qty": "1000", "filled_price": "101.2"},
     "filled 600 / 1 000 (60 %), avg 101.2"),
    ({"filled_qty": "1", "qty": "3"}, "filled 1 / 3 (33 %)"),
    ({"filled_qty": "5", "qty": "0"}, "filled 5 / 0"),
    ({"filled_qty": "lots", "qty": "1"}, ""),
])
def test_fill_summary(payload: dict[str, Any], text: str) -> None:
    assert fill_summary(payload) == text


def test_overrides_replace_only_what_they_name() -> None:
    templates = Templates({
        "FILLED": "{{ symbol }} +{{ last_fill_qty|num }} ({{ fill_summary }}) {{ short_id }}",
        "SYSTEM": "ALERT {{ scene }}: {{ event.payload.message }}",
        "body": "{{ changes_text or 'no change' }}{% if late %} / {{ late }}{% endif %}",
    })
    filled = sample_event("FILLED")
    message = templates.render(filled, now=filled.timestamp + timedelta(hours=1))
    assert message.title == f"2890 +400 (filled 400 / 1 000 (40 %), avg 27.1) {filled.short_id}"
    assert message.body == "no change / late by 1.0 h"
    modified = sample_event("MODIFY_SUCCESS")
    assert templates.render(modified).title == "tw-main: BUY 2890 modified"  # the default
    assert templates.render(modified).body == "qty 1 000 → 600, price 27.1 → 27"
    system = sample_event("SYSTEM")
    assert templates.render(system).title == \
        "ALERT BROKER_UNREACHABLE: tw-main: test message from poller test-notify"
    assert Templates().render(filled).title == RENDERED["FILLED"][0]  # nothing shared


@pytest.mark.parametrize(("key", "template", "error"), [
    ("FILLED", "{{ nosuch }}", "'nosuch' is undefined"),
    ("FILLED", "{{ event.__class__ }}", "access to attribute '__class__' of 'dict' object is "
                                        "unsafe."),
    ("FILLED", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
     "access to attribute '__class__' of 'str' object is unsafe."),
    ("FILLED", "{{ lipsum.__globals__['os'] }}",
     "access to attribute '__globals__' of 'function' object is unsafe."),
    ("FILLED", "{{ '{0.__class__}'.format(event) }}",
     "access to attribute '__class__' of 'dict' object is unsafe."),
    ("body", "{{ cycler.__init__.__globals__ }}",
     "access to attribute '__init__' of 'type' object is unsafe."),
])
def test_a_template_failing_at_render_time_falls_back_to_the_default(
        key: str, template: str, error: str) -> None:
    """Undefined names and the sandbox's refusals do not lose the message: the defaults are
    used, and the error is shown at the end of the body."""
    event = sample_event("FILLED")
    message = Templates({key: template}).render(event, now=event.timestamp)
    default_title, default_lines = RENDERED["FILLED"]
    assert message.title == default_title
    assert message.body.splitlines() == [*default_lines, event.short_id,
                                         f"(template error: {error})"]
    assert "<class" not in message.text


@pytest.mark.parametrize("key", ["FILLED", "SYSTEM", "body"])
def test_an_override_that_does_not_compile_is_refused_at_construction(key: str) -> None:
    with pytest.raises(TemplateError, match="Unexpected end of template"):
        Templates({key: "{% if qty %}x"})


@pytest.mark.parametrize(("overrides", "problems"), [
    ({}, []),
    ({"FILLED": "{{ qty|num }}", "SYSTEM": "{{ message }}", "body": "{{ scene }}"}, []),
    ({"FILLD": "{{ qty }}"}, [("FILLD", "not a scene type (or 'SYSTEM', or 'body')")]),
    ({"FILLED": "{{ qty "},
     [("FILLED", "template does not compile: unexpected end of template, expected 'end of "
                 "print statement'.")]),
    ({"PLACED": "{% nosuchtag %}", "TITLE": "x", "EXPIRED": "fine"},
     [("PLACED", "template does not compile: Encountered unknown tag 'nosuchtag'."),
      ("TITLE", "not a scene type (or 'SYSTEM', or 'body')")]),
])
def test_check(overrides: dict[str, str], problems: list[tuple[str, str]]) -> None:
    assert Templates.check(overrides) == problems


def test_digest() -> None:
    messages = [Templates().render(sample_event(scene)) for scene in ("FILLED", "SYSTEM")]
    held = digest(messages, title="poller: 2 event(s) during quiet hours")
    assert held == Message(
        title="poller: 2 event(s) during quiet hours",
        body=f"• {RENDERED['FILLED'][0]} {messages[0].short_id}\n"
             f"• {RENDERED['SYSTEM'][0]} {messages[1].short_id}",
        short_id="", scene="DIGEST", event_type="DIGEST")


@pytest.mark.parametrize("template", ["{{ qty|nm }}", "{{ qty is nosuchtest }}"])
def test_check_refuses_what_building_the_notifier_would_refuse(template: str) -> None:
    """An unknown filter or test must fail config validation, not the notifier's start."""
    problems = Templates.check({"FILLED": template})
    assert problems and problems[0][0] == "FILLED"
    assert "template does not compile" in problems[0][1]


@pytest.mark.parametrize("template", ["{{ qty + 1 }}", "{{ 1 / 0 }}",
                                      "{{ range(10**6)|list|length }}"])
def test_any_render_failure_falls_back_to_the_default(template: str) -> None:
    """TypeError, ZeroDivisionError, the sandbox's OverflowError: the message still goes."""
    event = sample_event("FILLED")
    message = Templates({"FILLED": template}).render(event, now=event.timestamp)
    assert "template error" in message.body
    assert message.title == Templates().render(event, now=event.timestamp).title


def test_a_template_cannot_change_the_event_it_renders() -> None:
    event = sample_event("FILLED")
    Templates({"FILLED": "{{ event.payload.update(symbol='XXXX') }}"}).render(event)
    assert event.payload["symbol"] == "2890"


def test_an_event_a_push_reported_first_says_so() -> None:
    event = sample_event("FILLED")
    assert "pushed · " in Templates().render(with_payload(event, via="push")).body
    assert "pushed" not in Templates().render(event).body

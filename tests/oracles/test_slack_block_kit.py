"""Every Slack payload poller builds passes slack_sdk's own Block Kit models and validators
(Slack's official Python SDK, a test extra): lengths of headers, sections and context, the
50-block cap, and the fallback text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block

from poller.templates import Message
from poller_plugins.slack import SlackConfig, payload_for

CONFIG = SlackConfig.model_validate({
    "kind": "slack", "webhook_url": "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXX"})
#: Characters that escape (&, <, >), break lines, or are wide.
TEXT = st.text(alphabet=st.sampled_from(list("a &<>\n\t*_~`台")), max_size=4000)


def check(message: Message) -> None:
    payload = payload_for(message, CONFIG)
    blocks = payload["blocks"]
    assert 1 <= len(blocks) <= 50
    for raw in blocks:
        block = Block.parse(raw)
        assert block is not None, raw
        block.validate_json()  # raises SlackObjectFormationError on any violation
        if raw["type"] == "section":
            assert raw["text"]["text"].strip(), "Slack refuses a blank section"
    assert payload["text"].strip()


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(title=st.text(max_size=300), body=TEXT, repeat=st.integers(1, 60))
def test_every_payload_is_valid_block_kit(title: str, body: str, repeat: int) -> None:
    check(Message(title=title, body=body * repeat, short_id="#ABCD", scene="FILLED",
                  event_type="TRADE"))


def test_the_extremes() -> None:
    for body in ("&" * 200_000, "\n" * 9000 + "x", "x" * 2999 + "\n" * 3000 + "y", ""):
        check(Message(title="T" * 400, body=body, short_id="", scene="FILLED",
                      event_type="TRADE"))

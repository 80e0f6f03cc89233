"""The sample events of ``poller test-notify``: one per scene, made by the real diff."""

from __future__ import annotations

import json
from typing import Any

import pytest

from poller.events import OrderEvent
from poller.models import SceneType
from poller.samples import SCENES, sample_event

#: What each trade sample says about its order.
FACTS: dict[str, dict[str, Any]] = {
    "PLACED": {"order_status": "SUBMITTED", "previous_status": None, "filled_qty": "0"},
    "FILLED": {"order_status": "PARTIAL_FILLED", "previous_status": "SUBMITTED",
               "filled_qty": "400", "last_fill_qty": "400", "last_fill_price": "27.1"},
    "FINAL_FILLED": {"order_status": "FILLED", "previous_status": "PARTIAL_FILLED",
                     "filled_qty": "1000", "filled_price": "27.06", "last_fill_qty": "600"},
    "PLACE_FAILED": {"order_status": "FAILED", "previous_status": "PENDING",
                     "message": "insufficient buying power"},
    "MODIFY_SUCCESS": {"order_status": "SUBMITTED", "qty": "600", "price": "27",
                       "changes": {"qty": {"old": "1000", "new": "600"},
                                   "price": {"old": "27.1", "new": "27"}}},
    "MODIFY_FAILED": {"order_status": "SUBMITTED", "previous_status": "PENDING_REPLACE",
                      "changes": {}},
    "CANCEL_SUCCESS": {"order_status": "CANCELLED", "previous_status": "SUBMITTED"},
    "CANCEL_FAILED": {"order_status": "SUBMITTED", "previous_status": "PENDING_CANCEL"},
    "EXPIRED": {"order_status": "EXPIRED", "previous_status": "SUBMITTED"},
}


def test_scenes_are_every_scene_type_and_system() -> None:
    assert SCENES == [s.value for s in SceneType] + ["SYSTEM"]
    assert set(FACTS) == {s.value for s in SceneType}


@pytest.mark.parametrize("scene", list(FACTS))
def test_trade_sample(scene: str) -> None:
    event = sample_event(scene, broker="cw-spot", broker_kind="coinw")
    assert (event.event_type, event.scene, event.broker, event.order_id) == (
        "TRADE", scene, "cw-spot", "TEST0001")
    payload = event.payload
    assert (payload["scene_type"], payload["broker_kind"], payload["symbol"]) == (
        scene, "coinw", "2890")
    assert {k: payload[k] for k in FACTS[scene]} == FACTS[scene]
    back = OrderEvent.from_json(json.loads(json.dumps(event.to_json())))
    assert (back.id, back.scene, back.payload) == (event.id, event.scene, event.payload)


def test_system_sample_names_the_broker() -> None:
    event = sample_event("SYSTEM", broker="lp-hk")
    assert (event.event_type, event.scene, event.broker) == ("SYSTEM", "BROKER_UNREACHABLE",
                                                             "lp-hk")
    assert event.payload["message"] == "lp-hk: test message from poller test-notify"


def test_scene_members_work_like_their_names() -> None:
    def timeless(event: OrderEvent) -> dict[str, Any]:
        return {k: v for k, v in event.payload.items() if k not in ("event_time", "detected_at")}

    for scene in SceneType:
        assert timeless(sample_event(scene)) == timeless(sample_event(scene.value))


def test_every_sample_is_a_different_event() -> None:
    ids = [sample_event(scene).id for scene in SCENES]
    assert len(set(ids)) == len(SCENES)


def test_unknown_scene_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError) as caught:
        sample_event("FILLD")
    assert str(caught.value) == f"unknown scene 'FILLD' (known: {', '.join(SCENES)})"

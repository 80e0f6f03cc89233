"""The batch a poll commits: later reads of one poll see its earlier snapshots; it is empty
until it holds something to write (effects alone do not make a commit)."""

from __future__ import annotations

from poller.models import OrderStatus
from poller.records import ActionRow, Batch
from tests.scripted import order


def test_put_and_latest_follow_the_last_snapshot_of_each_order() -> None:
    batch = Batch()
    assert not batch and batch.latest(("cx", "A", "1")) is None
    batch.put(order("1"))
    batch.put(order("1", OrderStatus.PARTIAL_FILLED, filled=2))
    batch.put(order("2"))
    assert bool(batch) and len(batch.snapshots) == 3
    assert batch.latest(("cx", "A", "1")).filled_qty == 2  # type: ignore[union-attr]
    assert Batch(snapshots=[order("3")]).latest(("cx", "A", "3")) == order("3")


def test_effects_and_routes_alone_are_nothing_to_commit() -> None:
    batch = Batch(routes={"e": ("hook",)}, effects=[lambda: None])
    assert not batch
    for field in ("events", "seen", "stale", "baselined"):
        assert not Batch(**{field: []})
    assert Batch(missing={("cx", "A", "1"): 1})


def test_an_action_is_done_once_its_outcome_is_known() -> None:
    row = ActionRow(1, "cx", "A", "1", "cancel", None, None, "sent", 1, "", "", "", "")
    assert not row.done
    assert ActionRow(*(row.__dict__[f] if f != "state" else "failed"
                       for f in row.__dataclass_fields__)).done

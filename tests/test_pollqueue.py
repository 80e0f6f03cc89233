"""The per-order poll queue: urgent first (by due time), then fair round-robin."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from poller.pollqueue import OrderQueue


def test_round_robin_is_fair() -> None:
    queue: OrderQueue[str] = OrderQueue()
    for key in "abcde":
        queue.add(key)
    seen = []
    for step in range(50):
        key = queue.pop(float(step))
        assert key is not None
        seen.append(key)
        queue.polled(key, float(step))
    assert Counter(seen) == {k: 10 for k in "abcde"}
    assert seen[:5] == list("abcde") and seen[5:10] == list("abcde")


def test_urgent_orders_jump_the_queue_when_due() -> None:
    queue: OrderQueue[str] = OrderQueue()
    for key in "abc":
        queue.add(key, last_polled=0.0)
    queue.urgent("x", due=5.0)
    queue.urgent("b", due=2.0)
    order = []
    for now in (1.0, 2.0, 3.0, 5.0, 6.0):
        key = queue.pop(now)
        assert key is not None
        order.append(key)
        queue.polled(key, now)
    assert order == ["a", "b", "c", "x", "a"]
    assert queue.next_due() is None


def test_an_earlier_due_time_wins_and_discard_forgets() -> None:
    queue: OrderQueue[str] = OrderQueue()
    queue.urgent("a", 10.0)
    queue.urgent("a", 3.0)
    queue.urgent("a", 7.0)
    assert queue.next_due() == 3.0
    queue.add("b")
    queue.discard("b")
    queue.discard("a")
    assert queue.pop(100.0) is None and queue.next_due() is None


def test_a_key_being_polled_is_not_handed_out_twice() -> None:
    queue: OrderQueue[str] = OrderQueue()
    queue.add("a")
    assert queue.pop(0.0) == "a"
    queue.urgent("a", 0.0)
    assert queue.pop(0.0) == "a"  # urgent request honoured…
    assert queue.pop(0.0) is None  # …but never twice at once
    queue.polled("a", 1.0)
    assert queue.pop(1.0) == "a"


@given(st.lists(st.tuples(st.sampled_from(["add", "discard", "urgent", "poll"]),
                          st.integers(0, 9), st.floats(0, 100)), max_size=200))
def test_every_member_keeps_being_polled(ops: list[tuple[str, int, float]]) -> None:
    """Whatever happened before, each remaining member is polled within one full round."""
    queue: OrderQueue[int] = OrderQueue()
    now = 0.0
    for op, key, due in ops:
        now += 0.1
        if op == "add":
            queue.add(key)
        elif op == "discard":
            queue.discard(key)
        elif op == "urgent":
            queue.urgent(key, due)
        else:
            got = queue.pop(now)
            if got is not None:
                queue.polled(got, now)
    members = {k for k in range(10) if k in queue}
    seen: set[int] = set()
    for _ in range(len(members) + 20):
        now += 1000.0
        got = queue.pop(now)
        if got is None:
            break
        seen.add(got)
        queue.polled(got, now)
    assert members <= seen

"""The pacer on a virtual-time loop: limits never exceeded, buckets per loop and target,
pauses, long waits handed back; and the declarations notifiers make."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from poller.errors import DeliveryRateLimited, DeliveryRetryable, NotifierConfigError
from poller.notifiers import Notifier, NotifierConfig
from poller.pacing import DEFAULT_PAUSE, Pace, Pacer, pad
from poller.simulator.httpserver import SlidingWindow
from tests.notifiers.virtualtime import VirtualClock, no_io, run


class PacedConfig(NotifierConfig):
    kind: str = "paced"
    per_second: float = Field(default=1.0, gt=0)


def is_group(target: str) -> bool:
    return target.startswith("-")


BOT = Pace(30)
CHAT = Pace("per_second", per_target=True)
GROUP = Pace(20, per=60.0, per_target=True, applies_to=is_group)


def pacer(*paces: Pace, **config: Any) -> Pacer:
    return Pacer(paces, PacedConfig(**config), name="paced test")


def on_virtual_time(main: Callable[[VirtualClock], Awaitable[Any]]) -> Any:
    """Run ``main(clock)`` on a loop doing no I/O, whose every wait is skipped."""
    clock = no_io()

    async def wrapped() -> Any:
        return await main(clock)

    return run(wrapped(), clock)


async def send(p: Pacer, clock: VirtualClock, target: str | None, n: int,
               longest: float = math.inf) -> list[float]:
    """Acquire ``n`` times for ``target``; the (virtual) instants each was admitted."""
    times = []
    for _ in range(n):
        await p.acquire(target, longest=longest)
        times.append(clock.now)
    return times


def within(times: list[float], count: int, per: float) -> bool:
    window = SlidingWindow(count, per)
    return all(window.admit(t) for t in times)


# --- never more than the limit ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 40), per=st.sampled_from([0.5, 1.0, 2.0, 60.0, 3600.0]),
       n=st.integers(2, 60))
def test_never_more_than_count_per_period(count: int, per: float, n: int) -> None:
    times = on_virtual_time(lambda clock: send(pacer(Pace(count, per=per)), clock, None, n))
    assert within(times, count, per)
    # ... and not much less: one message every (per + pad) / count seconds.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= (per + pad(per)) / count + 0.002


def test_a_fraction_per_second_is_one_message_every_so_many_seconds() -> None:
    times = on_virtual_time(lambda clock: send(pacer(CHAT, per_second=0.25), clock, "x", 4))
    assert within(times, 1, 4.0) and times[-1] - times[0] < 3 * 4.5


def test_concurrent_senders_share_the_buckets_without_exceeding_them() -> None:
    async def main(clock: VirtualClock) -> dict[str, list[float]]:
        p = pacer(Pace(5), CHAT, GROUP)
        targets = ["a", "b", "-g", "-h"]
        found = await asyncio.gather(*(send(p, clock, t, 12) for t in targets))
        return dict(zip(targets, found, strict=True))

    times = on_virtual_time(main)
    assert within(sorted(t for ts in times.values() for t in ts), 5, 1.0)  # the shared one
    for target, ts in times.items():
        assert within(ts, 1, 1.0), target  # per chat
    assert within(times["-g"], 20, 60.0) and within(times["-h"], 20, 60.0)


# --- buckets: per loop, per target ------------------------------------------------------


def test_buckets_are_made_inside_the_running_loop_and_anew_in_each() -> None:
    p = pacer(CHAT)  # outside any loop: nothing is made yet

    async def first_use(clock: VirtualClock) -> tuple[object, list[float]]:
        times = await send(p, clock, "x", 2)
        return p.buckets("x")[0], times

    # A second loop gets buckets of its own: nothing carried over (so no aiolimiter warning
    # about reuse across loops, which the test settings turn into an error).
    one, times_one = on_virtual_time(first_use)
    two, times_two = on_virtual_time(first_use)
    assert one is not two
    assert times_one[1] - times_one[0] >= 1.0 and times_two[1] - times_two[0] >= 1.0
    with pytest.raises(RuntimeError):
        p.buckets("x")  # and never outside a running loop


def test_per_target_buckets_and_limits_for_some_targets_only() -> None:
    async def main(clock: VirtualClock) -> None:
        p = pacer(BOT, CHAT, GROUP)
        assert len(p.buckets("111")) == 2 and len(p.buckets("-100")) == 3
        assert p.buckets("111")[0] is p.buckets("-100")[0]  # the bot-wide bucket is shared
        assert p.buckets("111")[1] is not p.buckets("222")[1]
        await p.acquire("111", longest=0)
        assert p.wait_time("111") > 0.9  # that chat's second
        assert 0 < p.wait_time("222") < 0.1  # another chat: only the bot-wide spacing
        assert [b.taken for b in p.buckets("-100")] == [1, 0, 0]

    on_virtual_time(main)


# --- pauses and hand-back ---------------------------------------------------------------


def test_a_pause_holds_every_bucket_of_the_target() -> None:
    async def main(clock: VirtualClock) -> None:
        p = pacer(BOT, CHAT)
        p.pause("111", 4.0)
        assert p.wait_time("111") == pytest.approx(4.0)
        assert p.wait_time("222") == pytest.approx(4.0)  # the shared bucket is paused too
        start = clock.now
        await p.acquire("222", longest=5.0)  # shorter than longest: slept through
        assert clock.now - start == pytest.approx(4.0, abs=1e-3)

    on_virtual_time(main)


def test_a_long_wait_is_handed_back_with_retry_after_and_takes_nothing() -> None:
    async def main(clock: VirtualClock) -> None:
        p = pacer(CHAT, per_second=0.1)  # one every 10.5 s
        await p.acquire("x", longest=5.0)
        with pytest.raises(DeliveryRateLimited) as caught:
            await p.acquire("x", longest=5.0)
        assert caught.value.retry_after == pytest.approx(10.5)
        assert "paced test: holding back messages to x" in str(caught.value)
        assert "per_second (0.1 per 1 s)" in str(caught.value)
        assert p.buckets("x")[0].taken == 1  # nothing taken by the refused one
        clock.advance(caught.value.retry_after or 0.0)
        await p.acquire("x", longest=0.0)  # exactly then, it fits without a wait

        p.pause("x", 60.0)
        with pytest.raises(DeliveryRateLimited, match="a pause the service asked for"):
            await p.acquire("x", longest=5.0)

    on_virtual_time(main)


# --- declarations -----------------------------------------------------------------------


def test_a_pace_reads_its_figure_from_the_config() -> None:
    assert CHAT.figure(PacedConfig(per_second=0.5)) == 0.5
    assert CHAT.interval(PacedConfig(per_second=0.5)) == pytest.approx(2.1)
    assert CHAT.describe(PacedConfig()) == "per_second (1 per 1 s)"
    assert GROUP.describe(PacedConfig()) == "20 per 60 s"
    with pytest.raises(ValueError, match="positive"):
        Pace(0)
    with pytest.raises(ValueError, match="positive"):
        Pace(1, per=0)


class Paced(Notifier[PacedConfig]):
    kind: ClassVar[str] = "paced"
    Config: ClassVar[type[NotifierConfig]] = PacedConfig
    pacing: ClassVar[tuple[Pace, ...]] = (CHAT,)

    def __init__(self, config: PacedConfig, fail: Exception | None = None) -> None:
        super().__init__("desk", config)
        self.fail = fail
        self.sent = 0

    async def send_message(self, message: Any) -> None:
        async with self.pace("chat"):
            if self.fail is not None:
                raise self.fail
            self.sent += 1


@pytest.mark.parametrize(("fail", "paused"), [
    (DeliveryRateLimited("429", retry_after=3.0), 3.0),
    (DeliveryRateLimited("429"), DEFAULT_PAUSE),
    (DeliveryRetryable("503", retry_after=3.0), None),  # not a rate limit: no pause
])
def test_a_rate_limit_answer_inside_pace_pauses_the_target(fail: Exception,
                                                          paused: float | None) -> None:
    async def main(clock: VirtualClock) -> float:
        notifier = Paced(PacedConfig(per_second=1.0, timeout=120), fail)
        with pytest.raises(type(fail)):
            await notifier.send_message(None)
        return notifier.pacer.wait_time("chat")

    wait = on_virtual_time(main)
    assert wait == pytest.approx(paused if paused is not None else 1.05)


def test_waits_over_half_the_timeout_are_handed_back_by_default() -> None:
    async def main(clock: VirtualClock) -> None:
        notifier = Paced(PacedConfig(per_second=0.2, timeout=10))  # one every 5.25 s
        await notifier.send_message(None)
        with pytest.raises(DeliveryRateLimited):
            await notifier.send_message(None)
        notifier = Paced(PacedConfig(per_second=0.2, timeout=12))  # 5.25 <= 6: slept
        await notifier.send_message(None)
        await notifier.send_message(None)
        assert notifier.sent == 2

    on_virtual_time(main)


def test_class_checks() -> None:
    with pytest.raises(TypeError, match="does not have"):
        class Typo(Notifier[PacedConfig]):
            Config = PacedConfig
            pacing = (Pace("per_secnd"),)
    with pytest.raises(TypeError, match=r"Config is NotifierConfig, but the class is a "
                                        r"Notifier\[PacedConfig\]"):
        class Forgot(Notifier[PacedConfig]):
            kind = "forgot"


def test_a_config_of_another_notifier_is_refused() -> None:
    with pytest.raises(NotifierConfigError, match="needs a PacedConfig, got NotifierConfig"):
        Paced(NotifierConfig(kind="paced"))  # type: ignore[arg-type]

"""The latency histogram: Prometheus' bucket rules, and consistent reads from another
thread while one thread observes."""

from __future__ import annotations

import math
import threading

import pytest

from poller.latencyhistogram import DEFAULT_BUCKETS, LatencyHistogram


def test_an_empty_histogram_has_every_bucket_at_zero() -> None:
    histogram = LatencyHistogram()
    assert histogram.buckets() == [(b, 0) for b in (*DEFAULT_BUCKETS, math.inf)]
    assert (histogram.sum, histogram.count) == (0.0, 0)


@pytest.mark.parametrize(("seconds", "first_bucket"), [
    (0.0, 0.1),
    (0.1, 0.1),  # bounds are inclusive, like Prometheus' `le`
    (0.1000001, 0.25),
    (299.9, 300.0),
    (300.0, 300.0),
    (301.0, math.inf),
    (1e9, math.inf),
])
def test_an_observation_counts_in_its_bucket_and_every_later_one(seconds: float,
                                                                 first_bucket: float) -> None:
    histogram = LatencyHistogram()
    histogram.observe(seconds)
    assert histogram.buckets() == [(b, int(b >= first_bucket))
                                   for b in (*DEFAULT_BUCKETS, math.inf)]
    assert (histogram.sum, histogram.count) == (seconds, 1)


def test_buckets_are_cumulative_and_end_with_the_count() -> None:
    histogram = LatencyHistogram([1, 10])
    for seconds in (0.5, 0.7, 3.0, 11.0, 12.0, 13.0):
        histogram.observe(seconds)
    assert histogram.buckets() == [(1.0, 2), (10.0, 3), (math.inf, 6)]
    assert histogram.count == 6
    assert histogram.sum == pytest.approx(40.2)
    assert histogram.snapshot() == (histogram.buckets(), histogram.sum)


def test_clock_skew_counts_as_no_latency() -> None:
    histogram = LatencyHistogram([1])
    histogram.observe(-2.0)
    assert (histogram.buckets(), histogram.sum, histogram.count) == ([(1.0, 1), (math.inf, 1)],
                                                                    0.0, 1)


@pytest.mark.parametrize("bounds", [[2, 1], [1, 1], [float("nan")]])
def test_bounds_must_ascend(bounds: list[float]) -> None:
    with pytest.raises(ValueError, match="ascend"):
        LatencyHistogram(bounds)


def test_an_infinite_bound_given_is_the_one_added() -> None:
    assert LatencyHistogram([1, math.inf]).buckets() == [(1.0, 0), (math.inf, 0)]


def test_reads_from_another_thread_never_mix_moments() -> None:
    """Every observation is 1 s: a consistent snapshot has sum == +Inf count, and buckets
    that never shrink from one read to the next."""
    histogram = LatencyHistogram([0.5, 2])
    total = 20_000
    reads: list[tuple[list[tuple[float, int]], float]] = []
    done = threading.Event()

    def write() -> None:
        for _ in range(total):
            histogram.observe(1.0)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        reads.append(histogram.snapshot())
    writer.join(timeout=30)
    reads.append(histogram.snapshot())
    for buckets, total_sum in reads:
        assert buckets[0] == (0.5, 0)
        assert buckets[1][1] == buckets[2][1] == total_sum
    counts = [buckets[2][1] for buckets, _ in reads]
    assert counts == sorted(counts) and counts[-1] == total == histogram.count

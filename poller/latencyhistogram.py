"""A cumulative latency histogram one thread writes and another reads.

The dispatcher observes each delivery's detection-to-delivery latency on the event loop; the
metrics server reads it from its own thread at scrape time. Counts only ever grow, so the
histogram Prometheus derives quantiles from (``histogram_quantile``) is exact over the
daemon's whole life, unlike a window of recent samples.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable

#: Seconds from detection to delivery: a webhook on loopback takes well under a second, a
#: notifier retrying through an outage takes minutes.
DEFAULT_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class LatencyHistogram:
    """Counts observations per bucket; reads are consistent copies taken under a lock.

    :param bounds: the buckets' upper bounds (inclusive, as Prometheus' ``le``), ascending;
        a last ``+Inf`` bucket is always added.
    """

    def __init__(self, bounds: Iterable[float] = DEFAULT_BUCKETS) -> None:
        upper = [float(b) for b in bounds if not math.isinf(b)]
        if upper != sorted(set(upper)) or any(math.isnan(b) for b in upper):
            raise ValueError(f"bucket bounds must ascend without repeats: {upper}")
        self._bounds: tuple[float, ...] = (*upper, math.inf)
        self._counts = [0] * len(self._bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Record one latency (a negative one, from clock skew, counts as 0)."""
        value = max(0.0, seconds)
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._count += 1

    def buckets(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` per bucket, cumulative; the last bound is
        ``math.inf`` and its count equals :attr:`count` of the same moment."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative buckets and the sum, read together (a scrape must not mix moments)."""
        with self._lock:
            counts, total_sum = list(self._counts), self._sum
        cumulative: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip(self._bounds, counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return cumulative, total_sum

    @property
    def sum(self) -> float:
        """Seconds observed in all."""
        with self._lock:
            return self._sum

    @property
    def count(self) -> int:
        """Observations made."""
        with self._lock:
            return self._count

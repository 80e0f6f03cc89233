"""The peers poller is measured against: CoinW per-order pollers built the usual ways.

* ``naive``: ``aiolimiter.AsyncLimiter(30, 2)`` per endpoint — what most bots do with a
  "30 per 2 s" limit (a leaky bucket: a burst of 30, then 15/s);
* ``window``: a sliding-window log of 30 per 2 s with a 5 % margin (Hummingbot-style).

Each keeps 8 requests in flight over the orders round-robin, each one ``returnOrderTrades``
(CoinW's order detail: status and filled quantity in one answer, as JKorf's CoinW.Net reads
an order and as poller does); a fill is "seen" when that quantity grows. They count CoinW's
refusals (code 29001).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from poller.brokers.coinw import PRIVATE_PATH, signed_query


class SlidingWindow(AbstractAsyncContextManager[None]):
    """At most ``count`` starts in any ``window`` seconds (a log of start times)."""

    def __init__(self, count: int, window: float) -> None:
        self.count, self.window = count, window
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._starts and self._starts[0] <= now - self.window:
                    self._starts.popleft()
                if len(self._starts) < self.count:
                    self._starts.append(now)
                    return
                await asyncio.sleep(self._starts[0] + self.window - now)

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclass
class PeerResult:
    """What one peer run measured on its side."""

    seen: list[tuple[float, str, Decimal]] = field(default_factory=list)
    refused: int = 0
    cpu: float = 0.0


async def run_peer(strategy: str, url: str, table: dict[str, Any], order_ids: list[str],
                   duration: float, in_flight: int = 8) -> PeerResult:
    """Poll every order round-robin for ``duration`` seconds the ``strategy`` way."""
    def limiter() -> AbstractAsyncContextManager[None]:
        return AsyncLimiter(30, 2.0) if strategy == "naive" else SlidingWindow(30, 2.1)

    limit = limiter()
    key, secret = table["api_key"], table["secret_key"]
    result = PeerResult()
    filled: dict[str, Decimal] = {}
    ids = itertools.cycle(order_ids)
    deadline = time.monotonic() + duration
    cpu0 = time.process_time()

    async def call(client: httpx.AsyncClient, command: str, order_id: str) -> Any:
        query = signed_query(command, {"orderNumber": order_id}, key, secret)
        answer = await client.post(PRIVATE_PATH, params=tuple(query))
        body = answer.json()
        if str(body.get("code")) == "29001":
            result.refused += 1
            return None
        return body.get("data")

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            order_id = next(ids)
            async with limit:
                detail = await call(client, "returnOrderTrades", order_id)
            if detail:
                now = Decimal(str(detail.get("success_total") or 0))
                if now > filled.get(order_id, Decimal(0)):
                    filled[order_id] = now
                    result.seen.append((time.monotonic(), order_id, now))

    limits = httpx.Limits(max_connections=in_flight + 2)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
    result.cpu = time.process_time() - cpu0
    return result

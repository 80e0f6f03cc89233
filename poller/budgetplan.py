"""What a connection's rate budget buys: the figures ``poller check-config`` prints.

For each limit group: the documented limit, the share poller uses, how much of it the fixed
list calls take, and what is left for per-order polls ("40 open orders on returnOrderTrades →
each refreshed every 3.3 s"). A configuration whose list calls alone need more than a group
allows is refused: it could only run by breaking the broker's contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from poller.adapter import BrokerAdapter, BrokerConfig, RequestKind
from poller.ratelimit import RateBudget


@dataclass(frozen=True)
class GroupPlan:
    """The budget of one limit group and its use."""

    name: str
    documented: str
    allowed: int
    window: float
    rate: float
    list_rate: float
    share: float = 1.0
    pad: float = 0.0
    max_pad: float = 0.0

    @property
    def spare_rate(self) -> float:
        """Requests per second left after the list calls."""
        return max(0.0, self.rate - self.list_rate)


def list_scopes(cls: type[BrokerAdapter[Any]], config: BrokerConfig, budget: RateBudget) -> int:
    """How many list calls one interval makes (an adapter built only to ask; no I/O)."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(599)))
    return len(cls("check", config, client, budget).scopes())


def plan(cls: type[BrokerAdapter[Any]], config: BrokerConfig, budget: RateBudget
         ) -> list[GroupPlan]:
    """The plan of every limit group of one connection."""
    calls = list_scopes(cls, config, budget) / config.interval
    list_groups = set(cls.request_groups.get(RequestKind.LIST, ()))
    return [
        GroupPlan(
            name=g.name, documented=str(g.spec), allowed=g.allowed, window=g.base_window,
            rate=g.rate, list_rate=calls if g.name in list_groups else 0.0, share=g.share,
            pad=round(g.pad, 3), max_pad=round(g.max_pad, 3))
        for g in budget.groups.values()
    ]


def describe(cls: type[BrokerAdapter[Any]], config: BrokerConfig, plans: list[GroupPlan],
             open_orders: int | None) -> list[str]:
    """Human-readable lines for check-config."""
    lines = []
    detail = set(cls.request_groups.get(RequestKind.DETAIL, ()))
    per_order = cls.per_order_polling if config.per_order_polling is None \
        else config.per_order_polling
    for p in plans:
        text = (f"  limit {p.name}: documented {p.documented}; share {p.share:g} → "
                f"{p.allowed} per {p.window:g} s, window padded {p.pad:g} s (follows the "
                f"measured round-trip jitter, up to {p.max_pad:g} s) → {p.rate:.2f}/s")
        if p.list_rate:
            text += f"; list calls take {p.list_rate:.2f}/s"
        lines.append(text)
        if p.name in detail and per_order:
            n = open_orders if open_orders is not None else 40
            source = "open orders now" if open_orders is not None else "open orders (example)"
            if p.spare_rate > 0 and n:
                lines.append(f"    {n} {source} on {p.name} → each refreshed every "
                             f"{n / p.spare_rate:.2f} s")
    note = cls.discovery_note(config)
    if note:
        lines.append(f"  discovery: {note}")
    return lines


def problems(cls: type[BrokerAdapter[Any]], config: BrokerConfig, budget: RateBudget
             ) -> list[tuple[str, str]]:
    """(key, message) for every group whose fixed list calls alone exceed its budget."""
    found = []
    for p in plan(cls, config, budget):
        if p.list_rate > p.rate:
            found.append(("interval", (
                f"list calls every {config.interval:g} s need {p.list_rate:.2f} requests/s of "
                f"limit group {p.name}, but it allows {p.rate:.2f}/s ({p.documented}, share "
                f"{config.share:g}); raise the interval")))
    return found

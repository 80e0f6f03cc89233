"""What a connection's budget buys, for a known configuration: CoinW spot with two pairs."""

from __future__ import annotations

from typing import Any

import pytest

from poller import budgetplan
from poller.brokers.coinw import CoinWAdapter, CoinWConfig
from poller.compose import build_budget

RATE_30_PER_2S = 24 / 2.06  # 80 % of 30, over 2 s padded by 60 ms
RATE_300_PER_S = 240 / 1.05  # 80 % of 300, over 1 s padded by 50 ms


def coinw(**table: Any) -> CoinWConfig:
    return CoinWConfig.model_validate({
        "kind": "coinw", "base_url": "https://api.coinw.com", "api_key": "k",
        "secret_key": "s", "pairs": ["BTC_USDT", "ETH_USDT"], "interval": 5, **table})


def plan_of(config: CoinWConfig) -> list[budgetplan.GroupPlan]:
    return budgetplan.plan(CoinWAdapter, config, build_budget(CoinWAdapter, config))


def test_one_list_call_per_pair() -> None:
    config = coinw(pairs=["BTC_USDT", "ETH_USDT", "CWT_USDT"])
    assert budgetplan.list_scopes(CoinWAdapter, config, build_budget(CoinWAdapter, config)) == 3


def test_plan_figures() -> None:
    plans = {p.name: p for p in plan_of(coinw())}
    assert list(plans) == ["returnOpenOrders", "returnOrderStatus", "returnOrderTrades",
                           "cancelOrder", "uid"]
    for name in ("returnOpenOrders", "returnOrderStatus", "returnOrderTrades", "cancelOrder"):
        p = plans[name]
        assert (p.documented, p.allowed, p.window) == ("30/2s", 24, 2.0)
        assert p.rate == pytest.approx(RATE_30_PER_2S)
    uid = plans["uid"]
    assert (uid.documented, uid.allowed, uid.window) == ("300/1s", 240, 1.0)
    assert uid.rate == pytest.approx(RATE_300_PER_S)
    # Two pairs every 5 s use the list group and the account-wide uid group, nothing else.
    assert {n: p.list_rate for n, p in plans.items()} == {
        "returnOpenOrders": pytest.approx(0.4), "returnOrderStatus": 0.0,
        "returnOrderTrades": 0.0, "cancelOrder": 0.0, "uid": pytest.approx(0.4)}
    assert plans["returnOpenOrders"].spare_rate == pytest.approx(RATE_30_PER_2S - 0.4)
    assert plans["cancelOrder"].spare_rate == pytest.approx(RATE_30_PER_2S)


def test_spare_rate_is_never_negative() -> None:
    p = budgetplan.GroupPlan("g", "1/1s", 1, 1.25, rate=0.77, list_rate=2.0)
    assert p.spare_rate == 0.0


def test_share_and_a_lowered_limit_change_the_figures() -> None:
    halved = {p.name: p for p in plan_of(coinw(share=0.5))}
    assert halved["returnOpenOrders"].allowed == 15
    assert halved["returnOpenOrders"].rate == pytest.approx(15 / 2.06)
    # A limit lowered below one request per share stretches the window instead.
    lowered = {p.name: p for p in plan_of(coinw(limits={"returnOpenOrders": "1/1s"}))}
    one = lowered["returnOpenOrders"]
    assert (one.allowed, one.window) == (1, 1.25)
    assert one.rate == pytest.approx(1 / 1.30)


PAD = "window padded 0.06 s (follows the measured round-trip jitter, up to 1 s)"
LINES = [
    f"  limit returnOpenOrders: documented 30/2s; share 0.8 → 24 per 2 s, {PAD} → 11.65/s; "
    "list calls take 0.40/s",
    f"  limit returnOrderStatus: documented 30/2s; share 0.8 → 24 per 2 s, {PAD} → 11.65/s",
    f"  limit returnOrderTrades: documented 30/2s; share 0.8 → 24 per 2 s, {PAD} → 11.65/s",
    f"  limit cancelOrder: documented 30/2s; share 0.8 → 24 per 2 s, {PAD} → 11.65/s",
    "  limit uid: documented 300/1s; share 0.8 → 240 per 1 s, window padded 0.05 s (follows "
    "the measured round-trip jitter, up to 0.5 s) → 228.57/s; list calls take 0.40/s",
]


@pytest.mark.parametrize(("per_order", "open_orders", "refresh"), [
    (None, None, []),  # CoinW confirms finished orders only: no round-robin to describe
    (False, 12, []),
    (True, None, [(3, "    40 open orders (example) on returnOrderTrades → each refreshed "
                      "every 3.43 s"),
                  (6, "    40 open orders (example) on uid → each refreshed every 0.18 s")]),
    (True, 12, [(3, "    12 open orders now on returnOrderTrades → each refreshed every 1.03 s"),
                (6, "    12 open orders now on uid → each refreshed every 0.05 s")]),
    (True, 0, []),
])
def test_describe(per_order: bool | None, open_orders: int | None,
                  refresh: list[tuple[int, str]]) -> None:
    config = coinw(per_order_polling=per_order)
    expected = list(LINES)
    for index, line in refresh:
        expected.insert(index, line)
    assert budgetplan.describe(CoinWAdapter, config, plan_of(config), open_orders) == expected


@pytest.mark.parametrize("interval", [5, 1, 0.18])
def test_an_interval_the_budget_keeps_is_accepted(interval: float) -> None:
    config = coinw(interval=interval)
    assert budgetplan.problems(CoinWAdapter, config, build_budget(CoinWAdapter, config)) == []


@pytest.mark.parametrize(("table", "need", "allows", "spec", "share"), [
    ({"interval": 0.17}, "0.17 s need 11.76", "11.65", "30/2s", "0.8"),
    ({"interval": 0.1}, "0.1 s need 20.00", "11.65", "30/2s", "0.8"),
    ({"interval": 0.25, "share": 0.5}, "0.25 s need 8.00", "7.28", "30/2s", "0.5"),
    ({"interval": 2, "limits": {"returnOpenOrders": "1/1s"}}, "2 s need 1.00", "0.77", "1/1s",
     "0.8"),
])
def test_an_interval_the_budget_cannot_keep_is_refused(
        table: dict[str, Any], need: str, allows: str, spec: str, share: str) -> None:
    config = coinw(**table)
    assert budgetplan.problems(CoinWAdapter, config, build_budget(CoinWAdapter, config)) == [
        ("interval", f"list calls every {need} requests/s of limit group returnOpenOrders, but "
                     f"it allows {allows}/s ({spec}, share {share}); raise the interval")]

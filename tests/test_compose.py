"""Composition: every table validated in one pass, budgets from documented limits, parts built
with their own clients — the same for check-config, start and reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from poller.compose import Validated, build_adapter, build_budget, build_notifier, load, validate
from poller.errors import ConfigError
from poller.plugins import get_plugin_manager
from poller.settings import load_settings

SHIOAJI = {"kind": "shioaji", "base_url": "http://127.0.0.1:9",
           "accounts": [{"broker_id": "9A95", "account_id": "1"}]}
COINW = {"kind": "coinw", "base_url": "http://127.0.0.1:9", "api_key": "key-1234",
         "secret_key": "sec-1234", "pairs": ["BTC_USDT"]}


def validated(brokers: dict[str, dict[str, object]],
              notifiers: dict[str, dict[str, object]] | None = None) -> Validated:
    settings = load_settings(data={"brokers": brokers, "notifiers": notifiers or {}})
    return validate(settings, get_plugin_manager().registry(), "c.toml")


def test_every_problem_of_every_table_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        validated({"a": {"kind": "nosuch", "base_url": "http://x"},
                   "b": {**SHIOAJI, "interval": -1},
                   "c": {**SHIOAJI, "per_order_polling": True},
                   "d": {**COINW, "limits": {"returnOrderStatus": "60/2s"}}},
                  {"n": {"kind": "webhook"}})
    lines = [str(p) for p in caught.value.problems]
    assert any(line.startswith("c.toml: brokers.a.kind: unknown kind 'nosuch'") for line in lines)
    assert any(line.startswith("c.toml: brokers.b.interval:") for line in lines)
    assert "c.toml: brokers.c.per_order_polling: shioaji has no per-order call" in lines
    assert any(line.startswith("c.toml: brokers.d.limits.returnOrderStatus: 60/2s is above "
                               "the documented limit 30/2s") for line in lines)
    assert "c.toml: notifiers.n.url: required key is missing" in lines


def test_a_budget_keeps_documented_spacing_and_takes_a_lowered_limit() -> None:
    v = validated({"lp": {"kind": "longport", "base_url": "http://127.0.0.1:9",
                          "access_token": "tok-1234", "app_key": "k-1234",
                          "app_secret": "s-1234", "limits": {"trade": "10/30s"}, "interval": 5.0,
                          "share": 1.0}})
    cls, cfg = v.brokers["lp"]
    group = build_budget(cls, cfg).group("trade")
    assert (group.spec.count, group.spec.window, group.spec.spacing) == (10, 30.0, 0.02)
    assert group.allowed == 10
    assert sorted(v.secrets()) == ["k-1234", "s-1234", "tok-1234"]


def test_load_reads_the_file_with_its_plugins_and_parts_get_their_own_clients(
        tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[brokers.cw]\nkind = "coinw"\nbase_url = "http://127.0.0.1:9"\n'
                    'api_key = "key-1234"\nsecret_key = "sec-1234"\npairs = ["BTC_USDT"]\n'
                    '[notifiers.out]\nkind = "console"\n'
                    '[notifiers.hook]\nkind = "webhook"\nurl = "http://127.0.0.1:9/h"\n')
    loaded = load(path)
    cls, cfg = loaded.validated.brokers["cw"]

    async def build() -> tuple[bool, bool, bool]:
        adapter = build_adapter("cw", cls, cfg)
        console = build_notifier("out", *loaded.validated.notifiers["out"])
        hook = build_notifier("hook", *loaded.validated.notifiers["hook"])
        result = (adapter.client is not None, console.client is None, hook.client is not None)
        for part in (adapter, console, hook):
            await part.aclose()
        return result

    assert asyncio.run(build()) == (True, True, True)

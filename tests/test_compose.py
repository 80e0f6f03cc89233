"""Composition: every table validated in one pass, budgets from documented limits, parts built
with their own clients — the same for check-config, start and reload."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from poller.compose import (
    Validated,
    build_adapter,
    build_budget,
    build_notifier,
    exposed_secrets,
    load,
    validate,
)
from poller.errors import ConfigError
from poller.plugins import get_plugin_manager
from poller.settings import load_settings
from tests.rawhttp import RawServer, ok, serving

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


# --- Config mistakes are caught, all at once, with "did you mean". ---

BAD = """
[daemon]
databse = "/tmp/x.db"
log_level = "LOUD"

[brokers.tw-main]
kind = "shioaji"
base_url = "http://127.0.0.1:9"
intervall = 5
accounts = [{ broker_id = "9A95", account_id = "1" }]

[brokers.x]
kind = "shiaoji"

[notifiers.hook]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
scenes = ["FILED", "FINAL_FILLED"]
brokers = ["tw-mian"]
quiet_hours = { start = "22:00", end = "07:00", break_through = ["FINAL_FILED"] }
"""


def test_load_reports_every_stage_at_once_with_the_closest_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BAD)
    monkeypatch.setenv("POLLER_BROKERS__TW_MAIN__TIMEOUT", "soon")
    with pytest.raises(ConfigError) as caught:
        load(path)
    lines = {str(p) for p in caught.value.problems}
    where = str(path)
    assert lines == {
        # the [daemon] stage failed, and the brokers and notifiers were still checked
        f"{where}: daemon.databse: unknown key; did you mean 'database'?",
        f"{where}: daemon.log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
        f"{where}: brokers.tw-main.intervall: unknown key; did you mean 'interval'?",
        # a value from the environment is reported under its variable's name
        "environment variable POLLER_BROKERS__TW_MAIN__TIMEOUT: brokers.tw-main.timeout: "
        "Input should be a valid number, unable to parse string as a number",
        f"{where}: brokers.x.kind: unknown kind 'shiaoji'; did you mean 'shioaji'?",
        f"{where}: notifiers.hook.scenes: no scene 'FILED'; did you mean 'FILLED'?",
        f"{where}: notifiers.hook.brokers: no broker connection 'tw-mian'; did you mean "
        "'tw-main'?",
        f"{where}: notifiers.hook.quiet_hours.break_through: no scene 'FINAL_FILED'; did you "
        "mean 'FINAL_FILLED'?",
    }


def test_a_credential_file_is_named_as_the_source_of_its_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "brokers.c.share").write_text("lots\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = tmp_path / "c.toml"
    path.write_text('[brokers.c]\nkind = "coinw"\nbase_url = "http://127.0.0.1:9"\n'
                    'api_key = "key-1234"\nsecret_key = "sec-1234"\npairs = ["BTC_USDT"]\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [str(p) for p in caught.value.problems] == [
        f"credential file {creds / 'brokers.c.share'}: brokers.c.share: Input should be a "
        "valid number, unable to parse string as a number"]


def test_routing_by_system_scenes_and_real_names_passes() -> None:
    result = validated({"tw": SHIOAJI}, {"n": {
        "kind": "webhook", "url": "http://127.0.0.1:9/h", "brokers": ["tw"],
        "scenes": ["FINAL_FILLED", "NOTIFIER_DEAD_LETTER"],
        "quiet_hours": {"start": "22:00", "end": "07:00", "break_through": ["PLACE_FAILED"]}}})
    assert list(result.notifiers) == ["n"]


SLACK = 'kind = "slack"\nwebhook_url = "https://hooks.slack.com/services/T0000/B0000/XXXX1234"'


@pytest.mark.parametrize(("mode", "table", "warned"), [
    (0o644, SLACK, True),
    (0o600, SLACK, False),
    # a URL without a token holds no secret
    (0o644, 'kind = "webhook"\nurl = "https://example.com/hook"', False),
])
def test_a_world_readable_config_holding_a_secret_is_warned_about(
        tmp_path: Path, mode: int, table: str, warned: bool) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[notifiers.s]\n{table}\n")
    path.chmod(mode)
    warning = exposed_secrets(path, load(path).validated)
    assert (warning is not None) is warned
    if warning is not None:
        assert "readable by other users and holds a secret" in warning
        assert "XXXX1234" not in warning and "LoadCredential=" in warning


class Holding:
    """Answers CoinW calls (an order's detail, the open orders, a cancel) and, once told to,
    holds every answer until ``hold_until`` requests are open at once (at most 5 s),
    recording the most it saw open together."""

    DETAIL = {"code": "200", "msg": "SUCCESS", "data": {
        "tradeID": 11, "status": 2, "currencyPair": "BTC_USDT", "date": "2025-04-03 18:39:58",
        "total": "0.001", "type": "buy", "amount": "67", "success_total": "0.0002",
        "success_amount": "13.4", "fee": "0"}}
    LIST = {"code": "200", "msg": "SUCCESS", "data": []}
    CANCEL = {"code": "200", "msg": "SUCCESS", "data": {"clientOrderId": "11"}}

    def __init__(self) -> None:
        self.hold_until = 0
        self.open = 0
        self.most = 0
        self.enough = asyncio.Event()

    async def __call__(self, head: bytes, body: bytes) -> bytes:
        self.open += 1
        self.most = max(self.most, self.open)
        if self.hold_until and self.open >= self.hold_until:
            self.enough.set()
        if self.hold_until:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.enough.wait(), 5)
        self.open -= 1
        answer = (self.LIST if b"returnOpenOrders" in head else
                  self.CANCEL if b"cancelOrder" in head else self.DETAIL)
        return ok(json.dumps(answer).encode())


def test_a_coinw_connection_s_pool_has_room_for_every_poll_a_list_and_an_action() -> None:
    """Three orders polled at once with max_in_flight = 3, a list call and a cancel beside
    them: all five requests are on the wire together; none waits for a pooled connection,
    which would make it leave late and bunched with others."""
    holding = Holding()

    async def work(url: str, raw: RawServer) -> int:
        table: dict[str, object] = {**COINW, "base_url": url, "max_in_flight": 3}
        cls, cfg = validated({"cw": table}).brokers["cw"]
        adapter = build_adapter("cw", cls, cfg)
        try:
            ids = ["11", "12", "13"]
            known = await adapter.fetch_order("spot", "11")
            assert known is not None
            holding.hold_until = 5
            await asyncio.gather(*(adapter.fetch_order("spot", i) for i in ids),
                                 adapter.list_orders(adapter.scopes()[0]),
                                 adapter.cancel_order(known))
        finally:
            await adapter.aclose()
        return holding.most

    assert asyncio.run(serving(holding, work)) == 5

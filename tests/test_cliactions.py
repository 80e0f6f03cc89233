"""replace / cancel / watch refuse what a broker cannot do (exit 2), and say what to do when
no daemon answers (exit 75)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.cli import main
from tests.test_daemon import _toml


@pytest.fixture
def config(tmp_path: Path) -> Path:
    brokers = {
        "crypto": {"kind": "coinw", "base_url": "http://127.0.0.1:9", "api_key": "key-123456",
                   "secret_key": "sec-123456", "pairs": ["BTC_USDT"]},
        "tw": {"kind": "shioaji", "base_url": "http://127.0.0.1:9",
               "accounts": [{"broker_id": "9A95", "account_id": "1"},
                            {"broker_id": "9A95", "account_id": "2"}]},
        "us": {"kind": "webull", "base_url": "http://127.0.0.1:9", "app_key": "key-123456",
               "app_secret": "sec-123456", "account_ids": ["A1", "A2"],
               "interval": 6.0},
    }
    path = tmp_path / "config.toml"
    path.write_text(_toml({"daemon": {"database": str(tmp_path / "poller.db")},
                           "brokers": brokers, "notifiers": {}}))
    return path


@pytest.mark.parametrize(("argv", "code", "says"), [
    (["replace", "crypto", "1", "--price", "2"], 2,
     "poller: replace: coinw cannot replace orders through its API; cancel it and place a new one"),
    (["watch", "tw", "1"], 2, "shioaji has no per-order call"),
    (["watch", "us", "1"], 2, "us has several accounts; name one with --account"),
    (["replace", "tw", "1"], 2, "poller: replace: replace needs a new quantity and/or price"),
])
def test_what_a_broker_cannot_do_is_refused(config: Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], code: int, says: str) -> None:
    assert main([argv[0], "-c", str(config), *argv[1:]]) == code
    assert says in capsys.readouterr().err


def test_no_daemon_no_outcome_exit_75_and_the_way_out(config: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cancel", "-c", str(config), "us", "1", "--account", "A1",
                 "--timeout", "0.2"]) == 75
    out = capsys.readouterr().out
    assert "no outcome within 0.2 s (action 1 is queued; is `poller run` running?" in out
    assert "`poller actions --drop 1` takes it back" in out
    assert main(["watch", "-c", str(config), "us", "X9", "--account", "A2"]) == 0
    assert capsys.readouterr().out.strip() == "watching us X9"

"""orders, events and actions on a new database: clear words instead of empty tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.cli import main
from poller.store import Store


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    database = tmp_path / "poller.db"
    Store.open(database).close()
    return database


@pytest.mark.parametrize(("argv", "says"), [
    (["orders"], "no tracked orders"),
    (["events"], "no events yet"),
    (["actions"], "no queued actions"),
    (["actions", "--all"], "no actions"),
])
def test_an_empty_database_says_so(empty: Path, capsys: pytest.CaptureFixture[str],
                                   argv: list[str], says: str) -> None:
    assert main([*argv, "--database", str(empty), "-c", "/dev/null"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == says and len(lines) == 2  # the header, then the words


@pytest.mark.parametrize("argv", [["orders", "--json"], ["events", "--json"],
                                  ["actions", "--json"]])
def test_json_of_nothing_is_nothing(empty: Path, capsys: pytest.CaptureFixture[str],
                                    argv: list[str]) -> None:
    assert main([*argv, "--database", str(empty), "-c", "/dev/null"]) == 0
    assert capsys.readouterr().out == ""


def test_dropping_an_unknown_action(empty: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["actions", "--drop", "9", "--database", str(empty), "-c", "/dev/null"]) == 1
    assert "action 9 cannot be dropped: no such action" in capsys.readouterr().out

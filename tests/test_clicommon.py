"""What the commands share: argument types, name checks, settings with --database, tables."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from poller.clicommon import (
    UsageError,
    known,
    order_id,
    positive_float,
    positive_int,
    print_table,
    settings_of,
)


@pytest.mark.parametrize(("kind", "text", "value"), [
    (positive_int, "1", 1), (positive_int, "30", 30),
    (positive_float, "0.5", 0.5), (positive_float, "60", 60.0),
    (order_id, " a647f23d ", "a647f23d"),
])
def test_good_arguments(kind: object, text: str, value: object) -> None:
    assert kind(text) == value  # type: ignore[operator]


@pytest.mark.parametrize(("kind", "text", "says"), [
    (positive_int, "0", "must be at least 1, got 0"),
    (positive_int, "-2", "must be at least 1, got -2"),
    (positive_int, "1.5", "not a whole number: '1.5'"),
    (positive_float, "0", "must be a positive number"),
    (positive_float, "-1", "must be a positive number"),
    (positive_float, "nan", "must be a positive number"),
    (positive_float, "inf", "must be a positive number"),
    (positive_float, "soon", "not a number: 'soon'"),
    (order_id, "", "must not be empty"),
    (order_id, " \t", "must not be empty"),
])
def test_bad_arguments_say_why(kind: object, text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        kind(text)  # type: ignore[operator]


def test_known_names_or_a_usage_error_with_the_closest() -> None:
    assert known("connection", "tw-main", ["tw-main", "crypto"]) == "tw-main"
    with pytest.raises(UsageError, match=r"no connection 'tw-mian'; did you mean 'tw-main'\?"):
        known("connection", "tw-mian", ["tw-main", "crypto"])
    with pytest.raises(UsageError, match=r"no notifier 'x' \(none is configured\)"):
        known("notifier", "x", [])


def test_database_flag_makes_the_config_optional(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_CONFIG", str(tmp_path / "absent.toml"))
    db = tmp_path / "kept.db"
    db.write_bytes(b"")
    settings = settings_of(argparse.Namespace(config=None, database=db))
    assert settings.daemon.database == db
    # Without --database the missing config is the problem it always was.
    with pytest.raises(Exception, match="no such file"):
        settings_of(argparse.Namespace(config=None, database=None))
    # A given config is read (and must exist), the database still comes from the flag.
    config = tmp_path / "c.toml"
    config.write_text('[daemon]\ndatabase = "/elsewhere.db"\n')
    assert settings_of(argparse.Namespace(config=str(config), database=db)).daemon.database == db
    with pytest.raises(UsageError, match="--database: no such file"):
        settings_of(argparse.Namespace(config=None, database=tmp_path / "none.db"))


def test_tables_align_columns(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([("A", "LONG HEADER"), ("wide value", "x")])
    assert capsys.readouterr().out.splitlines() == ["A           LONG HEADER",
                                                    "wide value  x"]

"""What the command-line commands share: exit codes, usage errors, loading the config,
naming connections and notifiers, and aligned tables."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from poller.compose import Loaded, load
from poller.databaseurl import DatabaseUrl, looks_like_url
from poller.errors import PollerError
from poller.models import decimal_text
from poller.settings import Settings, config_path, load_settings
from poller.suggest import did_you_mean

EX_OK, EX_FAIL, EX_USAGE, EX_IOERR, EX_TEMPFAIL, EX_CONFIG = 0, 1, 2, 74, 75, 78


class UsageError(PollerError):
    """A command-line argument that cannot be right (exit 2): an unknown name, a bad number."""


def config_of(args: argparse.Namespace) -> Path:
    """The config file a command reads (``-c``, ``$POLLER_CONFIG``, the default)."""
    return config_path(getattr(args, "config", None))


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings alone (commands that only read the database).

    With ``--database PATH`` (a database kept by ``poller demo --keep-db``, a copy from
    another box) the config file is optional: read when given or present, else defaults."""
    database: Path | DatabaseUrl | None = getattr(args, "database", None)
    path = config_of(args)
    if database is None:
        return load_settings(path)
    if getattr(args, "config", None) or path.exists():
        settings = load_settings(path)
    else:
        settings = load_settings(data={})
    if isinstance(database, Path) and not database.exists():
        raise UsageError(f"--database: no such file {str(database)!r}")
    daemon = settings.daemon.model_copy(update={"database": database})
    return settings.model_copy(update={"daemon": daemon})


def database_argument(text: str) -> Path | DatabaseUrl:
    """``--database``: a SQLite file path or a ``postgresql://`` URL (checked)."""
    if looks_like_url(text):
        try:
            return DatabaseUrl.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return Path(text)


def loaded_of(args: argparse.Namespace) -> Loaded:
    """Settings, plugins and validated tables (commands that need the connections)."""
    return load(config_of(args))


def known(kind: str, name: str, names: Iterable[str]) -> str:
    """``name`` if it is one of ``names``, else a :class:`UsageError` with the closest."""
    choices = list(names)
    if name not in choices:
        raise UsageError(f"no {kind} {name!r}" + (did_you_mean(name, choices)
                                                  or " (none is configured)"))
    return name


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def order_id(text: str) -> str:
    """An argparse type: an order id (not empty, no surrounding blanks)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an order id must not be empty")
    return text.strip()


def number(value: Any) -> str:
    """A decimal for a table cell (``-`` for none)."""
    return (decimal_text(value) or "-") if value is not None else "-"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows as aligned columns (the first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

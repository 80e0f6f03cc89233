"""``daemon.database`` as a ``postgresql://`` URL: checked once, shown without secrets.

A URL names where the database is; its password is a secret and lives where every other
secret does (``POLLER_DAEMON__DATABASE_PASSWORD`` or a credential file
``daemon.database_password``, or libpq's own ``PGPASSWORD`` / ``~/.pgpass``). A password
written into the URL is refused with the line that says where to put it, so a URL can be
logged, shown by ``poller status`` and stored in an event without leaking anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("postgresql", "postgres")
#: Query parameters that are secrets in libpq's URI syntax.
_SECRET_PARAMS = {"password", "sslpassword"}


def looks_like_url(text: str) -> bool:
    """Whether ``daemon.database`` is a URL (otherwise it is a SQLite file path)."""
    return "://" in text


@dataclass(frozen=True)
class DatabaseUrl:
    """A checked ``postgresql://user@host:port/dbname?…`` without any password in it."""

    url: str

    @classmethod
    def parse(cls, text: str) -> DatabaseUrl:
        """Check ``text``; :class:`ValueError` with one line saying what is wrong."""
        text = text.strip()
        try:
            parts = urlsplit(text)
            port = parts.port  # raises ValueError for a port that is not a number
        except ValueError as err:
            raise ValueError(f"not a database URL ({err}): use "
                             "postgresql://user@host:5432/dbname") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(f"unknown database URL scheme {parts.scheme!r}: use "
                             "postgresql://user@host:5432/dbname, or a file path for SQLite")
        if parts.password is not None or any(
                key in _SECRET_PARAMS for key, _ in parse_qsl(parts.query)):
            raise ValueError(
                "the database URL contains a password: remove it from the URL and set "
                "POLLER_DAEMON__DATABASE_PASSWORD or a credential file "
                "'daemon.database_password' (or use PGPASSWORD / ~/.pgpass)")
        query = dict(parse_qsl(parts.query))
        if not (parts.hostname or query.get("host")):
            raise ValueError("the database URL names no host: "
                             "postgresql://user@host:5432/dbname (or ?host=/run/postgresql)")
        if not unquote(parts.path.lstrip("/")) and "dbname" not in query:
            raise ValueError("the database URL names no database: "
                             "postgresql://user@host:5432/dbname")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"database URL port {port} is out of range")
        return cls(text)

    def __str__(self) -> str:
        return self.url

    @property
    def where(self) -> str:
        """host:port/dbname, for one-line messages."""
        parts = urlsplit(self.url)
        query = dict(parse_qsl(parts.query))
        host = parts.hostname or query.get("host", "")
        port = f":{parts.port}" if parts.port else ""
        name = unquote(parts.path.lstrip("/")) or query.get("dbname", "")
        return f"{host}{port}/{name}"

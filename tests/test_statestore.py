"""Opening the configured store: a path is SQLite, a URL PostgreSQL, both one interface."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from poller.databaseurl import DatabaseUrl
from poller.pgstore import PgStore
from poller.settings import DaemonSettings
from poller.statestore import open_configured, open_store, secret_text, store_exists
from poller.store import Store


def test_a_path_opens_sqlite(tmp_path: Path) -> None:
    store = open_store(tmp_path / "p.db")
    try:
        assert isinstance(store, Store)
        assert (store.location, store.clustered) == (str(tmp_path / "p.db"), False)
        assert store.leases() == [] and store.instances() == []
    finally:
        store.close()


def test_a_url_opens_postgresql_with_the_password_setting(pg_url: str) -> None:
    # The test server trusts local connections: the password is passed, not needed.
    daemon = DaemonSettings(database=DatabaseUrl.parse(pg_url),
                            database_password=SecretStr("canary-Zq9"))
    store = open_configured(daemon)
    try:
        assert isinstance(store, PgStore)
        assert store.location == pg_url and "canary" not in store.location
        assert store.watch("tw", "A1", "O1") and store.watched("tw") == [("A1", "O1")]
    finally:
        store.close()


def test_what_there_is_to_read(tmp_path: Path) -> None:
    assert not store_exists(tmp_path / "none.db")
    assert store_exists(DatabaseUrl.parse("postgresql://p@db/p"))
    assert secret_text(None) is None and secret_text(SecretStr("x")) == "x"

"""``daemon.database`` as a PostgreSQL URL: checked once, never holding a password."""

from __future__ import annotations

import pytest

from poller.databaseurl import DatabaseUrl, looks_like_url


@pytest.mark.parametrize(("text", "where"), [
    ("postgresql://poller@db.example:5432/poller", "db.example:5432/poller"),
    ("postgres://poller@db.example/poller", "db.example/poller"),
    ("postgresql://poller@/poller?host=/run/postgresql", "/run/postgresql/poller"),
    ("postgresql:///?host=/tmp/sock&dbname=p", "/tmp/sock/p"),
])
def test_accepted_urls_and_where_they_point(text: str, where: str) -> None:
    url = DatabaseUrl.parse(text)
    assert (str(url), url.where) == (text, where)


@pytest.mark.parametrize(("text", "problem"), [
    ("postgresql://poller:hunter2@db/poller", "contains a password"),
    ("postgresql://poller@db/poller?password=hunter2", "contains a password"),
    ("mysql://poller@db/poller", "unknown database URL scheme 'mysql'"),
    ("postgresql://poller@db:notaport/poller", "not a database URL"),
    ("postgresql://poller@/poller", "names no host"),
    ("postgresql://poller@db", "names no database"),
])
def test_refused_urls_say_what_is_wrong_without_echoing_a_secret(text: str,
                                                                 problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        DatabaseUrl.parse(text)
    assert "hunter2" not in str(caught.value)


def test_a_path_is_not_a_url() -> None:
    assert looks_like_url("postgresql://db/p")
    assert not looks_like_url("/var/lib/poller/poller.db")
    assert not looks_like_url("relative/poller.db")

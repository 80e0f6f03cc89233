"""The PostgreSQL schema steps: one per SQLite step, each creating the same objects."""

from __future__ import annotations

import psycopg

from poller.migrations import MIGRATIONS
from poller.pgmigrations import PG_MIGRATIONS
from tests.test_migrations import STEPS


def test_one_step_per_sqlite_step() -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == len(STEPS)


def _objects(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    tables = {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    indexes = {r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
        "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'")}
    return {str(n) for n in tables | indexes}


def _columns(conn: psycopg.Connection[tuple[object, ...]], table: str) -> set[str]:
    return {str(r[0]) for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
        (table,))}


def test_each_step_adds_what_the_sqlite_step_adds(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        before: set[str] = set()
        for step, (objects, columns) in zip(PG_MIGRATIONS, STEPS, strict=True):
            known = {t: _columns(conn, t) for t in columns}
            with conn.transaction():
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            now = _objects(conn)
            assert now - before == objects
            for table, added in columns.items():
                assert _columns(conn, table) - known[table] == added
            before = now

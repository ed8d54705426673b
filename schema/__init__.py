"""The database schema: ordered ``.sql`` migrations and the small runner that applies them.

Shared by the producer and the consumers (the only package both import). Migrations are
``migrations/NNNN_name.sql``, applied in order, each once, recorded in ``schema_migrations`` with
a checksum. The runner holds a transaction-level advisory lock, so two processes migrating at
once serialise and the second finds nothing to do.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from brokersync.errors import MigrationError

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6272_6F6B_6D69_67  # "brokmig": one advisory lock key for every migrator
EVENTS_CHANNEL = "brokersync_events"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    folder = resources.files(__package__).joinpath("migrations")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        version, _, rest = entry.name.partition("_")
        out.append(Migration(version, rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return out


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply pending migrations in one transaction; return the versions applied."""
    applied_now: list[str] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for m in migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version}_{m.name}.sql changed after it was applied; "
                            f"add a new migration instead of editing an applied one"
                        )
                    continue
                log.info("applying migration %s_%s", m.version, m.name)
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
                applied_now.append(m.version)
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {exc}") from exc
    return applied_now


def pending(conn: psycopg.Connection[Any]) -> list[str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done: set[str] = set()
    if exists and exists[0]:
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    return [m.version for m in migrations() if m.version not in done]

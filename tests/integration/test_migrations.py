"""Migrations: idempotent, recorded, safe from several processes at once, append-only log."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from brokersync.errors import MigrationError
from schema import migrate, migrations, pending
from tests.support.events import insert

FINGERPRINT = """
SELECT 'col', table_name || '.' || column_name || ':' || data_type || ':' || is_nullable || ':' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'view', viewname || ':' || md5(definition) FROM pg_views WHERE schemaname = 'public'
UNION ALL SELECT 'idx', indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'trg', tgname || ':' || tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal
UNION ALL SELECT 'fn', proname || ':' || md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
UNION ALL SELECT 'mig', version || ':' || checksum FROM schema_migrations
ORDER BY 1, 2
"""


def fingerprint(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(FINGERPRINT).fetchall()


def test_migrate_twice_applies_once(empty_db_url):
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        first = migrate(c)
        second = migrate(c)
        assert first == [m.version for m in migrations()]
        assert second == []
        assert pending(c) == []
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(first),)


def test_concurrent_migrations_give_the_same_schema(empty_db_url, db_url):
    errors: list[BaseException] = []
    applied: list[list[str]] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            with psycopg.connect(empty_db_url, autocommit=True) as c:
                barrier.wait()
                applied.append(migrate(c))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(len(a) for a in applied) == [0, 0, 0, len(migrations())], "exactly one applied them"
    # db_url was migrated once, sequentially (the template): same schema
    assert fingerprint(empty_db_url) == fingerprint(db_url)


def test_an_edited_applied_migration_is_refused(db_url):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = '0001'")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(c)


def test_event_log_is_append_only(conn):
    eid = insert(conn, {"key": "a", "amount": 1})
    for stmt in ("UPDATE staging_snapshots SET kind = 'x'", "DELETE FROM staging_snapshots",
                 "TRUNCATE staging_snapshots CASCADE"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(stmt)
    assert conn.execute("SELECT id FROM staging_snapshots").fetchall() == [(eid,)]


def test_views_explain_themselves(conn):
    rows = dict(conn.execute(
        "SELECT c.relname, obj_description(c.oid) FROM pg_class c WHERE c.relkind = 'v' "
        "AND c.relnamespace = 'public'::regnamespace").fetchall())
    for view in ("event_log", "consumer_lag", "dead_letters", "producer_cycles"):
        assert rows.get(view), f"view {view} has no comment"


def test_notify_payload_is_small_and_typed(conn, db_url):
    from schema.eventlog import parse_notice

    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN brokersync_events")
        big = {"key": "k", "amount": 1, "blob": "x" * 20000}  # far over NOTIFY's 8000 bytes
        eid = insert(conn, big)
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert notes, "no notification"
    notice = parse_notice(notes[0].payload)
    assert notice is not None and (notice.id, notice.kind, notice.account) == (eid, "test", "A1")
    assert parse_notice("not json") is None

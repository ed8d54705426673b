"""A consumer as a real process: SIGKILL at random points, SIGINT, dead letters, replay, status."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import run_cli, start_cli
from tests.support import ledger
from tests.support.events import insert_many
from tests.support.runner import cursor
from tests.support.wait import wait_until

SPEC = ledger.SPEC


def table(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def ledger_tables(conn):
    ledger.setup(conn)  # the consumer creates them too; tests query them before it starts


def test_sigkill_at_random_points_loses_nothing_and_applies_nothing_twice(conn, cli_env):
    rng = random.Random(20261121)
    amounts = [rng.randint(1, 1000) for _ in range(1500)]
    ids = insert_many(conn, [{"key": f"k{i % 5}", "amount": a, "sleep": 0.002} for i, a in enumerate(amounts)])
    env = dict(cli_env, BROKERSYNC_CONSUMER_BATCH_SIZE="40")
    kills = 0
    last_cursor = 0
    while cursor(conn) < ids[-1] and kills < 8:
        proc = start_cli(["consumer", SPEC], env)
        # kill it somewhere in the middle of a batch, at a random moment
        time.sleep(rng.uniform(0.4, 1.2))
        proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        kills += 1
        now = cursor(conn)
        assert now >= last_cursor
        last_cursor = now
    proc = start_cli(["consumer", SPEC], env)
    try:
        # the earlier runs may have finished the work: wait until this process is really running
        wait_until(lambda: table(conn, "SELECT pid FROM consumer_cursors")[0][0] == proc.pid,
                   timeout=30, what="the last consumer to register")
        wait_until(lambda: cursor(conn) == ids[-1], timeout=60, what="final catch-up")
    finally:
        code = stop(proc)
        output = proc.stdout.read() if proc.stdout else ""
        proc.stdout.close()  # type: ignore[union-attr]
    assert code == 0, output
    assert kills >= 3
    expected_totals = {}
    for i, a in enumerate(amounts):
        expected_totals[f"k{i % 5}"] = expected_totals.get(f"k{i % 5}", 0) + a
    assert dict(table(conn, "SELECT key, total FROM test_totals")) == expected_totals
    assert [r[0] for r in table(conn, "SELECT event_id FROM test_ledger ORDER BY 1")] == ids
    assert table(conn, "SELECT count(*) FROM consumer_dead_letters") == [(0,)]


def test_sigint_mid_batch_exits_0_fast_and_leaves_no_half_batch(conn, cli_env):
    ids = insert_many(conn, [{"key": "s", "amount": 1, "sleep": 0.05}] * 200)
    env = dict(cli_env, BROKERSYNC_CONSUMER_BATCH_SIZE="100")  # one batch = 5 s of work
    proc = start_cli(["consumer", SPEC], env)
    wait_until(lambda: cursor(conn) >= ids[99], timeout=30, what="the first batch")
    time.sleep(1.0)  # well inside the second batch
    t0 = time.monotonic()
    code = stop(proc, signal.SIGINT, timeout=10)
    elapsed = time.monotonic() - t0
    out = proc.stdout.read() if proc.stdout else ""
    assert code == 0, out
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    applied = table(conn, "SELECT count(*) FROM test_ledger")[0][0]
    assert applied == 100 and cursor(conn) == ids[99], "the interrupted batch was rolled back whole"


def test_sigterm_also_stops_cleanly(conn, cli_env):
    insert_many(conn, [{"key": "t", "amount": 1}])
    proc = start_cli(["consumer", SPEC], cli_env)
    wait_until(lambda: table(conn, "SELECT count(*) FROM test_ledger")[0][0] == 1, timeout=30)
    assert stop(proc, signal.SIGTERM) == 0


def test_poison_event_then_dlq_retry_after_a_fix(conn, cli_env):
    ids = insert_many(conn, [{"key": "d", "amount": 1}, {"key": "d", "amount": 2, "poison": True},
                             {"key": "d", "amount": 4}])
    proc = start_cli(["consumer", SPEC], cli_env)
    try:
        wait_until(lambda: cursor(conn) == ids[-1], timeout=30, what="skipping the poison event")
        assert dict(table(conn, "SELECT key, total FROM test_totals")) == {"d": 5}
        listed = run_cli(["dlq", "list", "--json"], cli_env)
        assert listed.returncode == 0, listed.stderr
        items = json.loads(listed.stdout)
        assert [(i["event_id"], i["consumer"], i["state"]) for i in items] == [(ids[1], "ledger", "dead")]
        assert "poison event" in items[0]["error"]
        status = run_cli(["status", "--json"], cli_env)
        assert status.returncode == 5, "dead letters make the status unhealthy"
        assert json.loads(status.stdout)["dead_letters"] == 1

        # still broken: a retry fails again and the dead letter stays
        run_cli(["dlq", "retry", "--consumer", "ledger"], cli_env)
        wait_until(lambda: table(conn, "SELECT retry_requested_at IS NULL, attempts FROM consumer_dead_letters")[0][0],
                   timeout=20)
        assert dict(table(conn, "SELECT key, total FROM test_totals")) == {"d": 5}

        conn.execute("INSERT INTO test_fixes VALUES (%s)", (ids[1],))  # "the fix"
        retried = run_cli(["dlq", "retry", "--all"], cli_env)
        assert retried.returncode == 0 and "queued for retry by ledger (now)" in retried.stdout
        wait_until(lambda: dict(table(conn, "SELECT key, total FROM test_totals")) == {"d": 7}, timeout=20)
        assert table(conn, "SELECT state FROM dead_letters") == [("resolved",)]
    finally:
        assert stop(proc) == 0


def test_replay_rebuilds_identical_tables(conn, cli_env):
    ids = insert_many(conn, [{"key": f"r{i % 4}", "amount": i} for i in range(300)])
    proc = start_cli(["consumer", SPEC], cli_env)
    wait_until(lambda: cursor(conn) == ids[-1], timeout=30)
    assert stop(proc) == 0
    live = (table(conn, "SELECT * FROM test_ledger ORDER BY event_id"), table(conn, "SELECT * FROM test_totals ORDER BY key"))
    conn.execute("UPDATE test_totals SET total = -1")  # damage the tables: the rebuild must repair them
    result = run_cli(["replay", SPEC], cli_env)
    assert result.returncode == 0, result.stderr
    assert "rebuilding from the first event; 300 events to apply" in result.stderr
    rebuilt = (table(conn, "SELECT * FROM test_ledger ORDER BY event_id"), table(conn, "SELECT * FROM test_totals ORDER BY key"))
    assert rebuilt == live


def test_replay_while_the_consumer_runs(conn, cli_env):
    ids = insert_many(conn, [{"key": "w", "amount": 1}] * 50)
    proc = start_cli(["consumer", SPEC], cli_env)
    try:
        wait_until(lambda: cursor(conn) == ids[-1], timeout=30)
        result = run_cli(["replay", SPEC], cli_env)
        assert result.returncode == 0, result.stderr
        assert dict(table(conn, "SELECT key, total FROM test_totals")) == {"w": 50}
        assert table(conn, "SELECT count(*) FROM test_ledger") == [(50,)]
    finally:
        assert stop(proc) == 0


def test_unknown_consumer_is_a_clear_error(cli_env):
    result = run_cli(["consumer", "no_such_consumer"], cli_env)
    assert result.returncode == 2
    assert "no consumer named 'no_such_consumer'" in result.stderr


def test_psql_passes_arguments_through(conn, cli_env):
    insert_many(conn, [{"key": "q", "amount": 1}] * 3)
    for args in (["--", "-At"], ["-At"]):  # with or without `--`
        result = run_cli(["psql", *args, "-c", "select count(*) from event_log"], cli_env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "3"


def test_status_json_reports_consumers(conn, cli_env):
    ids = insert_many(conn, [{"key": "j", "amount": 1}] * 2)
    proc = start_cli(["consumer", SPEC], cli_env)
    try:
        wait_until(lambda: cursor(conn) == ids[-1], timeout=30)
        result = run_cli(["status", "--json"], cli_env)
        data = json.loads(result.stdout)
        (c,) = data["consumers"]
        assert (c["consumer"], c["active"], c["events_behind"], c["cursor_id"]) == ("ledger", True, 0, ids[-1])
        assert data["events"] == 2
    finally:
        assert stop(proc) == 0
    result = run_cli(["status"], cli_env)
    assert "ledger" in result.stdout and "down" in result.stdout


def test_replay_all_rebuilds_every_registered_consumer(conn, cli_env):
    import consumers

    result = run_cli(["replay", "all"], cli_env, timeout=120)
    assert result.returncode == 0, result.stderr
    n = len(consumers.names())
    assert f"replayed {n} of {n} consumers" in result.stderr
    rows = table(conn, "SELECT consumer FROM consumer_cursors ORDER BY 1")
    assert [r[0] for r in rows] == sorted(consumers.names())

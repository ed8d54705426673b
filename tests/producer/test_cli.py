"""The producer as a real process: `brokersync producer`, `--once`, signals, `simulate`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import run_cli, start_cli
from tests.producer.conftest import rows


@pytest.fixture
def cli_env(cli_env: dict[str, str]) -> dict[str, str]:
    # Cold start looks up ~35 instruments: at the default 60 requests a minute that is half
    # a minute, which is right for Robinhood but slow for a test.
    return {**cli_env, "BROKERSYNC_PRODUCER_RATE_LIMIT": "6000"}


def test_once_with_the_simulated_broker(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    r = run_cli(["producer", "--once"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "SIMULATED broker" in r.stderr
    assert rows(conn, "SELECT status, source, snapshots FROM producer_cycle_runs") == [("ok", "simulated", 13)]
    kinds = rows(conn, "SELECT kind, count(*) FROM staging_snapshots GROUP BY kind ORDER BY kind")
    assert kinds == [("account", 2), ("option_orders", 2), ("option_positions", 2), ("portfolio", 2),
                     ("quotes", 1), ("stock_orders", 2), ("stock_positions", 2)]
    assert rows(conn, "SELECT count(*) FROM staging_snapshots WHERE kind = 'quotes' AND account = '*'") == [(1,)]


def test_once_exits_non_zero_when_a_fetch_fails(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    env = {**cli_env, "BROKERSYNC_SIM_ERROR_RATE": "1", "BROKERSYNC_PRODUCER_MAX_ATTEMPTS": "1"}
    r = run_cli(["producer", "--once"], env)
    assert r.returncode == 6, r.stderr
    status, error = rows(conn, "SELECT status, error FROM producer_cycle_runs")[0]
    assert status == "failed" and "HTTP 50" in error
    assert rows(conn, "SELECT count(*) FROM staging_snapshots") == [(0,)]


def test_bad_interval_is_a_usage_error(cli_env: dict[str, str]) -> None:
    r = run_cli(["producer", "--interval", "-5"], cli_env)
    assert r.returncode == 2 and "must be greater than 0" in r.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_service_runs_cycles_and_stops_cleanly(cli_env: dict[str, str], conn: psycopg.Connection[Any],
                                               sig: str) -> None:
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0  # type: ignore[attr-defined]
    proc = start_cli(["producer", "--interval", "1"], cli_env, creationflags=flags)
    try:
        deadline = time.monotonic() + 60
        while rows(conn, "SELECT count(*) FROM producer_cycle_runs")[0][0] < 2:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no second cycle"
            time.sleep(0.2)
        if sys.platform == "win32":
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "producer: stopped" in out
    statuses = rows(conn, "SELECT status, error FROM producer_cycle_runs")
    assert all(s == "ok" for s, _ in statuses), statuses
    # positions every cycle, orders only in the first (hourly)
    assert rows(conn, "SELECT count(DISTINCT cycle_id) FROM staging_snapshots WHERE kind = 'stock_orders'") == [(1,)]


def test_simulate_command_writes_history(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    r = run_cli(["simulate", "--days", "1", "--seed", "4", "--end", "2026-11-20T00:00:00+00:00"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "cycles" in r.stdout
    first, last, n = rows(conn, "SELECT min(fetched_at), max(fetched_at), count(*) FROM staging_snapshots")[0]
    assert str(first).startswith("2026-11-19 00:00") and str(last) < "2026-11-20"
    assert n > 0
    assert rows(conn, "SELECT bool_and(status = 'ok') FROM producer_cycle_runs") == [(True,)]
    # Thursday 2026-11-19, open 14:30-21:00 UTC: every 5 minutes (78 cycles) ...
    opened = rows(conn, """SELECT count(*) FROM producer_cycle_runs
                           WHERE started_at >= '2026-11-19 14:30Z' AND started_at < '2026-11-19 21:00Z'""")
    assert opened == [(78,)]
    # ... hourly while closed: 00:00-14:00 (15), the hourly orders at 21:00, then 21:55-23:55 (3)
    assert rows(conn, "SELECT count(*) FROM producer_cycle_runs") == [(78 + 15 + 1 + 3,)]


def test_login_without_a_terminal_or_credentials_fails_fast(cli_env: dict[str, str]) -> None:
    r = run_cli(["login"], cli_env, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 1
    assert "needs a terminal" in r.stderr


def test_service_survives_losing_its_database_connection(cli_env: dict[str, str],
                                                         conn: psycopg.Connection[Any]) -> None:
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0  # type: ignore[attr-defined]
    proc = start_cli(["producer", "--interval", "1"], cli_env, creationflags=flags)

    def wait_cycles(n: int) -> None:
        deadline = time.monotonic() + 60
        while rows(conn, "SELECT count(*) FROM producer_cycle_runs")[0][0] < n:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, f"fewer than {n} cycles"
            time.sleep(0.2)

    try:
        wait_cycles(2)
        killed = rows(conn, """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                               WHERE application_name = 'brokersync-producer'""")
        assert killed == [(True,)]
        before = rows(conn, "SELECT count(*) FROM producer_cycle_runs")[0][0]
        wait_cycles(before + 2)
    finally:
        proc.send_signal(signal.SIGTERM if sys.platform != "win32" else signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "database unavailable" in out

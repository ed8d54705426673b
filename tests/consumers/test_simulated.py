"""The four consumers fed by the simulated broker: everything applies, and a replay equals live."""

from __future__ import annotations

from typing import Any

import psycopg

from consumers import load
from tests.conftest import run_cli
from tests.consumers.support import replay, rows, run, tables

NAMES = ("positions", "balances", "trade_history", "cache_invalidation")


def test_simulated_history_applies_and_replays_identically(
        db_url: str, conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    r = run_cli(["simulate", "--days", "3", "--seed", "11", "--end", "2026-11-20T22:00:00+00:00"],
                cli_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {x["kind"] for x in rows(conn, "SELECT DISTINCT kind FROM staging_snapshots")}
    assert {"stock_positions", "option_positions", "quotes", "account", "portfolio",
            "stock_orders", "option_orders"} <= kinds

    live = {}
    for name in NAMES:
        consumer = load(name)
        assert run(db_url, consumer) > 0
        dead = rows(conn, "SELECT event_id, error FROM consumer_dead_letters WHERE consumer = %s", name)
        assert dead == [], f"{name}: {dead[0]['error'] if dead else ''}"
        live[name] = tables(conn, consumer)

    assert live["positions"]["positions"] and live["positions"]["option_positions"]
    assert live["balances"]["trading_accounts"] and live["balances"]["daily_portfolio_balances"]
    assert live["trade_history"]["trade_executions"] and live["trade_history"]["closed_trades"]
    assert live["cache_invalidation"]["cache_versions"]
    # simulated positions agree with the trades: every open position has a last price and value
    unvalued = rows(conn, "SELECT symbol FROM positions WHERE market_value IS NULL")
    assert unvalued == []

    for name in NAMES[:-1]:
        consumer = load(name)
        assert replay(conn, db_url, consumer) == live[name], name
    # and through the command line, as an operator would
    r = run_cli(["replay", "cache_invalidation"], cli_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tables(conn, load("cache_invalidation")) == live["cache_invalidation"]

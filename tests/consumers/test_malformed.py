"""A malformed payload is retried, then dead-lettered, while the events around it apply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from consumers import load
from schema.eventlog import ACCOUNT, OPTION_ORDERS, PORTFOLIO, QUOTES, STOCK_ORDERS, STOCK_POSITIONS
from schema.payloads import QUOTES_ACCOUNT, envelope
from tests.consumers import payloads as rh
from tests.consumers.support import add, one, rows, run

T = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def _good_and_bad(conn: psycopg.Connection[Any], name: str) -> tuple[list[int], list[int]]:
    """Two good snapshots around two bad ones (not JSON; JSON without a required field)."""
    def good(i: int) -> int:
        at = T + timedelta(minutes=i)
        if name == "positions":
            body = rh.stock_positions_envelope([rh.stock_position("AAPL", f"{i}.0", "100.0000", at)])
            return add(conn, STOCK_POSITIONS, body, at)
        if name == "balances":
            return add(conn, PORTFOLIO, envelope(portfolio=rh.portfolio(f"{1000 + i}.0000", "1.0", None)), at)
        if name == "trade_history":
            e = rh.execution(f"g{i}", "10.00000000", "1.00000000", at)
            return add(conn, STOCK_ORDERS, rh.stock_orders_envelope(
                [rh.stock_order(f"g{i}", "AAPL", "buy", "1", "filled", [e], at)]), at)
        body = envelope(account=rh.account(f"{i}.0000", "1.0000", at))
        return add(conn, ACCOUNT, body, at)

    bad_kind = {"positions": QUOTES, "balances": ACCOUNT, "trade_history": OPTION_ORDERS,
                "cache_invalidation": PORTFOLIO}[name]
    bad_account = QUOTES_ACCOUNT if bad_kind == QUOTES else rh.ACCOUNT
    first = good(1)
    not_json = add(conn, bad_kind, b'{"v": 1, "responses": {"trunc', T + timedelta(minutes=2), account=bad_account)
    if bad_kind == QUOTES:  # a quote without its symbol
        missing = add(conn, QUOTES, envelope(quotes=[{"next": None, "results": [{"last_trade_price": "1.0"}]}]),
                      T + timedelta(minutes=3), account=bad_account)
    elif bad_kind == ACCOUNT:  # an account without buying power
        acct = rh.account("1.0", "1.0", T)
        del acct["buying_power"]
        missing = add(conn, ACCOUNT, envelope(account=acct), T + timedelta(minutes=3))
    elif bad_kind == OPTION_ORDERS:  # a fill without a price
        opt = rh.option_instrument("AAPL", "call", "150.0000", T.date())
        order = rh.option_order("bad", opt, "buy", "open", "1", "filled",
                                [rh.execution("no-price", "1.0", "1.0", T)], T)
        del order["legs"][0]["executions"][0]["price"]
        missing = add(conn, OPTION_ORDERS, rh.option_orders_envelope([order]), T + timedelta(minutes=3))
    else:  # not an envelope at all
        missing = add(conn, PORTFOLIO, {"equity": "1.00"}, T + timedelta(minutes=3))
    second = good(4)
    return [first, second], [not_json, missing]


@pytest.mark.parametrize("name", ["positions", "balances", "trade_history", "cache_invalidation"])
def test_malformed_payload_is_dead_lettered_and_the_rest_applies(
        db_url: str, conn: psycopg.Connection[Any], name: str) -> None:
    consumer = load(name)
    good, bad = _good_and_bad(conn, name)
    run(db_url, consumer)
    dead = rows(conn, "SELECT event_id, attempts, error FROM consumer_dead_letters WHERE consumer = %s ORDER BY event_id", name)
    assert [d["event_id"] for d in dead] == bad
    assert all(d["attempts"] == 2 for d in dead)
    assert "not JSON" in dead[0]["error"] and "PayloadError" in dead[1]["error"]
    cursor = one(conn, "SELECT last_id FROM consumer_cursors WHERE consumer = %s", name)
    assert cursor["last_id"] == good[-1]
    # the good events after the bad ones applied
    if name == "positions":
        assert one(conn, "SELECT quantity FROM positions")["quantity"] == 4
    elif name == "balances":
        assert one(conn, "SELECT close_equity FROM daily_portfolio_balances")["close_equity"] == 1004
    elif name == "trade_history":
        assert one(conn, "SELECT count(*) AS n FROM trade_executions")["n"] == 2
    else:
        assert one(conn, "SELECT version FROM cache_versions WHERE cache_key = 'balances'")["version"] == 2

"""The balances consumer: latest balances per account and a daily equity summary.

* ``account`` snapshots (raw ``/accounts/{number}/``) give buying power and cash;
  ``portfolio`` snapshots (raw ``/portfolios/{number}/``) give market value and equity. Each
  half of ``trading_accounts`` only moves forward in ``fetched_at``: a stale snapshot that
  arrives late never overwrites a newer one.
* ``daily_portfolio_balances`` has one row per account per **US market day**: the calendar date
  of ``fetched_at`` in America/New_York (so 00:30 UTC is still the previous day in New York).
  Every equity reading is kept in ``balance_equity_samples`` and the day's row is recomputed
  from that day's samples (open = the earliest reading, close = the latest, high, low), so the
  result does not depend on the order in which snapshots arrived. The day's change is
  ``close - previous close``, the previous close being the broker's
  ``adjusted_equity_previous_close`` as reported by the day's *first* snapshot (brokers roll that
  figure over after the close, so a late-evening snapshot already reports today's close), or
  the day's open when the broker reports none.
"""

from __future__ import annotations

from typing import Any

import psycopg

from consumers.parsing import dec, envelope_of, market_day, opt_dec, require
from consumers.runtime import Consumer, Event
from schema.eventlog import ACCOUNT, PORTFOLIO
from schema.payloads import PayloadError, response

TABLES = ("trading_accounts", "balance_equity_samples", "daily_portfolio_balances")


def apply_account(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    acct = response(payload, "account")
    if not isinstance(acct, dict):
        raise PayloadError("'account' is not an object")
    values = (
        acct.get("type"),
        dec(require(acct, "buying_power", "account"), "buying_power"),
        dec(require(acct, "cash", "account"), "cash"),
        opt_dec(acct.get("cash_available_for_withdrawal"), "cash_available_for_withdrawal"),
        opt_dec(acct.get("cash_held_for_orders"), "cash_held_for_orders"),
        opt_dec(acct.get("unsettled_funds"), "unsettled_funds"),
    )
    conn.execute(
        """INSERT INTO trading_accounts (account, account_type, buying_power, cash,
               cash_available_for_withdrawal, cash_held_for_orders, unsettled_funds,
               account_fetched_at, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (account) DO UPDATE
           SET account_type = EXCLUDED.account_type, buying_power = EXCLUDED.buying_power,
               cash = EXCLUDED.cash,
               cash_available_for_withdrawal = EXCLUDED.cash_available_for_withdrawal,
               cash_held_for_orders = EXCLUDED.cash_held_for_orders,
               unsettled_funds = EXCLUDED.unsettled_funds,
               account_fetched_at = EXCLUDED.account_fetched_at,
               updated_at = greatest(trading_accounts.updated_at, EXCLUDED.updated_at)
           WHERE trading_accounts.account_fetched_at IS NULL
              OR trading_accounts.account_fetched_at <= EXCLUDED.account_fetched_at""",
        (event.account, *values, event.fetched_at, event.fetched_at),
    )


def apply_portfolio(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    pf = response(payload, "portfolio")
    if not isinstance(pf, dict):
        raise PayloadError("'portfolio' is not an object")
    equity = dec(require(pf, "equity", "portfolio"), "equity")
    market_value = opt_dec(pf.get("market_value"), "market_value")
    extended = opt_dec(pf.get("extended_hours_equity"), "extended_hours_equity")
    previous_close = opt_dec(
        pf.get("adjusted_equity_previous_close") or pf.get("equity_previous_close"),
        "equity_previous_close",
    )
    conn.execute(
        """INSERT INTO trading_accounts (account, portfolio_value, equity, extended_hours_equity,
               equity_previous_close, portfolio_fetched_at, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (account) DO UPDATE
           SET portfolio_value = EXCLUDED.portfolio_value, equity = EXCLUDED.equity,
               extended_hours_equity = EXCLUDED.extended_hours_equity,
               equity_previous_close = EXCLUDED.equity_previous_close,
               portfolio_fetched_at = EXCLUDED.portfolio_fetched_at,
               updated_at = greatest(trading_accounts.updated_at, EXCLUDED.updated_at)
           WHERE trading_accounts.portfolio_fetched_at IS NULL
              OR trading_accounts.portfolio_fetched_at <= EXCLUDED.portfolio_fetched_at""",
        (event.account, market_value, equity, extended, previous_close,
         event.fetched_at, event.fetched_at),
    )
    the_day = market_day(event.fetched_at)
    conn.execute(
        """INSERT INTO balance_equity_samples (account, event_id, fetched_at, market_day, equity,
                                               previous_close)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (account, event_id) DO NOTHING""",
        (event.account, event.id, event.fetched_at, the_day, equity, previous_close),
    )
    _recompute_day(conn, event.account, the_day)


def _recompute_day(conn: psycopg.Connection[Any], account: str, the_day: Any) -> None:
    """The day's row from all of that day's samples: independent of arrival order."""
    conn.execute(
        """WITH s AS (
               SELECT * FROM balance_equity_samples WHERE account = %(a)s AND market_day = %(d)s),
           first AS (SELECT * FROM s ORDER BY fetched_at, event_id LIMIT 1),
           last AS (SELECT * FROM s ORDER BY fetched_at DESC, event_id DESC LIMIT 1),
           agg AS (SELECT max(equity) AS hi, min(equity) AS lo, count(*) AS n FROM s),
           v AS (
               SELECT first.equity AS open_equity, agg.hi, agg.lo, last.equity AS close_equity,
                      coalesce(first.previous_close, first.equity) AS previous_close,
                      agg.n, first.fetched_at AS first_at, last.fetched_at AS last_at
               FROM first, last, agg)
           INSERT INTO daily_portfolio_balances AS b (account, market_day, open_equity,
               high_equity, low_equity, close_equity, previous_close, change, change_pct,
               samples, first_at, last_at)
           SELECT %(a)s, %(d)s, open_equity, hi, lo, close_equity, previous_close,
                  close_equity - previous_close,
                  CASE WHEN previous_close <> 0
                       THEN round((close_equity - previous_close) / previous_close * 100, 4) END,
                  n, first_at, last_at
           FROM v
           ON CONFLICT (account, market_day) DO UPDATE
           SET open_equity = EXCLUDED.open_equity, high_equity = EXCLUDED.high_equity,
               low_equity = EXCLUDED.low_equity, close_equity = EXCLUDED.close_equity,
               previous_close = EXCLUDED.previous_close, change = EXCLUDED.change,
               change_pct = EXCLUDED.change_pct, samples = EXCLUDED.samples,
               first_at = EXCLUDED.first_at, last_at = EXCLUDED.last_at""",
        {"a": account, "d": the_day},
    )


def handle(conn: psycopg.Connection[Any], event: Event) -> None:
    payload = envelope_of(event.payload, event.raw_body)
    if event.kind == ACCOUNT:
        apply_account(conn, event, payload)
    elif event.kind == PORTFOLIO:
        apply_portfolio(conn, event, payload)
    else:
        raise PayloadError(f"balances does not handle kind {event.kind!r}")


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"TRUNCATE {', '.join(TABLES)}")


CONSUMER = Consumer(
    name="balances",
    kinds=(ACCOUNT, PORTFOLIO),
    handle=handle,
    reset=reset,
    tables=TABLES,
    description="Applies account and portfolio snapshots to trading_accounts and daily_portfolio_balances",
)

"""The balances consumer: latest balances per account and a daily equity summary.

* ``account`` snapshots (raw ``/accounts/{number}/``) give buying power and cash;
  ``portfolio`` snapshots (raw ``/portfolios/{number}/``) give market value and equity. Each
  half of ``trading_accounts`` only moves forward in ``fetched_at``: a stale snapshot that
  arrives late never overwrites a newer one.
* ``daily_portfolio_balances`` has one row per account per **US market day**: the calendar date
  of ``fetched_at`` in America/New_York (so 00:30 UTC is still the previous day in New York).
  Every equity reading is kept once in ``balance_equity_samples`` and folded into its day's
  row (open = the earliest reading by fetched_at then event id, close = the latest, high, low),
  so the result does not depend on the order in which snapshots arrived. The day's change is
  ``close - previous close``, the previous close being the broker's
  ``adjusted_equity_previous_close`` as reported by the day's *first* snapshot (brokers roll that
  figure over after the close, so a late-evening snapshot already reports today's close), or
  the day's open when the broker reports none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from consumers.parsing import dec, envelope_of, market_day, opt_dec, require
from consumers.runtime import Consumer, Event
from schema.eventlog import ACCOUNT, PORTFOLIO
from schema.payloads import PayloadError, response

TABLES = ("trading_accounts", "balance_equity_samples", "daily_portfolio_balances")


def _account_values(payload: Any) -> tuple[Any, ...]:
    acct = response(payload, "account")
    if not isinstance(acct, dict):
        raise PayloadError("'account' is not an object")
    return (
        acct.get("type"),
        dec(require(acct, "buying_power", "account"), "buying_power"),
        dec(require(acct, "cash", "account"), "cash"),
        opt_dec(acct.get("cash_available_for_withdrawal"), "cash_available_for_withdrawal"),
        opt_dec(acct.get("cash_held_for_orders"), "cash_held_for_orders"),
        opt_dec(acct.get("unsettled_funds"), "unsettled_funds"),
    )


def apply_account(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    values = _account_values(payload)
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


def _portfolio_values(payload: Any) -> tuple[Any, ...]:
    pf = response(payload, "portfolio")
    if not isinstance(pf, dict):
        raise PayloadError("'portfolio' is not an object")
    return (
        dec(require(pf, "equity", "portfolio"), "equity"),
        opt_dec(pf.get("market_value"), "market_value"),
        opt_dec(pf.get("extended_hours_equity"), "extended_hours_equity"),
        opt_dec(pf.get("adjusted_equity_previous_close") or pf.get("equity_previous_close"),
                "equity_previous_close"),
    )


def apply_portfolio(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    equity, market_value, extended, previous_close = _portfolio_values(payload)
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
    _add_reading(conn, event, market_day(event.fetched_at), equity, previous_close)


def _add_reading(conn: psycopg.Connection[Any], event: Event, the_day: Any, equity: Any,
                 previous_close: Any) -> None:
    """Record the reading once and fold it into its day, whatever the order of readings."""
    conn.execute(
        """WITH new AS (
               INSERT INTO balance_equity_samples (account, event_id, fetched_at, market_day,
                                                   equity, previous_close)
               VALUES (%(a)s, %(id)s, %(t)s, %(d)s, %(e)s, %(pc)s)
               ON CONFLICT (account, event_id) DO NOTHING
               RETURNING 1)
           INSERT INTO daily_portfolio_balances AS b (account, market_day, open_equity,
               high_equity, low_equity, close_equity, previous_close, samples, first_at, last_at,
               first_event_id, last_event_id)
           SELECT %(a)s, %(d)s, %(e)s, %(e)s, %(e)s, %(e)s, coalesce(%(pc)s, %(e)s), 1,
                  %(t)s, %(t)s, %(id)s, %(id)s
           FROM new
           ON CONFLICT (account, market_day) DO UPDATE
           SET high_equity = greatest(b.high_equity, EXCLUDED.high_equity),
               low_equity = least(b.low_equity, EXCLUDED.low_equity),
               samples = b.samples + 1,
               open_equity = CASE WHEN (EXCLUDED.first_at, EXCLUDED.first_event_id)
                                       < (b.first_at, b.first_event_id)
                                  THEN EXCLUDED.open_equity ELSE b.open_equity END,
               previous_close = CASE WHEN (EXCLUDED.first_at, EXCLUDED.first_event_id)
                                          < (b.first_at, b.first_event_id)
                                     THEN EXCLUDED.previous_close ELSE b.previous_close END,
               first_event_id = CASE WHEN (EXCLUDED.first_at, EXCLUDED.first_event_id)
                                          < (b.first_at, b.first_event_id)
                                     THEN EXCLUDED.first_event_id ELSE b.first_event_id END,
               first_at = least(b.first_at, EXCLUDED.first_at),
               close_equity = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_event_id)
                                        > (b.last_at, b.last_event_id)
                                   THEN EXCLUDED.close_equity ELSE b.close_equity END,
               last_event_id = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_event_id)
                                         > (b.last_at, b.last_event_id)
                                    THEN EXCLUDED.last_event_id ELSE b.last_event_id END,
               last_at = greatest(b.last_at, EXCLUDED.last_at)""",
        {"a": event.account, "d": the_day, "e": equity, "pc": previous_close,
         "t": event.fetched_at, "id": event.id},
    )


def handle(conn: psycopg.Connection[Any], event: Event) -> None:
    payload = envelope_of(event.payload, event.raw_body)
    if event.kind == ACCOUNT:
        apply_account(conn, event, payload)
    elif event.kind == PORTFOLIO:
        apply_portfolio(conn, event, payload)
    else:
        raise PayloadError(f"balances does not handle kind {event.kind!r}")


# ---- a whole batch (replays) -------------------------------------------------------------------

_ACCOUNT_COLS = ("account_type", "buying_power", "cash", "cash_available_for_withdrawal",
                 "cash_held_for_orders", "unsettled_funds", "account_fetched_at")
_PORTFOLIO_COLS = ("portfolio_value", "equity", "extended_hours_equity", "equity_previous_close",
                   "portfolio_fetched_at")
_TA_COLS = ("account", *_ACCOUNT_COLS, *_PORTFOLIO_COLS, "updated_at")
_DAY_COLS = ("account", "market_day", "open_equity", "high_equity", "low_equity", "close_equity",
             "previous_close", "samples", "first_at", "last_at", "first_event_id", "last_event_id")


def _rows_by_key(conn: psycopg.Connection[Any], query: str, params: Any,
                 width: int) -> dict[tuple[Any, ...], list[Any]]:
    return {tuple(r[:width]): list(r) for r in conn.execute(query, params)}


def handle_batch(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
    """The effect of :func:`handle` on each event in order, in a few statements per batch.

    The batch's accounts and days are read once, every event is folded into them in Python
    with the rules of the SQL in :func:`apply_account` and :func:`_add_reading` (ties included:
    ``greatest``/``least`` keep their first argument), and the final rows are written once.
    """
    parsed: list[tuple[Event, tuple[Any, ...]]] = []
    for event in events:  # everything that can fail first: a bad event sends the batch to handle()
        payload = envelope_of(event.payload, event.raw_body)
        if event.kind == ACCOUNT:
            values = _account_values(payload)
            if not (values[0] is None or isinstance(values[0], str)):
                raise PayloadError("account type is not a string")  # handle() decides what to do
            parsed.append((event, values))
        elif event.kind == PORTFOLIO:
            parsed.append((event, _portfolio_values(payload)))
        else:
            raise PayloadError(f"balances does not handle kind {event.kind!r}")
    if not parsed:
        return
    accounts = sorted({e.account for e, _ in parsed})
    ta = _rows_by_key(
        conn, f"SELECT {', '.join(_TA_COLS)} FROM trading_accounts WHERE account = ANY (%s::text[])",
        (accounts,), 1)
    readings = [(e, v) for e, v in parsed if e.kind == PORTFOLIO]
    seen = {r[0] for r in conn.execute(
        """SELECT event_id FROM balance_equity_samples
           WHERE (account, event_id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))""",
        ([e.account for e, _ in readings], [e.id for e, _ in readings]))} if readings else set()
    days_wanted = sorted({(e.account, market_day(e.fetched_at)) for e, _ in readings})
    days = _rows_by_key(
        conn, f"""SELECT {', '.join(f'b.{c}' for c in _DAY_COLS)} FROM daily_portfolio_balances b
                  JOIN unnest(%s::text[], %s::date[]) AS w(account, market_day)
                    ON b.account = w.account AND b.market_day = w.market_day""",
        ([a for a, _ in days_wanted], [d for _, d in days_wanted]), 2) if days_wanted else {}
    touched_ta: set[tuple[Any, ...]] = set()
    touched_days: set[tuple[Any, ...]] = set()
    samples: list[tuple[Any, ...]] = []
    ai = {c: i for i, c in enumerate(_TA_COLS)}
    for event, values in parsed:
        t, key = event.fetched_at, (event.account,)
        cols: tuple[str, ...]
        new: tuple[Any, ...]
        if event.kind == ACCOUNT:
            cols, new = _ACCOUNT_COLS, (*values, t)
        else:
            equity, market_value, extended, previous_close = values
            cols, new = _PORTFOLIO_COLS, (market_value, equity, extended, previous_close, t)
        row = ta.get(key)
        if row is None:
            row = [None] * len(_TA_COLS)
            row[0], row[ai["updated_at"]] = event.account, t
            for c, v in zip(cols, new, strict=True):
                row[ai[c]] = v
            ta[key] = row
            touched_ta.add(key)
        elif row[ai[cols[-1]]] is None or row[ai[cols[-1]]] <= t:
            for c, v in zip(cols, new, strict=True):
                row[ai[c]] = v
            if t > row[ai["updated_at"]]:
                row[ai["updated_at"]] = t
            touched_ta.add(key)
        if event.kind == PORTFOLIO and event.id not in seen:
            seen.add(event.id)
            the_day = market_day(t)
            samples.append((event.account, event.id, t, the_day, equity, previous_close))
            _fold(days, (event.account, the_day), event.id, t, equity, previous_close)
            touched_days.add((event.account, the_day))
    _write(conn, "trading_accounts", _TA_COLS, 1, [ta[k] for k in sorted(touched_ta)])
    if samples:
        with conn.cursor().copy(
                "COPY balance_equity_samples (account, event_id, fetched_at, market_day, equity,"
                " previous_close) FROM STDIN") as copy:
            for s in samples:
                copy.write_row(s)
    _write(conn, "daily_portfolio_balances", _DAY_COLS, 2, [days[k] for k in sorted(touched_days)])


def _fold(days: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...], event_id: int, t: Any,
          equity: Any, previous_close: Any) -> None:
    """One reading into its day, as the ON CONFLICT of :func:`_add_reading` does."""
    pc = equity if previous_close is None else previous_close
    row = days.get(key)
    if row is None:
        days[key] = [*key, equity, equity, equity, equity, pc, 1, t, t, event_id, event_id]
        return
    (_, _, open_e, high, low, close, prev, n, first_at, last_at, first_id, last_id) = row
    if equity > high:
        high = equity
    if equity < low:
        low = equity
    if (t, event_id) < (first_at, first_id):
        open_e, prev, first_id = equity, pc, event_id
    if t < first_at:
        first_at = t
    if (t, event_id) > (last_at, last_id):
        close, last_id = equity, event_id
    if t > last_at:
        last_at = t
    days[key] = [*key, open_e, high, low, close, prev, n + 1, first_at, last_at, first_id, last_id]


def _write(conn: psycopg.Connection[Any], table: str, cols: tuple[str, ...], width: int,
           rows: list[list[Any]]) -> None:
    """Upsert whole rows (the batch's final state)."""
    if not rows:
        return
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[width:])
    with conn.cursor() as cur:
        cur.executemany(
            f"""INSERT INTO {table} ({names}) VALUES ({marks})
                ON CONFLICT ({", ".join(cols[:width])}) DO UPDATE SET {sets}""",
            rows,
        )


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"TRUNCATE {', '.join(TABLES)}")


CONSUMER = Consumer(
    name="balances",
    kinds=(ACCOUNT, PORTFOLIO),
    handle=handle,
    handle_batch=handle_batch,
    reset=reset,
    tables=TABLES,
    description="Applies account and portfolio snapshots to trading_accounts and daily_portfolio_balances",
)

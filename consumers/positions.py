"""The positions consumer: open stock and option positions, valued at the latest prices.

Inputs (see ``schema/payloads.py``):

* ``stock_positions``: the full state of an account's stock positions. Each instrument in it is
  upserted; instruments absent from it are closed (removed). The symbol comes from the
  envelope's ``instruments`` map.
* ``option_positions``: the full state of an account's option positions (aggregate positions,
  one row per leg), with the contract from ``instruments`` and mark and Greeks from
  ``marketdata`` (Greeks may be null).
* ``quotes``: last trade prices; kept in ``positions_last_prices`` (this consumer's own copy),
  and every stock position of those symbols is revalued.

A snapshot older (by ``fetched_at``, then id) than the newest one already applied for that
account and kind is ignored, so a late, stale snapshot never overwrites newer data; one that a
newer, well-formed snapshot in the log supersedes is skipped outright (``consumers/snapshots.py``:
this is what makes a replay of a year fast). Every column derives
from the events, so a replay rebuilds the tables row for row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import psycopg

from consumers.parsing import day as parse_day
from consumers.parsing import (
    dec,
    envelope_of,
    id_from_url,
    market_day,
    opt_dec,
    require,
)
from consumers.parsing import ts as parse_ts
from consumers.runtime import Consumer, Event
from consumers.snapshots import superseded, superseded_many
from schema.eventlog import OPTION_POSITIONS, QUOTES, STOCK_POSITIONS
from schema.payloads import PayloadError, response, results

TABLES = ("positions", "option_positions", "positions_snapshot_marks", "positions_last_prices")

# One valuation formula for both paths (a new positions snapshot, a new quote).
_REVALUE = """
UPDATE positions p
SET last_price = q.price,
    price_at = q.fetched_at,
    market_value = p.quantity * q.price,
    unrealized_pnl = p.quantity * q.price - p.cost_basis,
    unrealized_pnl_pct = CASE WHEN p.cost_basis <> 0
        THEN round((p.quantity * q.price - p.cost_basis) / abs(p.cost_basis) * 100, 4) END
FROM positions_last_prices q
WHERE q.symbol = p.symbol AND {where}
"""


def _is_newest(conn: psycopg.Connection[Any], event: Event) -> bool:
    """Record this snapshot as the newest (by fetched_at, then id) for its account and kind;
    False if a newer one was applied already."""
    row = conn.execute(
        """INSERT INTO positions_snapshot_marks (account, kind, fetched_at, event_id)
           VALUES (%s, %s, %s, %s)
           ON CONFLICT (account, kind) DO UPDATE
           SET fetched_at = EXCLUDED.fetched_at, event_id = EXCLUDED.event_id
           WHERE (positions_snapshot_marks.fetched_at, positions_snapshot_marks.event_id)
                 <= (EXCLUDED.fetched_at, EXCLUDED.event_id)
           RETURNING 1""",
        (event.account, event.kind, event.fetched_at, event.id),
    ).fetchone()
    return row is not None


# ---- stock positions --------------------------------------------------------------------------


def _stock_rows(payload: Any) -> list[tuple[Any, ...]]:
    instruments = response(payload, "instruments")
    if not isinstance(instruments, dict):
        raise PayloadError("'instruments' is not a map of instrument URL to instrument")
    rows = []
    for pos in results(payload, "positions"):
        quantity = dec(require(pos, "quantity", "position"), "position quantity")
        if quantity == 0:
            continue  # nonzero=true should exclude these; a zero row is a closed position
        url = require(pos, "instrument", "position")
        instrument = instruments.get(url)
        if not isinstance(instrument, dict):
            raise PayloadError(f"position's instrument {url!r:.80} is not in 'instruments'")
        symbol = require(instrument, "symbol", "instrument")
        instrument_id = pos.get("instrument_id") or id_from_url(url, "position instrument")
        avg = dec(require(pos, "average_buy_price", "position"), "average_buy_price")
        rows.append((str(instrument_id), str(symbol), quantity, avg, quantity * avg))
    return rows


def apply_stock_positions(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    rows = _stock_rows(payload)  # parse everything before writing anything
    if superseded(conn, event, _stock_rows):
        return
    _apply_stock(conn, event, rows)


def _apply_stock(conn: psycopg.Connection[Any], event: Event, rows: list[tuple[Any, ...]]) -> None:
    if not _is_newest(conn, event):
        return
    ids = [r[0] for r in rows]
    conn.execute(
        "DELETE FROM positions WHERE account = %s AND NOT (instrument_id = ANY (%s::text[]))",
        (event.account, ids),
    )
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO positions (account, instrument_id, symbol, quantity, average_cost,
                                      cost_basis, updated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (account, instrument_id) DO UPDATE
               SET symbol = EXCLUDED.symbol, quantity = EXCLUDED.quantity,
                   average_cost = EXCLUDED.average_cost, cost_basis = EXCLUDED.cost_basis,
                   updated_at = EXCLUDED.updated_at,
                   last_price = NULL, price_at = NULL, market_value = NULL,
                   unrealized_pnl = NULL, unrealized_pnl_pct = NULL""",
            [(event.account, *r, event.fetched_at) for r in rows],
        )
    conn.execute(_REVALUE.format(where="p.account = %s"), (event.account,))


# ---- quotes -------------------------------------------------------------------------------------


def _quote_rows(payload: Any) -> list[tuple[str, Decimal, Any]]:
    rows = []
    for quote in results(payload, "quotes"):
        symbol = require(quote, "symbol", "quote")
        price = opt_dec(quote.get("last_trade_price"), f"{symbol} last_trade_price")
        if price is None:
            continue  # no trade yet (e.g. a halted or new listing): keep the previous price
        quoted_at = parse_ts(quote["updated_at"], "quote updated_at") if quote.get("updated_at") else None
        rows.append((str(symbol), price, quoted_at))
    return rows


def apply_quotes(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    rows = _quote_rows(payload)
    if not rows:
        return
    symbols = {r[0] for r in rows}

    def covers(newer: Any) -> None:  # a newer quotes snapshot pricing every one of our symbols
        if not symbols <= {r[0] for r in _quote_rows(newer)}:
            raise PayloadError("does not price every symbol")

    if superseded(conn, event, covers):
        return
    _apply_quote_rows(conn, event, rows)


def _apply_quote_rows(conn: psycopg.Connection[Any], event: Event,
                      rows: list[tuple[str, Decimal, Any]]) -> None:
    symbols = {r[0] for r in rows}
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO positions_last_prices (symbol, price, quoted_at, fetched_at)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (symbol) DO UPDATE
               SET price = EXCLUDED.price, quoted_at = EXCLUDED.quoted_at,
                   fetched_at = EXCLUDED.fetched_at
               WHERE positions_last_prices.fetched_at <= EXCLUDED.fetched_at""",
            [(*r, event.fetched_at) for r in rows],
        )
    conn.execute(_REVALUE.format(where="p.symbol = ANY (%s::text[])"), (sorted(symbols),))


# ---- option positions ---------------------------------------------------------------------------


def _option_rows(event: Event, payload: Any) -> list[dict[str, Any]]:
    instruments = response(payload, "instruments")
    if not isinstance(instruments, dict):
        raise PayloadError("'instruments' is not a map of option URL to option instrument")
    marks: dict[str, dict[str, Any]] = {}
    for md in results(payload, "marketdata"):
        key = md.get("instrument_id") or id_from_url(md.get("instrument"), "marketdata instrument")
        marks[str(key)] = md
    by_id = {}
    for url, inst in instruments.items():
        if isinstance(inst, dict):
            by_id[str(inst.get("id") or id_from_url(url, "option instrument"))] = inst
    today = market_day(event.fetched_at)
    out = []
    for agg in results(payload, "positions"):
        quantity = dec(require(agg, "quantity", "option position"), "option position quantity")
        if quantity == 0:
            continue
        legs = require(agg, "legs", "option position")
        if not isinstance(legs, list) or not legs:
            raise PayloadError("option position has no legs")
        multiplier = dec(agg.get("trade_value_multiplier") or "100", "trade_value_multiplier")
        avg_open = opt_dec(agg.get("average_open_price"), "average_open_price")
        single = len(legs) == 1
        for leg in legs:
            option_id = str(leg.get("option_id") or id_from_url(require(leg, "option", "leg"), "leg option"))
            inst = instruments.get(leg.get("option")) or by_id.get(option_id) or {}
            option_type = leg.get("option_type") or inst.get("type")
            if option_type not in ("call", "put"):
                raise PayloadError(f"option {option_id} has no call/put type")
            direction = require(leg, "position_type", "leg")
            if direction not in ("long", "short"):
                raise PayloadError(f"leg position_type {direction!r} is not long/short")
            strike = dec(leg.get("strike_price") or inst.get("strike_price"), "strike_price")
            expiration = parse_day(leg.get("expiration_date") or inst.get("expiration_date"), "expiration_date")
            ratio = dec(leg.get("ratio_quantity") or 1, "ratio_quantity")
            md = marks.get(option_id, {})
            mark = opt_dec(md.get("mark_price") or md.get("adjusted_mark_price"), "mark_price")
            qty = quantity * ratio
            avg_price = abs(avg_open) / multiplier if single and avg_open is not None else None
            sign = Decimal(1) if direction == "long" else Decimal(-1)
            market_value = sign * mark * qty * multiplier if mark is not None else None
            pnl = pct = None
            if mark is not None and avg_price is not None:
                pnl = sign * (mark - avg_price) * qty * multiplier
                basis = avg_price * qty * multiplier
                pct = round(pnl / basis * 100, 4) if basis else None
            out.append({
                "option_id": option_id,
                "position_id": str(agg.get("id") or option_id),
                "chain_symbol": str(agg.get("symbol") or inst.get("chain_symbol") or require(agg, "symbol")),
                "strategy": agg.get("strategy"),
                "option_type": option_type,
                "direction": direction,
                "strike": strike,
                "expiration": expiration,
                "quantity": qty,
                "multiplier": multiplier,
                "average_price": avg_price,
                "mark": mark,
                "delta": opt_dec(md.get("delta"), "delta"),
                "gamma": opt_dec(md.get("gamma"), "gamma"),
                "theta": opt_dec(md.get("theta"), "theta"),
                "vega": opt_dec(md.get("vega"), "vega"),
                "rho": opt_dec(md.get("rho"), "rho"),
                "implied_volatility": opt_dec(md.get("implied_volatility"), "implied_volatility"),
                "market_value": market_value,
                "unrealized_pnl": pnl,
                "unrealized_pnl_pct": pct,
                "days_to_expiration": (expiration - today).days,
            })
    return out


_OPTION_COLUMNS = (
    "option_id", "position_id", "chain_symbol", "strategy", "option_type", "direction", "strike",
    "expiration", "quantity", "multiplier", "average_price", "mark", "delta", "gamma", "theta",
    "vega", "rho", "implied_volatility", "market_value", "unrealized_pnl", "unrealized_pnl_pct",
    "days_to_expiration",
)


def apply_option_positions(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    rows = _option_rows(event, payload)
    if superseded(conn, event, lambda p: _option_rows(event, p)):
        return
    _apply_options(conn, event, rows)


def _apply_options(conn: psycopg.Connection[Any], event: Event, rows: list[dict[str, Any]]) -> None:
    if not _is_newest(conn, event):
        return
    conn.execute(
        "DELETE FROM option_positions WHERE account = %s AND NOT (option_id = ANY (%s::text[]))",
        (event.account, [r["option_id"] for r in rows]),
    )
    cols = ", ".join(_OPTION_COLUMNS)
    marks = ", ".join(["%s"] * (len(_OPTION_COLUMNS) + 2))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_OPTION_COLUMNS[1:], "updated_at"))
    with conn.cursor() as cur:
        cur.executemany(
            f"""INSERT INTO option_positions (account, {cols}, updated_at) VALUES ({marks})
                ON CONFLICT (account, option_id) DO UPDATE SET {updates}""",
            [(event.account, *(r[c] for c in _OPTION_COLUMNS), event.fetched_at) for r in rows],
        )


# ---- the consumer -------------------------------------------------------------------------------


def handle(conn: psycopg.Connection[Any], event: Event) -> None:
    payload = envelope_of(event.payload, event.raw_body)
    if event.kind == STOCK_POSITIONS:
        apply_stock_positions(conn, event, payload)
    elif event.kind == OPTION_POSITIONS:
        apply_option_positions(conn, event, payload)
    elif event.kind == QUOTES:
        apply_quotes(conn, event, payload)
    else:
        raise PayloadError(f"positions does not handle kind {event.kind!r}")


# ---- a whole batch (replays) -------------------------------------------------------------------


def handle_batch(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
    """The effect of :func:`handle` on each event in order, with the supersede checks of the
    whole batch in one query: in a replay nearly every snapshot is superseded and costs no
    round trip of its own; the few that are not are applied exactly as :func:`handle` does.

    Every event is parsed first, as :func:`handle` does (a bad one raises, and the runtime redoes
    the batch one event at a time). Whether a payload parses does not depend on the older
    snapshot it is checked for, so a batch event that parsed here passes that check without
    being parsed again; quotes keep their symbols for the "prices every symbol" check.
    """
    parsed: set[int] = set()
    quoted: dict[int, set[str]] = {}
    checks: list[tuple[Event, Any, Callable[[int, Any], None]]] = []
    for event in events:
        payload = envelope_of(event.payload, event.raw_body)
        if event.kind == STOCK_POSITIONS:
            _stock_rows(payload)
            parsed.add(event.id)
            checks.append((event, payload, _known_or(parsed, _stock_rows)))
        elif event.kind == OPTION_POSITIONS:
            _option_rows(event, payload)
            parsed.add(event.id)
            checks.append((event, payload, _known_or(parsed, functools.partial(_option_rows, event))))
        elif event.kind == QUOTES:
            symbols = {r[0] for r in _quote_rows(payload)}
            quoted[event.id] = symbols
            if symbols:  # handle() returns before its check when nothing is priced
                checks.append((event, payload, _covers(symbols, quoted)))
        else:
            raise PayloadError(f"positions does not handle kind {event.kind!r}")
    if not checks:
        return
    done = superseded_many(conn, [(e, check) for e, _, check in checks],
                           {e.id: e.payload for e in events})
    for event, payload, _ in checks:
        if event.id in done:
            continue
        if event.kind == STOCK_POSITIONS:
            _apply_stock(conn, event, _stock_rows(payload))
        elif event.kind == OPTION_POSITIONS:
            _apply_options(conn, event, _option_rows(event, payload))
        else:
            _apply_quote_rows(conn, event, _quote_rows(payload))


def _known_or(parsed: set[int], parse: Callable[[Any], object]) -> Callable[[int, Any], None]:
    def check(event_id: int, payload: Any) -> None:
        if event_id not in parsed:
            parse(payload)
            parsed.add(event_id)
    return check


def _covers(symbols: set[str], quoted: dict[int, set[str]]) -> Callable[[int, Any], None]:
    def check(event_id: int, payload: Any) -> None:  # as covers() in apply_quotes
        newer = quoted.get(event_id)
        if newer is None:
            newer = quoted[event_id] = {r[0] for r in _quote_rows(payload)}
        if not symbols <= newer:
            raise PayloadError("does not price every symbol")
    return check


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"TRUNCATE {', '.join(TABLES)}")


CONSUMER = Consumer(
    name="positions",
    kinds=(STOCK_POSITIONS, OPTION_POSITIONS, QUOTES),
    handle=handle,
    handle_batch=handle_batch,
    reset=reset,
    tables=TABLES,
    description="Applies position snapshots and quotes to positions and option_positions",
)

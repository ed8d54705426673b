"""The trade_history consumer: every fill once, and closed trades matched FIFO.

Inputs are ``stock_orders`` and ``option_orders`` snapshots, which are **deltas**: every order
updated since the previous fetch, each with all its executions so far (see
``schema/payloads.py``). So:

* ``trade_orders`` keeps each order at its newest broker ``updated_at`` (an older version
  arriving later never overwrites it; ``fetched_at`` is that of the first snapshot that
  brought the version kept);
* ``trade_executions`` holds every execution once (primary key: the broker's execution id).
  Failed and rejected orders contribute no fills; a cancelled order's partial fills count.
  Option fills carry their multiplier (``trade_value_multiplier``, default 100). An order's fees
  (stock ``fees``; option ``regulatory_fees`` + ``contract_fees``) are spread over its fills in
  proportion to quantity, the last fill taking the rounding remainder.
* ``closed_trades`` and ``open_lots`` are the FIFO matching of each account's fills per
  instrument (stock instrument or option contract), ordered by execution time then execution
  id. Whenever an instrument gains a fill (or an order's fees change) its lots are recomputed
  from all its fills, so the result is the same whatever order the fills arrived in, and a
  replay gives the same rows.

Stocks: a buy opens a long lot, a sell closes the oldest long lots. Options: ``position_effect``
says open or close (inferred from the open lots when absent); buy-to-open is long,
sell-to-open is short. A close with no open lot left (its opening fill predates the synced
history) is kept with an unknown basis (``open_execution_id``, ``cost_basis`` and
``realized_pnl`` NULL) rather than inventing one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
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
from schema.eventlog import OPTION_ORDERS, STOCK_ORDERS
from schema.payloads import PayloadError, response, results

TABLES = ("trade_orders", "trade_executions", "closed_trades", "open_lots")
NO_FILL_STATES = frozenset({"failed", "rejected"})  # their executions (if any) are ignored
CENT4 = Decimal("0.0001")


def money(value: Decimal) -> Decimal:
    """Amounts derived by division are rounded to 4 places (half-even), deterministically."""
    return value.quantize(CENT4, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Fill:
    execution_id: str
    order_id: str
    leg_id: str | None
    asset_type: str
    instrument_key: str
    symbol: str
    option_type: str | None
    strike: Decimal | None
    expiration: date | None
    position_effect: str | None
    side: str
    quantity: Decimal
    price: Decimal
    multiplier: Decimal
    executed_at: datetime
    settlement_date: date | None


@dataclass(frozen=True)
class Order:
    order_id: str
    asset_type: str
    symbol: str
    side: str | None
    direction: str | None
    state: str
    order_type: str | None
    quantity: Decimal | None
    executed_quantity: Decimal
    average_price: Decimal | None
    fees: Decimal
    created_at: datetime | None
    updated_at: datetime
    fills: tuple[Fill, ...]


# ---- parsing ------------------------------------------------------------------------------------


def _execution(raw: Any, what: str) -> tuple[str, Decimal, Decimal, datetime, date | None]:
    if not isinstance(raw, dict):
        raise PayloadError(f"an execution of {what} is not an object")
    exec_id = str(require(raw, "id", f"execution of {what}"))
    qty = dec(require(raw, "quantity", f"execution {exec_id}"), f"execution {exec_id} quantity")
    price = dec(require(raw, "price", f"execution {exec_id}"), f"execution {exec_id} price")
    if qty <= 0 or price < 0:
        raise PayloadError(f"execution {exec_id} has quantity {qty} and price {price}")
    at = parse_ts(require(raw, "timestamp", f"execution {exec_id}"), f"execution {exec_id} timestamp")
    settle = parse_day(raw["settlement_date"], "settlement_date") if raw.get("settlement_date") else None
    return exec_id, qty, price, at, settle


def _side(value: Any, what: str) -> str:
    if value not in ("buy", "sell"):
        raise PayloadError(f"{what} side {value!r:.20} is not buy/sell")
    return str(value)


def parse_stock_order(raw: dict[str, Any], instruments: dict[str, Any]) -> Order:
    order_id = str(require(raw, "id", "order"))
    what = f"order {order_id}"
    url = require(raw, "instrument", what)
    instrument = instruments.get(url)
    if not isinstance(instrument, dict) or not instrument.get("symbol"):
        raise PayloadError(f"{what}: instrument {url!r:.80} is not in 'instruments'")
    symbol = str(instrument["symbol"])
    key = str(raw.get("instrument_id") or instrument.get("id") or id_from_url(url, "instrument"))
    side = _side(raw.get("side"), what)
    fills = []
    for ex in raw.get("executions") or []:
        exec_id, qty, price, at, settle = _execution(ex, what)
        fills.append(Fill(exec_id, order_id, None, "stock", key, symbol, None, None, None, None,
                          side, qty, price, Decimal(1), at, settle))
    return Order(
        order_id=order_id, asset_type="stock", symbol=symbol, side=side, direction=None,
        state=str(require(raw, "state", what)), order_type=raw.get("type"),
        quantity=opt_dec(raw.get("quantity"), "quantity"),
        executed_quantity=dec(raw.get("cumulative_quantity") or "0", "cumulative_quantity"),
        average_price=opt_dec(raw.get("average_price"), "average_price"),
        fees=dec(raw.get("fees") or "0", "fees"),
        created_at=parse_ts(raw["created_at"], "created_at") if raw.get("created_at") else None,
        updated_at=parse_ts(require(raw, "updated_at", what), "updated_at"),
        fills=tuple(fills),
    )


def parse_option_order(raw: dict[str, Any]) -> Order:
    order_id = str(require(raw, "id", "option order"))
    what = f"option order {order_id}"
    symbol = str(require(raw, "chain_symbol", what))
    order_multiplier = raw.get("trade_value_multiplier")
    fills = []
    legs = require(raw, "legs", what)
    if not isinstance(legs, list):
        raise PayloadError(f"{what}: legs is not a list")
    for leg in legs:
        if not isinstance(leg, dict):
            raise PayloadError(f"{what}: a leg is not an object")
        leg_id = str(leg["id"]) if leg.get("id") else None
        option_id = str(leg.get("option_id") or id_from_url(require(leg, "option", f"{what} leg"), "leg option"))
        side = _side(leg.get("side"), f"{what} leg")
        option_type = leg.get("option_type")
        if option_type not in ("call", "put"):
            raise PayloadError(f"{what}: leg option_type {option_type!r:.20} is not call/put")
        strike = dec(require(leg, "strike_price", f"{what} leg"), "strike_price")
        expiration = parse_day(require(leg, "expiration_date", f"{what} leg"), "expiration_date")
        effect = leg.get("position_effect")
        if effect not in (None, "open", "close"):
            raise PayloadError(f"{what}: leg position_effect {effect!r:.20} is not open/close")
        multiplier = dec(leg.get("trade_value_multiplier") or order_multiplier or "100",
                         "trade_value_multiplier")
        for ex in leg.get("executions") or []:
            exec_id, qty, price, at, settle = _execution(ex, what)
            fills.append(Fill(exec_id, order_id, leg_id, "option", option_id, symbol, option_type,
                              strike, expiration, effect, side, qty, price, multiplier, at, settle))
    fees = dec(raw.get("regulatory_fees") or "0", "regulatory_fees") + dec(
        raw.get("contract_fees") or "0", "contract_fees")
    return Order(
        order_id=order_id, asset_type="option", symbol=symbol, side=None,
        direction=raw.get("direction"), state=str(require(raw, "state", what)),
        order_type=raw.get("type"), quantity=opt_dec(raw.get("quantity"), "quantity"),
        executed_quantity=dec(raw.get("processed_quantity") or "0", "processed_quantity"),
        average_price=opt_dec(raw.get("price"), "price"), fees=fees,
        created_at=parse_ts(raw["created_at"], "created_at") if raw.get("created_at") else None,
        updated_at=parse_ts(require(raw, "updated_at", what), "updated_at"),
        fills=tuple(fills),
    )


def parse_orders(event: Event, payload: Any) -> list[Order]:
    if event.kind == STOCK_ORDERS:
        instruments = response(payload, "instruments")
        if not isinstance(instruments, dict):
            raise PayloadError("'instruments' is not a map of instrument URL to instrument")
        return [parse_stock_order(o, instruments) for o in results(payload, "orders")]
    return [parse_option_order(o) for o in results(payload, "orders")]


# ---- applying an orders snapshot ----------------------------------------------------------------


def _store_order(conn: psycopg.Connection[Any], event: Event, o: Order) -> bool:
    """Keep the order's newest version (by the broker's updated_at); True if this one was kept.

    A version with the same updated_at as the kept one is the same version fetched again.
    """
    row = conn.execute(
        """INSERT INTO trade_orders (order_id, account, asset_type, symbol, side, direction, state,
               order_type, quantity, executed_quantity, average_price, fees, created_at,
               updated_at, fetched_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (order_id) DO UPDATE
           SET state = EXCLUDED.state, order_type = EXCLUDED.order_type,
               quantity = EXCLUDED.quantity, executed_quantity = EXCLUDED.executed_quantity,
               average_price = EXCLUDED.average_price, fees = EXCLUDED.fees,
               symbol = EXCLUDED.symbol, side = EXCLUDED.side, direction = EXCLUDED.direction,
               created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
               fetched_at = EXCLUDED.fetched_at
           WHERE trade_orders.updated_at < EXCLUDED.updated_at
           RETURNING 1""",
        (o.order_id, event.account, o.asset_type, o.symbol, o.side, o.direction, o.state,
         o.order_type, o.quantity, o.executed_quantity, o.average_price, o.fees, o.created_at,
         o.updated_at, event.fetched_at),
    ).fetchone()
    return row is not None


def _insert_fills(conn: psycopg.Connection[Any], account: str, fills: tuple[Fill, ...]) -> set[str]:
    """Insert the fills not seen before; return the instrument keys that gained one."""
    gained: set[str] = set()
    for f in fills:
        row = conn.execute(
            """INSERT INTO trade_executions (execution_id, account, order_id, leg_id, asset_type,
                   instrument_key, symbol, option_type, strike, expiration, position_effect, side,
                   quantity, price, multiplier, amount, fees, executed_at, trade_date,
                   settlement_date)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s)
               ON CONFLICT (execution_id) DO NOTHING
               RETURNING instrument_key""",
            (f.execution_id, account, f.order_id, f.leg_id, f.asset_type, f.instrument_key,
             f.symbol, f.option_type, f.strike, f.expiration, f.position_effect, f.side,
             f.quantity, f.price, f.multiplier, f.price * f.quantity * f.multiplier,
             f.executed_at, market_day(f.executed_at), f.settlement_date),
        ).fetchone()
        if row is not None:
            gained.add(str(row[0]))
    return gained


def _allocate_fees(conn: psycopg.Connection[Any], order_id: str) -> set[str]:
    """Spread the order's kept fees over its fills; return instrument keys whose fees changed."""
    row = conn.execute("SELECT fees FROM trade_orders WHERE order_id = %s", (order_id,)).fetchone()
    if row is None:
        return set()
    total = Decimal(row[0])
    fills = conn.execute(
        """SELECT execution_id, quantity, fees, instrument_key FROM trade_executions
           WHERE order_id = %s ORDER BY executed_at, execution_id""",
        (order_id,),
    ).fetchall()
    qty_total = sum((Decimal(f[1]) for f in fills), Decimal(0))
    changed: set[str] = set()
    if qty_total == 0:
        return changed
    left = total
    for i, (exec_id, qty, old, key) in enumerate(fills):
        share = left if i == len(fills) - 1 else money(total * Decimal(qty) / qty_total)
        left -= share
        if Decimal(old) != share:
            conn.execute("UPDATE trade_executions SET fees = %s WHERE execution_id = %s", (share, exec_id))
            changed.add(str(key))
    return changed


def apply_orders(conn: psycopg.Connection[Any], event: Event, payload: Any) -> None:
    orders = parse_orders(event, payload)  # the whole snapshot parses before anything is written
    dirty: set[str] = set()
    for o in orders:
        kept = _store_order(conn, event, o)
        gained = _insert_fills(conn, event.account, o.fills) if o.state not in NO_FILL_STATES else set()
        if kept or gained:  # the fees or the fills changed: spread the fees again
            dirty |= gained | _allocate_fees(conn, o.order_id)
    for key in sorted(dirty):
        rematch(conn, event.account, key)


# ---- FIFO matching ------------------------------------------------------------------------------


@dataclass
class _Lot:
    execution_id: str
    direction: str
    quantity: Decimal  # remaining
    original: Decimal
    price: Decimal
    fees: Decimal  # the opening fill's fees, for its whole original quantity
    opened_at: datetime


def _is_long_term(opened: date, closed: date) -> bool:
    """Held more than one year (the US rule: sold after the anniversary of the purchase)."""
    try:
        anniversary = opened.replace(year=opened.year + 1)
    except ValueError:  # bought on 29 February
        anniversary = date(opened.year + 1, 3, 1)
    return closed > anniversary


def rematch(conn: psycopg.Connection[Any], account: str, key: str) -> None:
    """Recompute an instrument's closed trades and open lots from all its fills (FIFO)."""
    rows = conn.execute(
        """SELECT execution_id, asset_type, symbol, option_type, strike, expiration,
                  position_effect, side, quantity, price, multiplier, fees, executed_at
           FROM trade_executions WHERE account = %s AND instrument_key = %s
           ORDER BY executed_at, execution_id""",
        (account, key),
    ).fetchall()
    lots: deque[_Lot] = deque()
    closed: list[tuple[Any, ...]] = []
    meta: tuple[Any, ...] = ()
    multiplier = Decimal(1)
    for (exec_id, asset_type, symbol, option_type, strike, expiration, effect, side, qty, price,
         mult, fees, at) in rows:
        meta = (asset_type, symbol, option_type, strike, expiration)
        multiplier = Decimal(mult)
        qty, price, fees = Decimal(qty), Decimal(price), Decimal(fees)
        if asset_type == "stock":
            closing = side == "sell"
        elif effect is not None:
            closing = effect == "close"
        else:  # no position_effect: a fill against open lots of the other side closes them
            closing = any(lot.direction == ("long" if side == "sell" else "short") for lot in lots)
        if not closing:
            lots.append(_Lot(exec_id, "long" if side == "buy" else "short", qty, qty, price, fees, at))
            continue
        closes = "long" if side == "sell" else "short"
        remaining, seq = qty, 0
        for lot in list(lots):
            if remaining == 0:
                break
            if lot.direction != closes or lot.quantity == 0:
                continue
            take = min(lot.quantity, remaining)
            seq += 1
            open_amount, close_amount = lot.price * take * multiplier, price * take * multiplier
            proceeds, basis = (close_amount, open_amount) if closes == "long" else (open_amount, close_amount)
            lot_fees = money(lot.fees * take / lot.original + fees * take / qty)
            opened_day, closed_day = market_day(lot.opened_at), market_day(at)
            closed.append((exec_id, seq, lot.execution_id, closes, take, lot.price, price,
                           lot.opened_at, at, proceeds, basis, lot_fees,
                           proceeds - basis - lot_fees, (closed_day - opened_day).days,
                           "long" if _is_long_term(opened_day, closed_day) else "short",
                           market_day(at).year))
            lot.quantity -= take
            remaining -= take
        if remaining > 0:  # nothing left to match: the basis is unknown
            seq += 1
            amount = price * remaining * multiplier
            closed.append((exec_id, seq, None, closes, remaining, None, price, None, at,
                           amount if closes == "long" else None,
                           None if closes == "long" else amount,
                           money(fees * remaining / qty), None, None, None, market_day(at).year))
        lots = deque(lot for lot in lots if lot.quantity != 0)
    conn.execute("DELETE FROM closed_trades WHERE account = %s AND instrument_key = %s", (account, key))
    conn.execute("DELETE FROM open_lots WHERE account = %s AND instrument_key = %s", (account, key))
    if not rows:
        return
    asset_type, symbol, option_type, strike, expiration = meta
    with conn.cursor() as cur:
        if closed:
            cur.executemany(
                """INSERT INTO closed_trades (close_execution_id, seq, open_execution_id, account,
                       asset_type, instrument_key, symbol, option_type, strike, expiration,
                       direction, quantity, multiplier, open_price, close_price, opened_at,
                       closed_at, proceeds, cost_basis, fees, realized_pnl, holding_days, term,
                       tax_year)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                           %s, %s, %s, %s, %s, %s, %s)""",
                [(c[0], c[1], c[2], account, asset_type, key, symbol, option_type, strike,
                  expiration, c[3], c[4], multiplier, *c[5:]) for c in closed],
            )
        if lots:
            cur.executemany(
                """INSERT INTO open_lots (open_execution_id, account, asset_type, instrument_key,
                       symbol, direction, quantity, price, multiplier, fees, opened_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(lot.execution_id, account, asset_type, key, symbol, lot.direction, lot.quantity,
                  lot.price, multiplier, money(lot.fees * lot.quantity / lot.original),
                  lot.opened_at) for lot in lots],
            )


# ---- the consumer -------------------------------------------------------------------------------


def handle(conn: psycopg.Connection[Any], event: Event) -> None:
    payload = envelope_of(event.payload, event.raw_body)
    if event.kind not in (STOCK_ORDERS, OPTION_ORDERS):
        raise PayloadError(f"trade_history does not handle kind {event.kind!r}")
    apply_orders(conn, event, payload)


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"TRUNCATE {', '.join(TABLES)}")


CONSUMER = Consumer(
    name="trade_history",
    kinds=(STOCK_ORDERS, OPTION_ORDERS),
    handle=handle,
    reset=reset,
    tables=TABLES,
    description="Applies stock and option orders to trade_executions and FIFO closed_trades",
)

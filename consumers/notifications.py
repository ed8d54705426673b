"""The notifications consumer: rules over the event stream, delivered by ``brokersync worker``.

Rules (thresholds are ``BROKERSYNC_NOTIFY_*`` settings):

* ``position_opened`` / ``position_closed``: a stock or option position appears in / disappears
  from an account's positions snapshot (a snapshot is the full state).
* ``pnl_move``: a position's unrealized P&L % crosses a multiple of ``NOTIFY_PNL_MOVE_PCT``
  (``NOTIFY_OPTION_PNL_MOVE_PCT`` for options); bands ..., -10..-5, -5..5, 5..10, ...; entering
  another band alerts, at most once per band, position and local day. Stocks are
  priced by ``quotes`` snapshots, options by their mark. The first band of a position is
  recorded silently: a move is a change, not a level.
* ``option_expiry``: an option position expires within ``NOTIFY_OPTION_EXPIRY_DAYS`` days
  (once per position and expiration).
* ``buying_power_low``: buying power goes under ``NOTIFY_BUYING_POWER_FLOOR`` (once; re-arms
  when it recovers).
* ``producer_failing`` (tick): the last ``NOTIFY_PRODUCER_FAILING_CYCLES`` producer cycles all
  failed or were partial (once per failing streak).
* ``data_stale`` (tick): the newest snapshot is older than ``NOTIFY_DATA_AGE_MINUTES`` (once per
  newest snapshot).
* ``daily_summary`` (tick): per account, at ``NOTIFY_DAILY_SUMMARY_TIME`` in
  ``NOTIFY_TIME_ZONE`` (once per local day).

State: the consumer keeps its own small tables (``notify_*``), derived only from the events'
contents and fetched times, so ``brokersync replay notifications`` rebuilds them exactly. Every
notification has a deterministic dedupe key; :mod:`consumers.delivery` records it per sink and
queues the dramatiq message in the consumer's own transaction, so a replay finds the keys and
sends nothing again.

Speed: a replay applies whole batches through :meth:`Rules.handle_batch`, which loads the
``notify_*`` rows once per batch, runs the rules on an in-memory copy that mirrors the
per-event SQL row for row, and writes the changed rows, the deliveries and their messages with a
few set-based statements. It has exactly the effect of :meth:`Rules.handle` per event (the
tests in ``tests/notifications/test_batch.py`` compare every row); when it raises, the runtime
redoes the batch per event, which also decides about a poison event.

Settings: ``CONSUMER`` (what ``brokersync consumer notifications`` loads) is built on first
access from the validated environment; code that has a :class:`Settings` calls :func:`build`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, overload
from zoneinfo import ZoneInfo

import psycopg

from brokersync.settings import Settings
from consumers.delivery import Notification, record, record_many
from consumers.runtime import Consumer, Event
from consumers.sinks import check_settings, time_zone
from schema import eventlog
from schema.payloads import PayloadError, response, results

log = logging.getLogger(__name__)

NAME = "notifications"
KINDS = (
    eventlog.STOCK_POSITIONS,
    eventlog.OPTION_POSITIONS,
    eventlog.QUOTES,
    eventlog.ACCOUNT,
    eventlog.PORTFOLIO,
)
STATE_TABLES = ("notify_snapshot_marks", "notify_positions", "notify_quotes", "notify_accounts")
ALL_ACCOUNTS = "*"
PCT_STEP = Decimal("0.000001")  # P&L % is kept to 6 decimals


def _dec(value: Any, what: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise PayloadError(f"{what} is not a number: {value!r:.40}") from None
    if not d.is_finite():
        raise PayloadError(f"{what} is not a finite number: {value!r:.40}")
    return d


def _opt_dec(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _num(d: Decimal) -> str:
    """10.00000000 -> "10", 2.5000 -> "2.5" (never "1E+1")."""
    return format(d.normalize(), "f")


def _money(d: Decimal | None) -> str:
    if d is None:
        return "n/a"
    return f"-${-d:,.2f}" if d < 0 else f"${d:,.2f}"


def _pct(d: Decimal) -> str:
    return f"{d:+.2f}%"


@dataclass(frozen=True)
class Held:
    """A position parsed from a snapshot."""

    key: str
    asset: str
    symbol: str
    label: str
    quantity: Decimal
    average_cost: Decimal
    multiplier: Decimal = Decimal(1)
    direction: int = 1
    expiration: date | None = None
    mark: Decimal | None = None


@dataclass(frozen=True)
class Priced:
    """A held position with its current price, for P&L banding."""

    account: str
    key: str
    asset: str
    label: str
    quantity: Decimal
    average_cost: Decimal
    multiplier: Decimal
    direction: int
    previous_pct: Decimal | None  # the P&L % at the previous price (state, not a setting)
    price: Decimal | None


# ---- parsing the Robinhood payloads (schema/payloads.py is the contract) ---------------------


def parse_stock_positions(payload: Any) -> dict[str, Held]:
    instruments = response(payload, "instruments")
    if not isinstance(instruments, dict):
        raise PayloadError("'instruments' is not an object keyed by instrument URL")
    out: dict[str, Held] = {}
    for item in results(payload, "positions"):
        qty = _dec(item.get("quantity"), "position quantity")
        if qty == 0:
            continue
        symbol = item.get("symbol")
        if not symbol:
            inst = instruments.get(item.get("instrument"))
            symbol = inst.get("symbol") if isinstance(inst, dict) else None
        if not symbol:
            raise PayloadError(f"no symbol for position instrument {item.get('instrument')!r:.80}")
        avg = _dec(item.get("average_buy_price"), f"{symbol} average_buy_price")
        out[symbol] = Held(symbol, "stock", symbol, symbol, qty, avg)
    return out


def parse_option_positions(payload: Any) -> dict[str, Held]:
    marks: dict[str, Decimal] = {}
    for md in results(payload, "marketdata"):
        mark = _opt_dec(md.get("adjusted_mark_price")) or _opt_dec(md.get("mark_price"))
        if mark is not None and md.get("instrument"):
            marks[str(md["instrument"])] = mark
    out: dict[str, Held] = {}
    for item in results(payload, "positions"):
        qty = _dec(item.get("quantity"), "option position quantity")
        if qty == 0:
            continue
        pid = item.get("id")
        chain = item.get("chain_symbol") or item.get("symbol")  # aggregate positions: "symbol"
        legs = item.get("legs")
        if not pid or not chain or not isinstance(legs, list) or not legs:
            raise PayloadError("an option position lacks id, symbol or legs")
        multiplier = _dec(item.get("trade_value_multiplier") or "100", f"{chain} multiplier")
        avg = _dec(item.get("average_open_price"), f"{chain} average_open_price")
        expirations = []
        for leg in legs:
            if not isinstance(leg, dict) or not leg.get("expiration_date"):
                raise PayloadError(f"{chain} option leg has no expiration_date")
            try:
                expirations.append(date.fromisoformat(str(leg["expiration_date"])))
            except ValueError:
                raise PayloadError(f"{chain} expiration_date {leg['expiration_date']!r:.20}") from None
        mark = None
        direction = 1
        if len(legs) == 1:
            leg = legs[0]
            direction = -1 if leg.get("position_type") == "short" else 1
            strike = _opt_dec(leg.get("strike_price"))
            label = (f"{chain} {leg['expiration_date']} {_num(strike) if strike else '?'} "
                     f"{leg.get('option_type', '?')} ({leg.get('position_type', 'long')})")
            mark = marks.get(str(leg.get("option")))
        else:
            label = f"{chain} {item.get('strategy') or 'spread'} {min(expirations)}"
        out[str(pid)] = Held(str(pid), "option", chain, label, qty, avg, multiplier, direction,
                             min(expirations), mark)
    return out


def _buying_power(obj: dict[str, Any]) -> Decimal | None:
    return _opt_dec(obj.get("buying_power"))


def _equity(obj: dict[str, Any]) -> tuple[Decimal | None, Decimal | None]:
    equity = _opt_dec(obj.get("equity")) or _opt_dec(obj.get("extended_hours_equity"))
    prev = _opt_dec(obj.get("adjusted_equity_previous_close")) or _opt_dec(obj.get("equity_previous_close"))
    return equity, prev


# ---- what the rules fire (shared by the per-event and the batch handler) ---------------------


def _opened(event: Event, asset: str, h: Held) -> Notification:
    return Notification(
        rule="position_opened", account=event.account, subject=h.label,
        key=f"position_opened:{event.account}:{h.key}:{event.id}",
        title=f"Position opened: {h.label}",
        body=f"{h.label}: {_num(h.quantity)} at average cost {_money(h.average_cost)} "
             f"(account {event.account})",
        occurred_at=event.fetched_at, event_id=event.id,
        data={"asset": asset, "quantity": str(h.quantity), "average_cost": str(h.average_cost)},
    )


def _closed(event: Event, asset: str, key: str, label: str, qty: Decimal) -> Notification:
    return Notification(
        rule="position_closed", account=event.account, subject=label,
        key=f"position_closed:{event.account}:{key}:{event.id}",
        title=f"Position closed: {label}",
        body=f"{label}: {_num(qty)} no longer held (account {event.account})",
        occurred_at=event.fetched_at, event_id=event.id, data={"asset": asset},
    )


# ---- the rules -----------------------------------------------------------------------------


class Rules:
    """The consumer's handler, tick and reset, bound to validated settings."""

    def __init__(self, settings: Settings, sinks: tuple[str, ...],
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.sinks = sinks
        self.tz: ZoneInfo = time_zone(settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.band_pct = {
            "stock": Decimal(str(settings.notify_pnl_move_pct)),
            "option": Decimal(str(settings.notify_option_pnl_move_pct)),
        }
        self.max_age = timedelta(hours=settings.notify_max_event_age_hours)
        floor = settings.notify_buying_power_floor
        self.floor = Decimal(str(floor)) if floor is not None else None

    # ---- plumbing ----------------------------------------------------------------------------
    def emit(self, conn: psycopg.Connection[Any], n: Notification) -> None:
        expired = self.clock() - n.occurred_at > self.max_age
        if record(conn, n, self.sinks, expired=expired) and not expired:
            log.info("notification %s: %s", n.key, n.title)

    def _fresh(self, conn: psycopg.Connection[Any], event: Event) -> bool:
        """Record the event as the newest of its (account, kind); False when a newer one was seen."""
        row = conn.execute(
            """INSERT INTO notify_snapshot_marks AS m (account, kind, fetched_at, event_id)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (account, kind) DO UPDATE
               SET fetched_at = EXCLUDED.fetched_at, event_id = EXCLUDED.event_id
               WHERE m.fetched_at <= EXCLUDED.fetched_at
               RETURNING 1""",
            (event.account, event.kind, event.fetched_at, event.id),
        ).fetchone()
        if row is None:
            log.info("%s: event %s (%s, %s) is older than one already applied; ignored",
                     NAME, event.id, event.kind, event.account)
        return row is not None

    def handle(self, conn: psycopg.Connection[Any], event: Event) -> None:
        if event.malformed:
            raise PayloadError(f"snapshot body is not JSON: {event.raw_body!r:.60}")
        handlers: dict[str, Callable[[psycopg.Connection[Any], Event, Any], None]] = {
            eventlog.STOCK_POSITIONS: self._stock_positions,
            eventlog.OPTION_POSITIONS: self._option_positions,
            eventlog.QUOTES: self._quotes,
            eventlog.ACCOUNT: self._account,
            eventlog.PORTFOLIO: self._portfolio,
        }
        handler = handlers.get(event.kind)
        if handler is None:
            return
        # Parse before touching any table: a bad payload changes nothing.
        parsed = self._parse(event)
        if not self._fresh(conn, event):
            return
        handler(conn, event, parsed)

    def _parse(self, event: Event) -> Any:
        if event.kind == eventlog.STOCK_POSITIONS:
            return parse_stock_positions(event.payload)
        if event.kind == eventlog.OPTION_POSITIONS:
            return parse_option_positions(event.payload)
        if event.kind == eventlog.QUOTES:
            prices: dict[str, Decimal] = {}
            for q in results(event.payload, "quotes"):
                price = _opt_dec(q.get("last_trade_price"))
                if q.get("symbol") and price is not None:
                    prices[str(q["symbol"])] = price
            return prices
        obj = response(event.payload, event.kind)
        if not isinstance(obj, dict):
            raise PayloadError(f"{event.kind!r} response is not an object")
        return obj

    # ---- positions: open / close, P&L band, expiry ------------------------------------------
    # Round trips matter (a year of history is ~250k events): a snapshot that changes nothing
    # costs one SELECT; rows are written only when they change.
    def _positions(self, conn: psycopg.Connection[Any], event: Event, asset: str,
                   new: dict[str, Held]) -> tuple[dict[str, Any], list[Held]]:
        """Apply a full positions snapshot; return (the previous rows by key, the changed positions)."""
        old = {
            r[0]: r
            for r in conn.execute(
                """SELECT position_key, label, quantity, average_cost, multiplier, direction,
                          expiration, mark, pnl_pct
                   FROM notify_positions WHERE account = %s AND asset = %s
                   ORDER BY position_key""",
                (event.account, asset),
            )
        }
        changed: list[Held] = []
        marks: list[Held] = []
        for key, h in new.items():
            o = old.get(key)
            if o is None:
                self.emit(conn, _opened(event, asset, h))
                changed.append(h)
            elif tuple(o[1:7]) != (h.label, h.quantity, h.average_cost, h.multiplier, h.direction,
                                   h.expiration):
                changed.append(h)
            elif o[7] != h.mark:
                marks.append(h)
        if changed:
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO notify_positions (account, position_key, asset, symbol, label,
                           quantity, average_cost, multiplier, direction, expiration, mark,
                           opened_event_id, updated_at)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (account, position_key) DO UPDATE
                       SET label = EXCLUDED.label, quantity = EXCLUDED.quantity,
                           average_cost = EXCLUDED.average_cost, multiplier = EXCLUDED.multiplier,
                           direction = EXCLUDED.direction, expiration = EXCLUDED.expiration,
                           mark = EXCLUDED.mark, updated_at = EXCLUDED.updated_at""",
                    [(event.account, h.key, asset, h.symbol, h.label, h.quantity, h.average_cost,
                      h.multiplier, h.direction, h.expiration, h.mark, event.id, event.fetched_at)
                     for h in changed],
                )
        if marks:  # option marks move every snapshot: one statement for all of them
            conn.execute(
                """UPDATE notify_positions p SET mark = v.mark
                   FROM unnest(%s::text[], %s::numeric[]) AS v(position_key, mark)
                   WHERE p.account = %s AND p.position_key = v.position_key""",
                ([h.key for h in marks], [h.mark for h in marks], event.account),
            )
        closed = [key for key in old if key not in new]
        for key in closed:
            self.emit(conn, _closed(event, asset, key, old[key][1], old[key][2]))
        if closed:
            conn.execute(
                "DELETE FROM notify_positions WHERE account = %s AND position_key = ANY (%s)",
                (event.account, closed),
            )
        return old, changed

    def _stock_positions(self, conn: psycopg.Connection[Any], event: Event, new: dict[str, Held]) -> None:
        _, changed = self._positions(conn, event, "stock", new)
        if changed:  # prices come from quotes: only a new or changed position needs re-banding
            self._pnl_from_db(conn, event, "p.account = %s AND p.asset = 'stock' AND p.position_key = ANY (%s)",
                              (event.account, [h.key for h in changed]))

    def _option_positions(self, conn: psycopg.Connection[Any], event: Event, new: dict[str, Held]) -> None:
        old, _ = self._positions(conn, event, "option", new)
        self._pnl(conn, event, [
            Priced(event.account, h.key, "option", h.label, h.quantity, h.average_cost, h.multiplier,
                   h.direction, old[h.key][8] if h.key in old else None, h.mark)
            for h in new.values()
        ])
        for n in self._expiring(event, new):
            self.emit(conn, n)

    def _quotes(self, conn: psycopg.Connection[Any], event: Event, prices: dict[str, Decimal]) -> None:
        if not prices:
            return
        conn.execute(
            """INSERT INTO notify_quotes AS q (symbol, price, fetched_at)
               SELECT s, p, %s FROM unnest(%s::text[], %s::numeric[]) AS v(s, p)
               ON CONFLICT (symbol) DO UPDATE SET price = EXCLUDED.price, fetched_at = EXCLUDED.fetched_at
               WHERE q.fetched_at <= EXCLUDED.fetched_at""",
            (event.fetched_at, list(prices), list(prices.values())),
        )
        self._pnl_from_db(conn, event, "p.asset = 'stock' AND p.symbol = ANY (%s)", (list(prices),))

    def _pnl_from_db(self, conn: psycopg.Connection[Any], event: Event, where: str,
                     args: tuple[Any, ...]) -> None:
        rows = conn.execute(
            f"""SELECT p.account, p.position_key, p.asset, p.label, p.quantity, p.average_cost,
                       p.multiplier, p.direction, p.pnl_pct, q.price
                FROM notify_positions p JOIN notify_quotes q ON q.symbol = p.symbol
                WHERE {where}
                ORDER BY p.account, p.position_key""",
            args,
        ).fetchall()
        self._pnl(conn, event, [Priced(*r) for r in rows])

    def _pnl(self, conn: psycopg.Connection[Any], event: Event, positions: list[Priced]) -> None:
        changed, moves = self._pnl_moves(event, positions)
        for n in moves:
            self.emit(conn, n)
        if changed:  # one statement for every re-priced position
            conn.execute(
                """UPDATE notify_positions p SET pnl_pct = v.pct
                   FROM unnest(%s::text[], %s::text[], %s::numeric[]) AS v(account, position_key, pct)
                   WHERE p.account = v.account AND p.position_key = v.position_key""",
                ([c[0] for c in changed], [c[1] for c in changed], [c[2] for c in changed]),
            )

    def _pnl_moves(self, event: Event, positions: list[Priced]
                   ) -> tuple[list[tuple[str, str, Decimal]], list[Notification]]:
        """The re-priced positions (account, key, new P&L %) and the band moves to alert.

        Bands are trunc(pct / threshold): -5 < pct < 5 is band 0 for a 5 % threshold. The state
        is the last P&L % (not the band), so it does not depend on the threshold and a replay
        with other settings rebuilds the same rows. A band is alerted at most once per
        position and local day (the dedupe key holds the band and the day), so a price hovering
        on an edge does not alert on every tick.
        """
        changed: list[tuple[str, str, Decimal]] = []
        moves: list[Notification] = []
        day = event.fetched_at.astimezone(self.tz).date().isoformat()
        for p in positions:
            t = self.band_pct[p.asset]
            if p.price is None or p.average_cost == 0:
                continue
            value = p.price * p.multiplier if p.asset == "option" else p.price
            pct = ((value - p.average_cost) / abs(p.average_cost) * 100 * p.direction).quantize(PCT_STEP)
            if pct == p.previous_pct:
                continue
            changed.append((p.account, p.key, pct))
            if p.previous_pct is None:
                continue  # first price seen: a level, not a move
            band, old_band = int(pct / t), int(p.previous_pct / t)  # toward zero
            if band == old_band:
                continue
            if band > old_band:  # the band's lower edge was crossed upwards
                what = f"rose above {_pct(t * band if band > 0 else t * (band - 1))}"
            else:  # the band's upper edge was crossed downwards
                what = f"fell below {_pct(t * band if band < 0 else t * (band + 1))}"
            pnl = (value - p.average_cost) * p.quantity * p.direction
            moves.append(Notification(
                rule="pnl_move", account=p.account, subject=p.label,
                key=f"pnl_move:{p.account}:{p.key}:{band}:{day}",
                title=f"{p.label}: unrealized P&L {what} (now {_pct(pct)})",
                body=f"{p.label}: unrealized P&L {_pct(pct)} ({_money(pnl)}), price {_money(p.price)}, "
                     f"average cost {_money(p.average_cost)} (account {p.account})",
                occurred_at=event.fetched_at, event_id=event.id,
                data={"pnl_pct": str(pct), "pnl": f"{pnl:.2f}", "band": band, "previous_band": old_band},
            ))
        return changed, moves

    def _expiring(self, event: Event, new: dict[str, Held]) -> list[Notification]:
        today = event.fetched_at.astimezone(self.tz).date()
        horizon = self.settings.notify_option_expiry_days
        out: list[Notification] = []
        for h in new.values():
            if h.expiration is None:
                continue
            days = (h.expiration - today).days
            if 0 <= days <= horizon:
                when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
                out.append(Notification(
                    rule="option_expiry", account=event.account, subject=h.label,
                    key=f"option_expiry:{event.account}:{h.key}:{h.expiration}",
                    title=f"Option expiring {when}: {h.label}",
                    body=f"{h.label} (quantity {_num(h.quantity)}) expires on {h.expiration} "
                         f"(account {event.account})",
                    occurred_at=event.fetched_at, event_id=event.id,
                    data={"expiration": h.expiration.isoformat(), "days": days},
                ))
        return out

    def _buying_power_low(self, event: Event, bp: Decimal | None,
                          previous: Decimal | None) -> Notification | None:
        # Under the floor now and not at the previous snapshot: alert once; re-arms on recovery.
        below = self.floor is not None and bp is not None and bp < self.floor
        was_below = self.floor is not None and previous is not None and previous < self.floor
        if not (below and not was_below):
            return None
        return Notification(
            rule="buying_power_low", account=event.account, subject="buying power",
            key=f"buying_power_low:{event.account}:{event.id}",
            title=f"Buying power {_money(bp)} is under {_money(self.floor)}",
            body=f"Account {event.account}: buying power {_money(bp)}, floor {_money(self.floor)}",
            occurred_at=event.fetched_at, event_id=event.id,
            data={"buying_power": str(bp), "floor": str(self.floor)},
        )

    # ---- balances ----------------------------------------------------------------------------
    def _account(self, conn: psycopg.Connection[Any], event: Event, obj: dict[str, Any]) -> None:
        bp = _buying_power(obj)
        row = conn.execute(
            """WITH old AS (SELECT buying_power FROM notify_accounts WHERE account = %s)
               INSERT INTO notify_accounts (account, buying_power, updated_at)
               VALUES (%s, %s, %s)
               ON CONFLICT (account) DO UPDATE
               SET buying_power = EXCLUDED.buying_power,
                   updated_at = greatest(notify_accounts.updated_at, EXCLUDED.updated_at)
               RETURNING (SELECT buying_power FROM old)""",
            (event.account, event.account, bp, event.fetched_at),
        ).fetchone()
        n = self._buying_power_low(event, bp, row[0] if row else None)
        if n is not None:
            self.emit(conn, n)

    def _portfolio(self, conn: psycopg.Connection[Any], event: Event, obj: dict[str, Any]) -> None:
        equity, prev = _equity(obj)
        conn.execute(
            """INSERT INTO notify_accounts (account, equity, previous_close, updated_at)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (account) DO UPDATE
               SET equity = EXCLUDED.equity, previous_close = EXCLUDED.previous_close,
                   updated_at = greatest(notify_accounts.updated_at, EXCLUDED.updated_at)""",
            (event.account, equity, prev, event.fetched_at),
        )

    # ---- the batch handler (a replay's speed) ------------------------------------------------
    def handle_batch(self, conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        """Exactly :meth:`handle` for each event in order, in a few statements per batch.

        The rule state (the ``notify_*`` tables, a few rows per account) is loaded once,
        every event is applied to an in-memory copy that mirrors the per-event SQL row for row
        (the same guards, the same upsert rules, the same row order for the alerts), and the
        changed rows, the deliveries and their messages are written back at the end. Anything
        unusual (a payload that does not parse, a number PostgreSQL might refuse) raises, and
        the runtime then redoes the batch one :meth:`handle` per event, which decides.
        """
        if len(events) < SMALL_BATCH:  # a live cycle's few events: loading would cost more
            for event in events:
                self.handle(conn, event)
            return
        parsed: list[Any] = []
        for event in events:
            if event.malformed:
                raise PayloadError(f"snapshot body is not JSON: {event.raw_body!r:.60}")
            value = self._parse(event) if event.kind in KINDS else None
            _check_storable(event.kind, value)
            parsed.append(value)
        batch = _Batch.load(conn, events, parsed)
        for event, value in zip(events, parsed, strict=True):
            if event.kind not in KINDS:
                continue
            if not batch.fresh(event):
                log.info("%s: event %s (%s, %s) is older than one already applied; ignored",
                         NAME, event.id, event.kind, event.account)
                continue
            if event.kind == eventlog.STOCK_POSITIONS:
                self._batch_stocks(batch, event, value)
            elif event.kind == eventlog.OPTION_POSITIONS:
                self._batch_options(batch, event, value)
            elif event.kind == eventlog.QUOTES:
                self._batch_quotes(batch, event, value)
            elif event.kind == eventlog.ACCOUNT:
                bp = _buying_power(value)  # as parsed for the alert, as stored for the state
                previous = batch.set_account(event, buying_power=_db(bp))
                self._batch_emit(batch, self._buying_power_low(event, bp, previous))
            else:
                equity, prev = _equity(value)
                batch.set_account(event, equity=_db(equity), previous_close=_db(prev))
        batch.write(conn)
        items = batch.notifications
        new = record_many(conn, items, self.sinks)
        fresh_keys = {key for _, key, _ in new}
        for n, expired in items:  # logged as emit() logs: the notification that recorded it
            if n.key in fresh_keys:
                fresh_keys.discard(n.key)
                if not expired:
                    log.info("notification %s: %s", n.key, n.title)

    def _batch_emit(self, batch: _Batch, n: Notification | None) -> None:
        if n is not None:
            batch.notifications.append((n, self.clock() - n.occurred_at > self.max_age))

    def _batch_positions(self, batch: _Batch, event: Event, asset: str, new: dict[str, Held]
                         ) -> tuple[dict[str, _Position], list[Held]]:
        """:meth:`_positions` on the in-memory rows; returns copies of the previous rows."""
        rows = batch.positions.setdefault(event.account, {})
        old = {k: r.copy() for k, r in rows.items() if r.asset == asset}
        changed: list[Held] = []
        for key, h in new.items():
            o = old.get(key)
            if o is None:
                self._batch_emit(batch, _opened(event, asset, h))
                changed.append(h)
            elif (o.label, o.quantity, o.average_cost, o.multiplier, o.direction, o.expiration) != (
                    h.label, h.quantity, h.average_cost, h.multiplier, h.direction, h.expiration):
                changed.append(h)
            elif o.mark != h.mark:
                rows[key].mark = _db(h.mark)
                batch.touch(event.account, key)
        for h in changed:  # INSERT ... ON CONFLICT (account, position_key) DO UPDATE
            row = rows.get(h.key)
            if row is None:
                rows[h.key] = _Position(asset, h.symbol, h.label, _db(h.quantity), _db(h.average_cost),
                                        _db(h.multiplier), h.direction, h.expiration, _db(h.mark),
                                        None, event.id, event.fetched_at)
            else:  # asset, symbol, opened_event_id and pnl_pct are kept
                row.label, row.quantity, row.average_cost = h.label, _db(h.quantity), _db(h.average_cost)
                row.multiplier, row.direction, row.expiration = _db(h.multiplier), h.direction, h.expiration
                row.mark, row.updated_at = _db(h.mark), event.fetched_at
            batch.touch(event.account, h.key)
        for key in sorted((k for k in old if k not in new), key=batch.rank):
            self._batch_emit(batch, _closed(event, asset, key, old[key].label, old[key].quantity))
            del rows[key]
            batch.touch(event.account, key)
        return old, changed

    def _batch_pnl(self, batch: _Batch, event: Event, positions: list[Priced]) -> None:
        changed, moves = self._pnl_moves(event, positions)
        for n in moves:
            self._batch_emit(batch, n)
        for account, key, pct in changed:  # UPDATE ... WHERE account AND position_key
            row = batch.positions.get(account, {}).get(key)
            if row is not None:
                row.pnl_pct = _db(pct)
                batch.touch(account, key)

    def _batch_stocks(self, batch: _Batch, event: Event, new: dict[str, Held]) -> None:
        _, changed = self._batch_positions(batch, event, "stock", new)
        if changed:
            keys = {h.key for h in changed}
            rows = batch.positions.get(event.account, {})
            self._batch_pnl(batch, event, batch.priced(
                (event.account, k, r) for k, r in rows.items()
                if r.asset == "stock" and k in keys))

    def _batch_options(self, batch: _Batch, event: Event, new: dict[str, Held]) -> None:
        old, _ = self._batch_positions(batch, event, "option", new)
        self._batch_pnl(batch, event, [
            Priced(event.account, h.key, "option", h.label, h.quantity, h.average_cost, h.multiplier,
                   h.direction, old[h.key].pnl_pct if h.key in old else None, h.mark)
            for h in new.values()
        ])
        for n in self._expiring(event, new):
            self._batch_emit(batch, n)

    def _batch_quotes(self, batch: _Batch, event: Event, prices: dict[str, Decimal]) -> None:
        if not prices:
            return
        for symbol, price in prices.items():  # ... DO UPDATE WHERE q.fetched_at <= new
            cur = batch.quotes.get(symbol)
            if cur is None or cur[1] <= event.fetched_at:
                batch.quotes[symbol] = (_db(price), event.fetched_at)
                batch.dirty_quotes.add(symbol)
        batch_rows = (
            (account, k, r)
            for account, rows in batch.positions.items()
            for k, r in rows.items()
            if r.asset == "stock" and r.symbol in prices
        )
        self._batch_pnl(batch, event, batch.priced(batch_rows))

    # ---- time-based rules (the runtime's tick, when caught up) -------------------------------
    def tick(self, conn: psycopg.Connection[Any]) -> None:
        now = self.clock()
        self._producer_failing(conn, now)
        self._data_stale(conn, now)
        self._daily_summary(conn, now)

    def _producer_failing(self, conn: psycopg.Connection[Any], now: datetime) -> None:
        n = self.settings.notify_producer_failing_cycles
        rows = conn.execute(
            """SELECT id, status, error FROM producer_cycle_runs
               WHERE status <> 'running' ORDER BY id DESC LIMIT %s""",
            (n,),
        ).fetchall()
        if len(rows) < n or any(r[1] not in ("failed", "partial") for r in rows):
            return
        start = conn.execute(
            """SELECT min(id) FROM producer_cycle_runs
               WHERE status IN ('failed', 'partial')
                 AND id > coalesce((SELECT max(id) FROM producer_cycle_runs WHERE status = 'ok'), 0)"""
        ).fetchone()
        streak = start[0] if start and start[0] is not None else rows[-1][0]
        self.emit(conn, Notification(
            rule="producer_failing", account=ALL_ACCOUNTS, subject="producer",
            key=f"producer_failing:{streak}",
            title=f"The producer has failed {n} cycles in a row",
            body=f"Cycles {rows[-1][0]}..{rows[0][0]} failed or were partial; last error: "
                 f"{(rows[0][2] or 'n/a')[:300]} (see: brokersync status)",
            occurred_at=now, data={"first_failed_cycle": streak, "last_cycle": rows[0][0]},
        ))

    def _data_stale(self, conn: psycopg.Connection[Any], now: datetime) -> None:
        row = conn.execute(
            "SELECT max(id), max(fetched_at) FROM staging_snapshots"
        ).fetchone()
        if row is None or row[1] is None:
            return
        age = now - row[1]
        limit = timedelta(minutes=self.settings.notify_data_age_minutes)
        if age <= limit:
            return
        minutes = int(age.total_seconds() // 60)
        self.emit(conn, Notification(
            rule="data_stale", account=ALL_ACCOUNTS, subject="event log",
            key=f"data_stale:{row[0]}",
            title=f"No new broker data for {minutes} minutes",
            body=f"The newest snapshot (event {row[0]}) was fetched at {row[1].isoformat()}; "
                 f"limit {self.settings.notify_data_age_minutes:g} minutes. Is the producer running?",
            occurred_at=now, data={"newest_event_id": row[0], "age_minutes": minutes},
        ))

    def _daily_summary(self, conn: psycopg.Connection[Any], now: datetime) -> None:
        at = self.settings.notify_daily_summary_time
        if at == "off":
            return
        local = now.astimezone(self.tz)
        hh, mm = (int(x) for x in at.split(":"))
        if (local.hour, local.minute) < (hh, mm):
            return
        day = local.date()
        accounts = conn.execute(
            """SELECT a.account, a.equity, a.previous_close, a.buying_power FROM notify_accounts a
               WHERE a.account <> %s
                 AND NOT EXISTS (SELECT 1 FROM notification_deliveries d
                                 WHERE d.dedupe_key = 'daily_summary:' || a.account || ':' || %s)
               ORDER BY a.account""",
            (ALL_ACCOUNTS, day.isoformat()),
        ).fetchall()
        for account, equity, prev, bp in accounts:
            lines = [f"Equity {_money(equity)}"]
            if equity is not None and prev:
                lines[0] += f" ({_money(equity - prev)}, {_pct((equity - prev) / prev * 100)} today)"
            lines.append(f"Buying power {_money(bp)}")
            positions = conn.execute(
                """SELECT p.label, p.quantity, p.asset, p.average_cost, p.multiplier, p.direction,
                          CASE WHEN p.asset = 'stock' THEN q.price ELSE p.mark END
                   FROM notify_positions p LEFT JOIN notify_quotes q ON q.symbol = p.symbol
                   WHERE p.account = %s ORDER BY p.asset DESC, p.label""",
                (account,),
            ).fetchall()
            lines.append(f"{len(positions)} open position(s)")
            for label, qty, asset, avg, mult, direction, price in positions:
                if price is not None and avg:
                    value = price * mult if asset == "option" else price
                    pct = (value - avg) / abs(avg) * 100 * direction
                    lines.append(f"  {label}: {_num(qty)} @ {_money(price)} ({_pct(pct)})")
                else:
                    lines.append(f"  {label}: {_num(qty)}")
            self.emit(conn, Notification(
                rule="daily_summary", account=account, subject=day.isoformat(),
                key=f"daily_summary:{account}:{day.isoformat()}",
                title=f"Daily summary {day.isoformat()} for account {account}",
                body="\n".join(lines), occurred_at=now,
                data={"day": day.isoformat(), "equity": str(equity) if equity is not None else None,
                      "positions": len(positions)},
            ))

    # ---- replay ------------------------------------------------------------------------------
    def reset(self, conn: psycopg.Connection[Any]) -> None:
        """Empty the rule state (never the deliveries: they are what makes replay send nothing)."""
        conn.execute("TRUNCATE " + ", ".join(STATE_TABLES))


# ---- the batch handler's in-memory rule state ------------------------------------------------

SMALL_BATCH = 3  # fewer events than this: the per-event handler (loading the state costs more)
# Numbers a batch keeps in memory must be ones PostgreSQL stores (numeric has limits): a batch
# with a wilder number is left to the per-event handler, which decides.
_MAX_EXPONENT = 900  # numeric input takes exponents up to 1000


@overload
def _db(d: Decimal) -> Decimal: ...
@overload
def _db(d: None) -> None: ...
@overload
def _db(d: Decimal | None) -> Decimal | None: ...
def _db(d: Decimal | None) -> Decimal | None:
    """The value as it reads back from a numeric column (PostgreSQL has no negative zero)."""
    return d.copy_abs() if d is not None and d.is_zero() else d


def _check_storable(kind: str, value: Any) -> None:
    numbers: list[Decimal | None] = []
    if kind in (eventlog.STOCK_POSITIONS, eventlog.OPTION_POSITIONS):
        for h in value.values():
            numbers += (h.quantity, h.average_cost, h.multiplier, h.mark)
    elif kind == eventlog.QUOTES:
        numbers += value.values()
    elif kind == eventlog.ACCOUNT:
        numbers.append(_buying_power(value))
    elif kind == eventlog.PORTFOLIO:
        numbers += _equity(value)
    for d in numbers:
        if d is None:
            continue
        _, digits, exponent = d.as_tuple()
        if not -_MAX_EXPONENT <= exponent <= _MAX_EXPONENT - len(digits):  # type: ignore[operator]
            raise PayloadError(f"{kind}: number out of the batch handler's range: {d!s:.40}")


@dataclass(slots=True)
class _Position:
    """A ``notify_positions`` row (without its key)."""

    asset: str
    symbol: str
    label: str
    quantity: Decimal
    average_cost: Decimal
    multiplier: Decimal
    direction: int
    expiration: date | None
    mark: Decimal | None
    pnl_pct: Decimal | None
    opened_event_id: int
    updated_at: datetime

    def copy(self) -> _Position:
        return _Position(self.asset, self.symbol, self.label, self.quantity, self.average_cost,
                         self.multiplier, self.direction, self.expiration, self.mark, self.pnl_pct,
                         self.opened_event_id, self.updated_at)


@dataclass
class _Batch:
    """The ``notify_*`` tables in memory for one batch, and what the batch fired."""

    marks: dict[tuple[str, str], tuple[datetime, int]]
    positions: dict[str, dict[str, _Position]]  # account -> position key -> row
    quotes: dict[str, tuple[Decimal, datetime]]
    accounts: dict[str, list[Any]]  # account -> [buying_power, equity, previous_close, updated_at]
    loaded_positions: set[tuple[str, str]]
    order: dict[str, int]  # text -> its rank in the database's collation (ORDER BY)
    dirty_marks: set[tuple[str, str]] = field(default_factory=set)
    dirty_positions: set[tuple[str, str]] = field(default_factory=set)
    dirty_quotes: set[str] = field(default_factory=set)
    dirty_accounts: set[str] = field(default_factory=set)
    notifications: list[tuple[Notification, bool]] = field(default_factory=list)

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], events: Sequence[Event], parsed: list[Any]) -> _Batch:
        marks = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
            "SELECT account, kind, fetched_at, event_id FROM notify_snapshot_marks")}
        positions: dict[str, dict[str, _Position]] = {}
        for r in conn.execute(
                """SELECT account, position_key, asset, symbol, label, quantity, average_cost,
                          multiplier, direction, expiration, mark, pnl_pct, opened_event_id,
                          updated_at
                   FROM notify_positions"""):
            positions.setdefault(r[0], {})[r[1]] = _Position(*r[2:])
        quotes = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT symbol, price, fetched_at FROM notify_quotes")}
        accounts = {r[0]: list(r[1:]) for r in conn.execute(
            "SELECT account, buying_power, equity, previous_close, updated_at FROM notify_accounts")}
        # Every account and position key the batch can order: rank them as ORDER BY would.
        texts = set(positions)
        for rows in positions.values():
            texts.update(rows)
        for event, value in zip(events, parsed, strict=True):
            texts.add(event.account)
            if event.kind in (eventlog.STOCK_POSITIONS, eventlog.OPTION_POSITIONS):
                texts.update(value)
        row = conn.execute("SELECT array_agg(t ORDER BY t) FROM unnest(%s::text[]) AS t",
                           (sorted(texts),)).fetchone()
        order = {t: i for i, t in enumerate(row[0] if row and row[0] else [])}
        loaded = {(a, k) for a, rows in positions.items() for k in rows}
        return cls(marks, positions, quotes, accounts, loaded, order)

    def rank(self, text: str) -> int:
        return self.order[text]

    def touch(self, account: str, key: str) -> None:
        self.dirty_positions.add((account, key))

    def fresh(self, event: Event) -> bool:
        """:meth:`Rules._fresh`: record the event unless a newer one of its (account, kind) was."""
        key = (event.account, event.kind)
        cur = self.marks.get(key)
        if cur is not None and cur[0] > event.fetched_at:
            return False
        self.marks[key] = (event.fetched_at, event.id)
        self.dirty_marks.add(key)
        return True

    def priced(self, rows: Any) -> list[Priced]:
        """The positions joined with their quote, ORDER BY account, position_key."""
        out = [(account, k, r, q[0]) for account, k, r in rows
               if (q := self.quotes.get(r.symbol)) is not None]
        out.sort(key=lambda x: (self.order[x[0]], self.order[x[1]]))
        return [Priced(account, k, r.asset, r.label, r.quantity, r.average_cost, r.multiplier,
                       r.direction, r.pnl_pct, price) for account, k, r, price in out]

    def set_account(self, event: Event, **values: Decimal | None) -> Decimal | None:
        """The ``notify_accounts`` upsert; returns the previous buying power."""
        row = self.accounts.get(event.account)
        previous = row[0] if row is not None else None
        if row is None:
            row = self.accounts[event.account] = [None, None, None, event.fetched_at]
        else:
            row[3] = max(row[3], event.fetched_at)
        if "buying_power" in values:
            row[0] = values["buying_power"]
        if "equity" in values:
            row[1], row[2] = values["equity"], values["previous_close"]
        self.dirty_accounts.add(event.account)
        return previous

    def write(self, conn: psycopg.Connection[Any]) -> None:
        """Write the changed rows back: a few set-based statements for the whole batch."""
        if self.dirty_marks:
            m = sorted(self.dirty_marks)
            conn.execute(
                """INSERT INTO notify_snapshot_marks AS m (account, kind, fetched_at, event_id)
                   SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::bigint[])
                   ON CONFLICT (account, kind) DO UPDATE
                   SET fetched_at = EXCLUDED.fetched_at, event_id = EXCLUDED.event_id""",
                ([a for a, _ in m], [k for _, k in m], [self.marks[x][0] for x in m],
                 [self.marks[x][1] for x in m]),
            )
        gone = sorted(x for x in self.dirty_positions
                      if x in self.loaded_positions and x[1] not in self.positions.get(x[0], {}))
        if gone:
            conn.execute(
                """DELETE FROM notify_positions p USING unnest(%s::text[], %s::text[]) AS v(a, k)
                   WHERE p.account = v.a AND p.position_key = v.k""",
                ([a for a, _ in gone], [k for _, k in gone]),
            )
        put = sorted(x for x in self.dirty_positions if x[1] in self.positions.get(x[0], {}))
        if put:
            rows = [(a, k, self.positions[a][k]) for a, k in put]
            conn.execute(
                """INSERT INTO notify_positions (account, position_key, asset, symbol, label,
                       quantity, average_cost, multiplier, direction, expiration, mark, pnl_pct,
                       opened_event_id, updated_at)
                   SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                       %s::numeric[], %s::numeric[], %s::numeric[], %s::int[], %s::date[],
                       %s::numeric[], %s::numeric[], %s::bigint[], %s::timestamptz[])
                   ON CONFLICT (account, position_key) DO UPDATE
                   SET asset = EXCLUDED.asset, symbol = EXCLUDED.symbol, label = EXCLUDED.label,
                       quantity = EXCLUDED.quantity, average_cost = EXCLUDED.average_cost,
                       multiplier = EXCLUDED.multiplier, direction = EXCLUDED.direction,
                       expiration = EXCLUDED.expiration, mark = EXCLUDED.mark,
                       pnl_pct = EXCLUDED.pnl_pct, opened_event_id = EXCLUDED.opened_event_id,
                       updated_at = EXCLUDED.updated_at""",
                ([a for a, _, _ in rows], [k for _, k, _ in rows],
                 [r.asset for *_, r in rows], [r.symbol for *_, r in rows],
                 [r.label for *_, r in rows], [r.quantity for *_, r in rows],
                 [r.average_cost for *_, r in rows], [r.multiplier for *_, r in rows],
                 [r.direction for *_, r in rows], [r.expiration for *_, r in rows],
                 [r.mark for *_, r in rows], [r.pnl_pct for *_, r in rows],
                 [r.opened_event_id for *_, r in rows], [r.updated_at for *_, r in rows]),
            )
        if self.dirty_quotes:
            q = sorted(self.dirty_quotes)
            conn.execute(
                """INSERT INTO notify_quotes (symbol, price, fetched_at)
                   SELECT * FROM unnest(%s::text[], %s::numeric[], %s::timestamptz[])
                   ON CONFLICT (symbol) DO UPDATE
                   SET price = EXCLUDED.price, fetched_at = EXCLUDED.fetched_at""",
                (q, [self.quotes[s][0] for s in q], [self.quotes[s][1] for s in q]),
            )
        if self.dirty_accounts:
            acc = sorted(self.dirty_accounts)
            conn.execute(
                """INSERT INTO notify_accounts (account, buying_power, equity, previous_close,
                       updated_at)
                   SELECT * FROM unnest(%s::text[], %s::numeric[], %s::numeric[], %s::numeric[],
                       %s::timestamptz[])
                   ON CONFLICT (account) DO UPDATE
                   SET buying_power = EXCLUDED.buying_power, equity = EXCLUDED.equity,
                       previous_close = EXCLUDED.previous_close, updated_at = EXCLUDED.updated_at""",
                (acc, [self.accounts[a][0] for a in acc], [self.accounts[a][1] for a in acc],
                 [self.accounts[a][2] for a in acc], [self.accounts[a][3] for a in acc]),
            )


def build(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> Consumer:
    """The notifications consumer for these settings (ConfigError when a sink lacks a value)."""
    sinks = check_settings(settings)
    rules = Rules(settings, sinks, clock)
    return Consumer(
        name=NAME,
        kinds=KINDS,
        handle=rules.handle,
        handle_batch=rules.handle_batch,
        reset=rules.reset,
        tick=rules.tick,
        tick_interval=settings.notify_tick_interval,
        tables=STATE_TABLES,
        description="Fires notification rules over the event log; brokersync worker delivers them",
    )


def __getattr__(name: str) -> Any:
    # `brokersync consumer notifications` loads CONSUMER by name: build it from the validated
    # environment at that moment (a ConfigError here exits 78), not at import time.
    if name == "CONSUMER":
        from brokersync.settings import load_settings

        return build(load_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

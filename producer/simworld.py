"""The simulated brokerage: a deterministic world that evolves in five-minute ticks.

State is a pure function of (seed, epoch, number of ticks): :meth:`SimWorld.advance_to` steps
tick by tick from the epoch, each tick drawing from one seeded generator, so the same seed and
epoch give the same positions, orders and prices at the same simulated time no matter how
often (or with what faults) the world is looked at.

What moves: prices (a random walk while the market is open), stock and option positions
opening and closing (orders that fill, partially fill, cancel or fail, with executions and
fees; fractional, dollar-based buys), option Greeks (null for some illiquid contracts), cash
and buying power. Two accounts: an individual margin account and a traditional IRA.
:mod:`producer.sim` renders this state as Robinhood's JSON.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from producer.market import is_open

TICK = timedelta(minutes=5)

# (symbol, name, start price)
UNIVERSE: tuple[tuple[str, str, float], ...] = (
    ("AAPL", "Apple", 228.0), ("MSFT", "Microsoft", 415.0), ("NVDA", "NVIDIA", 138.0),
    ("AMZN", "Amazon", 198.0), ("GOOGL", "Alphabet Class A", 172.0), ("META", "Meta Platforms", 560.0),
    ("TSLA", "Tesla", 245.0), ("BRK.B", "Berkshire Hathaway Class B", 455.0),
    ("JPM", "JPMorgan Chase", 222.0), ("V", "Visa", 285.0), ("JNJ", "Johnson & Johnson", 158.0),
    ("WMT", "Walmart", 82.0), ("PG", "Procter & Gamble", 168.0), ("XOM", "Exxon Mobil", 118.0),
    ("MA", "Mastercard", 515.0), ("HD", "Home Depot", 405.0), ("COST", "Costco", 905.0),
    ("KO", "Coca-Cola", 68.0), ("PEP", "PepsiCo", 165.0), ("DIS", "Disney", 98.0),
    ("NFLX", "Netflix", 760.0), ("AMD", "Advanced Micro Devices", 142.0), ("INTC", "Intel", 23.0),
    ("CSCO", "Cisco", 57.0), ("ORCL", "Oracle", 178.0), ("CRM", "Salesforce", 310.0),
    ("ADBE", "Adobe", 505.0), ("PFE", "Pfizer", 26.0), ("T", "AT&T", 22.0), ("F", "Ford", 11.0),
    ("SOFI", "SoFi Technologies", 13.5), ("PLTR", "Palantir", 58.0), ("SPY", "SPDR S&P 500 ETF", 590.0),
    ("QQQ", "Invesco QQQ", 505.0), ("VTI", "Vanguard Total Stock Market ETF", 292.0),
    ("HOOD", "Robinhood Markets", 34.0), ("UBER", "Uber", 72.0), ("SHOP", "Shopify", 105.0),
    ("COIN", "Coinbase", 290.0), ("BAC", "Bank of America", 46.0),
)
OPTION_UNDERLYINGS = ("AAPL", "MSFT", "NVDA", "TSLA", "SPY", "QQQ", "AMD", "META", "AMZN", "PLTR")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class Instrument:
    id: str
    symbol: str
    name: str
    chain_id: str
    list_date: str


@dataclass
class OptionInstrument:
    id: str
    chain_id: str
    symbol: str
    type: str  # call | put
    strike: float
    expiration: date
    created_at: datetime
    greeks_missing: bool  # an illiquid contract: Robinhood answers null Greeks


@dataclass
class Position:
    quantity: float
    average_price: float
    created_at: datetime
    updated_at: datetime


@dataclass
class OptionPosition:
    id: str
    option_id: str
    quantity: float
    average_open_price: float  # per contract, x100 as Robinhood reports it
    created_at: datetime
    updated_at: datetime


@dataclass
class Execution:
    id: str
    price: float
    quantity: float
    timestamp: datetime
    fees: float


@dataclass
class Order:
    id: str
    ref_id: str
    account: str
    side: str  # buy | sell
    type: str  # market | limit
    quantity: float
    price: float | None  # limit price (market orders: the collared price)
    created_at: datetime
    updated_at: datetime
    state: str = "queued"  # queued -> confirmed -> partially_filled -> filled | cancelled | failed
    executions: list[Execution] = field(default_factory=list)
    plan: str = "fill"  # fill | partial_then_fill | partial_then_cancel | cancel | fail
    dollar_based: float | None = None  # dollar amount for fractional buys
    reject_reason: str | None = None
    # stock orders
    instrument_id: str | None = None
    # option orders
    option_id: str | None = None
    position_effect: str | None = None  # open | close
    opening_strategy: str | None = None

    @property
    def filled(self) -> float:
        return sum(e.quantity for e in self.executions)

    @property
    def average_price(self) -> float | None:
        q = self.filled
        return sum(e.price * e.quantity for e in self.executions) / q if q else None

    @property
    def fees(self) -> float:
        return sum(e.fees for e in self.executions)


@dataclass
class Account:
    number: str
    kind: str  # individual | ira_traditional
    type: str  # margin | cash
    cash: float
    created_at: datetime
    positions: dict[str, Position] = field(default_factory=dict)  # instrument id -> position
    option_positions: dict[str, OptionPosition] = field(default_factory=dict)  # option id ->
    target_stocks: int = 20
    target_options: int = 0
    previous_equity: float = 0.0


class SimWorld:
    """The whole simulated brokerage. Not thread-safe: :class:`producer.sim.SimBroker` locks."""

    def __init__(self, seed: int, epoch: datetime, *, stock_positions: int = 25,
                 option_positions: int = 5) -> None:
        if epoch.tzinfo is None:
            raise ValueError("the simulation epoch must be timezone-aware")
        self.seed = seed
        self.epoch = epoch.astimezone(UTC)
        self.rng = random.Random(f"brokersync-sim:{seed}")
        self.now = self.epoch
        self.last_trade_at = self.epoch  # the last tick the market was open: quotes' time
        self.ticks = 0
        rng = self.rng
        self.instruments: dict[str, Instrument] = {}
        self.by_symbol: dict[str, Instrument] = {}
        self.prices: dict[str, float] = {}
        self.previous_close: dict[str, float] = {}
        self.vol: dict[str, float] = {}
        for symbol, name, price in UNIVERSE:
            inst = Instrument(_uuid(rng), symbol, name, _uuid(rng),
                              f"{rng.randint(1980, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
            self.instruments[inst.id] = inst
            self.by_symbol[symbol] = inst
            self.prices[symbol] = round(price * rng.uniform(0.9, 1.1), 2)
            self.previous_close[symbol] = self.prices[symbol]
            self.vol[symbol] = rng.uniform(0.2, 0.6)  # annualised
        self.options: dict[str, OptionInstrument] = {}
        self.orders: list[Order] = []
        self.option_orders: list[Order] = []
        n1 = f"5{''.join(rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ0123456789') for _ in range(7))}"
        n2 = f"9{''.join(rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ0123456789') for _ in range(7))}"
        start = self.epoch - timedelta(days=400)
        ira_stocks = max(0, stock_positions // 5)
        self.accounts: dict[str, Account] = {
            n1: Account(n1, "individual", "margin", round(rng.uniform(4000, 15000), 2), start,
                        target_stocks=stock_positions - ira_stocks, target_options=option_positions),
            n2: Account(n2, "ira_traditional", "cash", round(rng.uniform(1000, 6000), 2),
                        start + timedelta(days=30), target_stocks=ira_stocks),
        }
        self.user_id = _uuid(rng)
        self._seed_positions(start)
        self._last_close_day: date | None = None

    # ---- set-up --------------------------------------------------------------------------
    def _seed_positions(self, start: datetime) -> None:
        rng = self.rng
        symbols = [s for s, _, _ in UNIVERSE]
        for acct in self.accounts.values():
            for symbol in rng.sample(symbols, acct.target_stocks):
                inst = self.by_symbol[symbol]
                fractional = rng.random() < 0.25
                qty = round(rng.uniform(0.05, 4.0), 6) if fractional else float(rng.randint(1, 40))
                avg = round(self.prices[symbol] * rng.uniform(0.7, 1.2), 4)
                opened = start + timedelta(days=rng.randint(0, 300))
                acct.positions[inst.id] = Position(qty, avg, opened, opened)
            for _ in range(acct.target_options):
                opt = self._new_option(rng.choice(OPTION_UNDERLYINGS), self.epoch - timedelta(days=3))
                qty = float(rng.randint(1, 3))
                mark = self.option_mark(opt)[0]
                opened = self.epoch - timedelta(days=rng.randint(1, 10))
                acct.option_positions[opt.id] = OptionPosition(
                    _uuid(rng), opt.id, qty, round(max(mark, 0.05) * 100 * rng.uniform(0.7, 1.3), 4),
                    opened, opened)
            acct.previous_equity = self.equity(acct)

    def _new_option(self, symbol: str, now: datetime) -> OptionInstrument:
        rng = self.rng
        price = self.prices[symbol]
        step = 1.0 if price < 100 else 5.0
        strike = round(price * rng.uniform(0.9, 1.12) / step) * step
        days = rng.randint(21, 60)
        exp = (now + timedelta(days=days)).date()
        exp += timedelta(days=(4 - exp.weekday()) % 7)  # a Friday
        opt = OptionInstrument(_uuid(rng), self.by_symbol[symbol].chain_id, symbol,
                               rng.choice(("call", "call", "put")), strike, exp, now,
                               greeks_missing=rng.random() < 0.15)
        self.options[opt.id] = opt
        return opt

    # ---- valuation -----------------------------------------------------------------------
    def option_mark(self, opt: OptionInstrument) -> tuple[float, dict[str, float], float]:
        """(mark per share, Greeks, implied volatility) by Black-Scholes."""
        s = self.prices[opt.symbol]
        k = opt.strike
        expiry = datetime.combine(opt.expiration, datetime.min.time(), UTC) + timedelta(hours=21)
        # Marks move only while the market is open (overnight, Robinhood's marks stand still).
        t = max((expiry - self.last_trade_at).total_seconds() / (365 * 86400), 1e-4)
        v = self.vol[opt.symbol]
        r = 0.04
        d1 = (math.log(s / k) + (r + v * v / 2) * t) / (v * math.sqrt(t))
        d2 = d1 - v * math.sqrt(t)
        nd1 = math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi)
        if opt.type == "call":
            price = s * _cdf(d1) - k * math.exp(-r * t) * _cdf(d2)
            delta = _cdf(d1)
            theta = (-s * nd1 * v / (2 * math.sqrt(t)) - r * k * math.exp(-r * t) * _cdf(d2)) / 365
            rho = k * t * math.exp(-r * t) * _cdf(d2) / 100
        else:
            price = k * math.exp(-r * t) * _cdf(-d2) - s * _cdf(-d1)
            delta = _cdf(d1) - 1
            theta = (-s * nd1 * v / (2 * math.sqrt(t)) + r * k * math.exp(-r * t) * _cdf(-d2)) / 365
            rho = -k * t * math.exp(-r * t) * _cdf(-d2) / 100
        greeks = {"delta": delta, "gamma": nd1 / (s * v * math.sqrt(t)),
                  "theta": theta, "vega": s * nd1 * math.sqrt(t) / 100, "rho": rho}
        return max(price, 0.01), greeks, v

    def equity(self, acct: Account) -> float:
        stocks = sum(p.quantity * self.prices[self.instruments[i].symbol]
                     for i, p in acct.positions.items())
        options = sum(p.quantity * 100 * self.option_mark(self.options[o])[0]
                      for o, p in acct.option_positions.items())
        return acct.cash + stocks + options

    # ---- time ----------------------------------------------------------------------------
    def advance_to(self, t: datetime) -> None:
        """Step every tick up to ``t`` (the world never goes back)."""
        while self.now + TICK <= t:
            self.now += TICK
            self.ticks += 1
            self._tick()

    def _tick(self) -> None:
        now, rng = self.now, self.rng
        if not is_open(now):
            day = now.date()
            if self._last_close_day != day and now.hour >= 21:
                self._last_close_day = day
                self.previous_close = dict(self.prices)
                for acct in self.accounts.values():
                    acct.previous_equity = self.equity(acct)
            return
        self.last_trade_at = now
        dt = TICK.total_seconds() / (252 * 6.5 * 3600)
        for symbol in self.prices:
            sigma = self.vol[symbol] * math.sqrt(dt)
            self.prices[symbol] = max(0.5, round(self.prices[symbol] * math.exp(rng.gauss(0, sigma)), 4))
        self._progress_orders()
        for acct in self.accounts.values():
            if rng.random() < 0.035:
                self._new_stock_order(acct)
            if acct.target_options and rng.random() < 0.012:
                self._new_option_order(acct)
            self._expire_options(acct)

    # ---- orders --------------------------------------------------------------------------
    def _plan(self) -> str:
        x = self.rng.random()
        if x < 0.72:
            return "fill"
        if x < 0.82:
            return "partial_then_fill"
        if x < 0.87:
            return "partial_then_cancel"
        if x < 0.95:
            return "cancel"
        return "fail"

    def _new_stock_order(self, acct: Account) -> None:
        rng, now = self.rng, self.now
        held = list(acct.positions)
        sell = held and (len(held) > acct.target_stocks or rng.random() < 0.4)
        if sell:
            inst = self.instruments[rng.choice(held)]
            pos = acct.positions[inst.id]
            whole = rng.random() < 0.5
            qty = pos.quantity if whole else round(pos.quantity * rng.uniform(0.2, 0.8), 6)
            dollars = None
        else:
            candidates = [s for s, _, _ in UNIVERSE]
            if len(held) < acct.target_stocks:
                candidates = [s for s in candidates if self.by_symbol[s].id not in acct.positions]
            inst = self.by_symbol[rng.choice(candidates)]
            price = self.prices[inst.symbol]
            dollars = None
            if rng.random() < 0.3:  # a fractional, dollar-based buy
                dollars = float(rng.choice((10, 25, 50, 100, 250)))
                qty = round(dollars / price, 6)
            else:
                qty = float(rng.randint(1, 10))
            if qty * price > acct.cash * 0.9:
                return  # no money: no order
        price = self.prices[inst.symbol]
        kind = "market" if dollars or rng.random() < 0.6 else "limit"
        limit = round(price * (1.01 if not sell else 0.99), 2)
        order = Order(_uuid(rng), _uuid(rng), acct.number, "sell" if sell else "buy", kind,
                      qty, limit, now - timedelta(seconds=rng.randint(0, 298)), now,
                      plan=self._plan(), dollar_based=dollars, instrument_id=inst.id)
        order.updated_at = order.created_at
        if order.plan == "fail":
            order.state = "failed"
            order.reject_reason = rng.choice(("Insufficient buying power.", "Market is closed for this security.",
                                              None))
        else:
            order.state = "confirmed"
        self.orders.append(order)

    def _new_option_order(self, acct: Account) -> None:
        rng, now = self.rng, self.now
        held = list(acct.option_positions)
        close = held and (len(held) >= acct.target_options or rng.random() < 0.4)
        if close:
            pos = acct.option_positions[rng.choice(held)]
            opt = self.options[pos.option_id]
            qty, effect, side = pos.quantity, "close", "sell"
        else:
            opt = self._new_option(rng.choice(OPTION_UNDERLYINGS), now)
            qty, effect, side = float(rng.randint(1, 3)), "open", "buy"
        mark = self.option_mark(opt)[0]
        if effect == "open" and qty * mark * 100 > acct.cash * 0.5:
            return
        order = Order(_uuid(rng), _uuid(rng), acct.number, side, "limit", qty,
                      round(max(mark * (1.02 if side == "buy" else 0.98), 0.01), 2),
                      now - timedelta(seconds=rng.randint(0, 298)), now, plan=self._plan(),
                      option_id=opt.id, position_effect=effect,
                      opening_strategy=f"long_{opt.type}" if effect == "open" else None)
        order.updated_at = order.created_at
        order.state = "failed" if order.plan == "fail" else "confirmed"
        if order.plan == "fail":
            order.reject_reason = "Insufficient buying power."
        self.option_orders.append(order)

    def open_orders(self) -> list[Order]:
        return [o for o in (*self.orders[-40:], *self.option_orders[-20:])
                if o.state in ("confirmed", "partially_filled")]

    def _progress_orders(self) -> None:
        rng, now = self.rng, self.now
        for order in self.open_orders():
            acct = self.accounts[order.account]
            remaining = round(order.quantity - order.filled, 6)
            when = now - timedelta(seconds=rng.randint(0, 298))
            if order.plan == "cancel":
                order.state, order.updated_at = "cancelled", when
            elif order.plan.startswith("partial") and order.state == "confirmed":
                part = round(remaining * rng.uniform(0.3, 0.7), 6) if order.option_id is None \
                    else max(1.0, float(int(remaining / 2)))
                if part >= remaining:
                    self._execute(acct, order, remaining, when)
                    order.state = "filled"
                else:
                    self._execute(acct, order, part, when)
                    order.state = "partially_filled"
                order.updated_at = when
            elif order.plan == "partial_then_cancel":
                order.state, order.updated_at = "cancelled", when
            else:
                if not self._execute(acct, order, remaining, when):
                    order.state, order.reject_reason = "cancelled", "Position changed."
                else:
                    order.state = "filled"
                order.updated_at = when

    def _execute(self, acct: Account, order: Order, qty: float, when: datetime) -> bool:
        rng = self.rng
        if order.option_id is not None:
            opt = self.options[order.option_id]
            price = round(self.option_mark(opt)[0] * rng.uniform(0.99, 1.01), 2)
            pos = acct.option_positions.get(opt.id)
            if order.position_effect == "close" and (pos is None or pos.quantity < qty):
                return False
            fees = round(0.03 * qty, 2)
            order.executions.append(Execution(_uuid(rng), price, qty, when, fees))
            if order.side == "buy":
                acct.cash -= price * 100 * qty + fees
                if pos is None:
                    acct.option_positions[opt.id] = OptionPosition(
                        _uuid(rng), opt.id, qty, round(price * 100, 4), when, when)
                else:
                    total = pos.quantity + qty
                    pos.average_open_price = round(
                        (pos.average_open_price * pos.quantity + price * 100 * qty) / total, 4)
                    pos.quantity, pos.updated_at = total, when
            else:
                acct.cash += price * 100 * qty - fees
                assert pos is not None
                pos.quantity = round(pos.quantity - qty, 4)
                pos.updated_at = when
                if pos.quantity <= 0:
                    del acct.option_positions[opt.id]
            return True
        assert order.instrument_id is not None
        symbol = self.instruments[order.instrument_id].symbol
        price = round(self.prices[symbol] * rng.uniform(0.999, 1.001), 4)
        held = acct.positions.get(order.instrument_id)
        if order.side == "sell" and (held is None or held.quantity + 1e-9 < qty):
            return False
        fees = round(min(8.3, 0.0000278 * price * qty), 2) if order.side == "sell" else 0.0
        order.executions.append(Execution(_uuid(rng), price, qty, when, fees))
        if order.side == "buy":
            acct.cash -= price * qty
            if held is None:
                acct.positions[order.instrument_id] = Position(qty, price, when, when)
            else:
                total = held.quantity + qty
                held.average_price = round((held.average_price * held.quantity + price * qty) / total, 4)
                held.quantity, held.updated_at = round(total, 6), when
        else:
            assert held is not None
            acct.cash += price * qty - fees
            held.quantity = round(held.quantity - qty, 6)
            held.updated_at = when
            if held.quantity <= 1e-6:
                del acct.positions[order.instrument_id]
        acct.cash = round(acct.cash, 4)
        return True

    def _expire_options(self, acct: Account) -> None:
        """A position two days from expiry is closed by a sell order (no exercise modelled)."""
        for pos in list(acct.option_positions.values()):
            opt = self.options[pos.option_id]
            if opt.expiration - self.now.date() <= timedelta(days=2):
                if any(o.option_id == opt.id and o.state in ("confirmed", "partially_filled")
                       for o in self.option_orders[-20:]):
                    continue
                mark = self.option_mark(opt)[0]
                order = Order(_uuid(self.rng), _uuid(self.rng), acct.number, "sell", "limit",
                              pos.quantity, round(max(mark * 0.98, 0.01), 2), self.now, self.now,
                              state="confirmed", plan="fill", option_id=opt.id,
                              position_effect="close")
                self.option_orders.append(order)


def _cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))

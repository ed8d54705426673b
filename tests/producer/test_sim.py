"""The simulated broker: deterministic, realistic, Robinhood-shaped, with faults on request."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from producer.client import BrokerClient, RetryPolicy
from producer.cycles import Fetcher
from producer.instruments import InstrumentCache
from producer.ratelimit import Unlimited
from producer.sim import SimBroker
from producer.simworld import SimWorld
from schema import eventlog as ev
from schema import payloads

EPOCH = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t


def run_cycles(seed: int, times: list[datetime], **faults: Any) -> list[Any]:
    clock = Clock(times[0])
    broker = SimBroker(SimWorld(seed, EPOCH), clock=clock.now, sleep=lambda s: None, **faults)
    client = BrokerClient(broker, Unlimited(), RetryPolicy(attempts=1, backoff=0), check_clock=False)
    fetcher = Fetcher(client, InstrumentCache(), concurrency=1)
    out = []
    for t in times:
        clock.t = t
        result = fetcher.run(set(ev.KINDS))
        fetcher.watermarks.update(result.watermarks)
        out.append(result)
    return out


def bodies(results: list[Any]) -> list[bytes]:
    return [orjson.dumps([(s.kind, s.account, s.fetched_at.isoformat(), s.body) for s in r.snapshots])
            for r in results]


TIMES = [EPOCH + timedelta(hours=15, minutes=5 * i) for i in range(0, 12)] + \
    [EPOCH + timedelta(days=d, hours=17) for d in (1, 2, 3, 4)]


def test_same_seed_same_snapshots() -> None:
    a, b = run_cycles(7, TIMES), run_cycles(7, TIMES)
    assert bodies(a) == bodies(b)
    assert bodies(run_cycles(8, TIMES)) != bodies(a)


def test_faults_do_not_change_the_world() -> None:
    clean = run_cycles(7, TIMES)
    faulty = run_cycles(7, TIMES, error_rate=0.3, throttle_rate=0.1)
    assert any(r.status != "ok" for r in faulty)
    # whatever the faulty run did store equals what the clean run stored at that time
    clean_by = {(s.kind, s.account, s.fetched_at): s.body for r in clean for s in r.snapshots}
    # (order deltas depend on the watermark; the quoted symbols on which positions fetches failed)
    stored = [(s.kind, s.account, s.fetched_at, s.body) for r in faulty for s in r.snapshots
              if s.kind not in (ev.STOCK_ORDERS, ev.OPTION_ORDERS, ev.QUOTES)]
    assert stored and all(clean_by[(k, a, t)] == body for k, a, t, body in stored)
    for r in faulty:
        for s in r.snapshots:
            if s.kind == ev.QUOTES:
                mine = {q["symbol"]: q for q in payloads.results(s.body, "quotes")}
                theirs = {q["symbol"]: q for q in payloads.results(clean_by[(s.kind, s.account, s.fetched_at)], "quotes")}
                assert all(mine[k] == theirs[k] for k in mine.keys() & theirs.keys())


def test_prices_move_and_positions_open_and_close() -> None:
    results = run_cycles(3, [EPOCH + timedelta(hours=15), EPOCH + timedelta(days=14, hours=15)])
    first, last = results

    def positions(r: Any, kind: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for s in r.snapshots:
            if s.kind == kind:
                key = "instrument" if kind == ev.STOCK_POSITIONS else "id"
                out[s.account] = {p[key] for p in payloads.results(s.body, "positions")}
        return out

    def prices(r: Any) -> dict[str, str]:
        s = next(s for s in r.snapshots if s.kind == ev.QUOTES)
        return {q["symbol"]: q["last_trade_price"] for q in payloads.results(s.body, "quotes")}

    assert len(positions(first, ev.STOCK_POSITIONS)) == 2  # an individual account and an IRA
    assert positions(first, ev.STOCK_POSITIONS) != positions(last, ev.STOCK_POSITIONS)
    assert positions(first, ev.OPTION_POSITIONS) != positions(last, ev.OPTION_POSITIONS)
    common = set(prices(first)) & set(prices(last))
    assert common and all(prices(first)[s] != prices(last)[s] for s in common)


def test_orders_fill_partially_fill_cancel_and_fail_with_executions() -> None:
    results = run_cycles(5, [EPOCH + timedelta(hours=14), EPOCH + timedelta(days=21, hours=21)])
    orders = [o for s in results[1].snapshots if s.kind == ev.STOCK_ORDERS for o in payloads.results(s.body, "orders")]
    states = Counter(o["state"] for o in orders)
    assert {"filled", "cancelled", "failed"} <= set(states), states
    partial = [o for o in orders if o["state"] in ("cancelled", "filled") and o["executions"]
               and o["cumulative_quantity"] != o["quantity"]]
    assert partial or any(len(o["executions"]) > 1 for o in orders)
    filled = [o for o in orders if o["state"] == "filled"]
    assert all(o["executions"] and o["executions"][0]["id"] and o["average_price"] for o in filled)
    assert any("." in o["quantity"] and not o["quantity"].endswith(".00000000") for o in orders)  # fractional
    assert all(isinstance(o["quantity"], str) and isinstance(o["fees"], str) for o in orders)
    opts = [o for s in results[1].snapshots if s.kind == ev.OPTION_ORDERS for o in payloads.results(s.body, "orders")]
    assert opts and all(o["legs"] and "executions" in o["legs"][0] for o in opts)


def test_option_positions_carry_greeks_some_null() -> None:
    (result,) = run_cycles(2, [EPOCH + timedelta(hours=15)])
    md = [m for s in result.snapshots if s.kind == ev.OPTION_POSITIONS for m in payloads.results(s.body, "marketdata")]
    assert len(md) == 5
    deltas = [m["delta"] for m in md]
    assert all(d is None or -1 <= float(d) <= 1 for d in deltas)
    assert any(d is not None for d in deltas)
    worlds = [run_cycles(s, [EPOCH + timedelta(hours=15)])[0] for s in range(1, 12)]
    assert any(m["delta"] is None for r in worlds for s in r.snapshots if s.kind == ev.OPTION_POSITIONS
               for m in payloads.results(s.body, "marketdata"))


def test_fault_injection_errors_throttling_and_timeouts() -> None:
    (errors,) = run_cycles(1, [EPOCH + timedelta(hours=15)], error_rate=1.0)
    assert errors.status == "failed" and not errors.snapshots
    assert {o.http_status for k, o in errors.outcomes.items() if k != ev.QUOTES} <= {500, 503}
    assert "held symbols unknown" in (errors.outcomes[ev.QUOTES].error or "")
    (throttled,) = run_cycles(1, [EPOCH + timedelta(hours=15)], throttle_rate=1.0)
    assert throttled.status == "failed"
    assert {o.http_status for k, o in throttled.outcomes.items() if k != ev.QUOTES} == {429}
    clock = Clock(EPOCH + timedelta(hours=15))
    broker = SimBroker(SimWorld(1, EPOCH), clock=clock.now, slow_rate=1.0, slow_seconds=10, sleep=lambda s: None)
    client = BrokerClient(broker, Unlimited(), RetryPolicy(attempts=2, backoff=0, timeout=1), check_clock=False)
    result = Fetcher(client, InstrumentCache(), 1).run({ev.ACCOUNT})
    assert result.status == "failed" and "timed out" in (result.error or "")
    assert broker.calls == 2


@pytest.mark.parametrize("stop_first", [True])
def test_stopping_abandons_the_cycle(stop_first: bool) -> None:
    stop = threading.Event()
    stop.set()
    broker = SimBroker(SimWorld(1, EPOCH), clock=lambda: EPOCH + timedelta(hours=15))
    from producer.ratelimit import RateLimiter

    limiter = RateLimiter(1, burst=1)
    limiter.tokens = 0
    client = BrokerClient(broker, limiter, RetryPolicy(), stop, check_clock=False)
    result = Fetcher(client, InstrumentCache(), 1).run(set(ev.KINDS))
    assert result.status == "failed" and broker.calls == 0

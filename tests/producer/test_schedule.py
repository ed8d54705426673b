"""Scheduling and the rate limiter (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from producer.ratelimit import RateLimiter
from producer.schedule import Schedule
from schema import eventlog as ev

OPEN = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)  # Wednesday 10:00 New York
CLOSED = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)  # Saturday


def test_each_kind_on_its_own_interval() -> None:
    s = Schedule(300, 3600)
    assert s.due(OPEN) == set(ev.KINDS)
    s.record(set(ev.KINDS), set(), OPEN)
    assert s.due(OPEN + timedelta(seconds=200)) == set()
    main = {ev.STOCK_POSITIONS, ev.OPTION_POSITIONS, ev.QUOTES, ev.ACCOUNT, ev.PORTFOLIO}
    assert s.due(OPEN + timedelta(seconds=300)) == main
    assert s.wait_seconds(OPEN + timedelta(seconds=100)) == 200
    s.record(main, set(), OPEN + timedelta(seconds=300))
    assert s.due(OPEN + timedelta(seconds=3600)) == set(ev.KINDS)


def test_a_failed_kind_is_retried_at_the_main_interval() -> None:
    s = Schedule(300, 3600)
    s.record(set(ev.KINDS), {ev.STOCK_ORDERS}, OPEN)
    assert ev.STOCK_ORDERS in s.due(OPEN + timedelta(seconds=300))
    assert ev.OPTION_ORDERS not in s.due(OPEN + timedelta(seconds=300))


def test_market_hours_slow_down_polling_when_closed() -> None:
    s = Schedule(300, 3600, market_hours=True, closed_interval=1800)
    s.record(set(ev.KINDS), set(), CLOSED)
    assert s.due(CLOSED + timedelta(seconds=600)) == set()
    assert ev.QUOTES in s.due(CLOSED + timedelta(seconds=1800))
    s.record(set(ev.KINDS), set(), OPEN)
    assert ev.QUOTES in s.due(OPEN + timedelta(seconds=300))


def test_rate_limiter_spaces_requests() -> None:
    now = [0.0]
    slept: list[float] = []
    limiter = RateLimiter(60, burst=2, clock=lambda: now[0])

    class Stop:
        def wait(self, t: float) -> bool:
            slept.append(t)
            now[0] += t
            return False

    for _ in range(4):
        assert limiter.acquire(Stop())  # type: ignore[arg-type]
    assert slept == [1.0, 1.0]  # a burst of two, then one a second

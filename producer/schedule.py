"""Which kinds are due: each kind has its own interval, optionally slower while the market is closed.

A kind that failed is due again one main interval after the attempt (orders do not wait an
hour to retry). Pure logic on datetimes, so the service and the history writer share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from producer import market
from schema import eventlog as ev

MAIN_KINDS = (ev.STOCK_POSITIONS, ev.OPTION_POSITIONS, ev.QUOTES, ev.ACCOUNT, ev.PORTFOLIO)
ORDER_KINDS = (ev.STOCK_ORDERS, ev.OPTION_ORDERS)
SLACK = timedelta(seconds=1)  # a cycle that wakes a hair early still counts as on time


@dataclass
class Schedule:
    interval: float = 300.0
    orders_interval: float = 3600.0
    market_hours: bool = False
    closed_interval: float = 1800.0
    last: dict[str, datetime] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def main_interval(self, now: datetime) -> float:
        if self.market_hours and not market.is_open(now):
            return max(self.interval, self.closed_interval)
        return self.interval

    def interval_for(self, kind: str, now: datetime, main: float | None = None) -> float:
        main = self.main_interval(now) if main is None else main
        if kind in self.failed:
            return main
        if kind in ORDER_KINDS:
            return max(self.orders_interval, main)
        return main

    def next_due(self, kind: str, now: datetime, main: float | None = None) -> datetime:
        last = self.last.get(kind)
        if last is None:
            return now
        return last + timedelta(seconds=self.interval_for(kind, now, main))

    def due(self, now: datetime) -> set[str]:
        """Kinds due now; when any is, also those due within half a main interval (one cycle
        instead of two a few minutes apart: orders ride along with the main kinds)."""
        main = self.main_interval(now)
        nexts = {k: self.next_due(k, now, main) for k in ev.KINDS}
        if min(nexts.values()) > now + SLACK:
            return set()
        soon = now + timedelta(seconds=max(main / 2, SLACK.total_seconds()))
        return {k for k, t in nexts.items() if t <= soon}

    def wait_seconds(self, now: datetime) -> float:
        main = self.main_interval(now)
        wait = min((self.next_due(k, now, main) - now).total_seconds() for k in ev.KINDS)
        if self.market_hours:
            wait = min(wait, self.interval)  # look again: the market may open meanwhile
        return max(0.0, wait)

    def record(self, kinds: set[str], failed: set[str], at: datetime) -> None:
        for kind in kinds:
            self.last[kind] = at
        self.failed = (self.failed - kinds) | failed

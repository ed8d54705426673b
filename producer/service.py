"""The producer service: build the broker from the settings, run cycles on the schedule.

Stops on the stop event (SIGINT, SIGTERM, CTRL_BREAK set it); a lost database connection is
retried with backoff, and a cycle that could not be stored is simply fetched again.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, time
from typing import Any

import psycopg

from brokersync.db import connect, is_connection_error
from brokersync.settings import Settings
from brokersync.signals import Backoff
from producer.broker import LoginRequired, Transport
from producer.client import BrokerClient, RetryPolicy
from producer.cycles import CycleResult, Fetcher, Outcome
from producer.instruments import InstrumentCache
from producer.ratelimit import RateLimiter
from producer.schedule import Schedule
from producer.store import LastHashes, apply_skip_identical, load_watermarks, save_cycle

log = logging.getLogger("producer")

DRIFT_WARN_S = 1.0


def default_epoch(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date(), time(0), UTC)


def build_broker(settings: Settings, stop: threading.Event) -> tuple[Transport, Any]:
    """The transport and, for Robinhood, the session manager."""
    if settings.effective_broker == "simulated":
        from producer.sim import SimBroker
        from producer.simworld import SimWorld

        epoch = settings.sim_epoch or default_epoch(datetime.now(UTC))
        if epoch.tzinfo is None:
            epoch = epoch.replace(tzinfo=UTC)
        log.warning("no Robinhood credentials configured: using the SIMULATED broker (seed %d, world "
                    "since %s); set BROKERSYNC_ROBINHOOD_USERNAME/PASSWORD for the real one",
                    settings.sim_seed, epoch.isoformat())
        world = SimWorld(settings.sim_seed, epoch)
        broker = SimBroker(world, latency=settings.sim_latency, error_rate=settings.sim_error_rate,
                           throttle_rate=settings.sim_throttle_rate, slow_rate=settings.sim_slow_rate,
                           slow_seconds=settings.sim_slow_seconds,
                           sleep=lambda s: None if stop.wait(s) else None)
        return broker, None
    from producer.robinhood import RobinhoodAuth, RobinhoodBroker, robin_session

    session = robin_session()
    auth = RobinhoodAuth(
        session, settings.session_path, settings.robinhood_username,
        settings.robinhood_password.get_secret_value() if settings.robinhood_password else None,
        settings.robinhood_mfa_secret.get_secret_value() if settings.robinhood_mfa_secret else None,
        settings.producer_timeout, settings.producer_login_retry)
    return RobinhoodBroker(session), auth


class Producer:
    def __init__(self, settings: Settings, stop: threading.Event, *, interval: float | None = None,
                 transport: Transport | None = None, auth: Any = None) -> None:
        self.settings, self.stop = settings, stop
        if transport is None:
            transport, auth = build_broker(settings, stop)
        self.transport, self.auth = transport, auth
        policy = RetryPolicy(settings.producer_max_attempts, settings.producer_backoff,
                             timeout=settings.producer_timeout)
        # The simulated broker gets a minute's burst, so a first cycle with a cold instrument
        # cache (about 40 calls for two accounts) is not spread over 25 s in a demo; the rate
        # itself is the same for both brokers.
        burst = None if settings.effective_broker == "robinhood" else max(15, settings.producer_rate_limit)
        limiter = RateLimiter(settings.producer_rate_limit, burst)
        self.client = BrokerClient(transport, limiter, policy, stop,
                                   check_clock=getattr(transport, "wall_clock", True))
        self.cache = InstrumentCache()
        self.fetcher = Fetcher(self.client, self.cache, settings.producer_concurrency)
        self.schedule = Schedule(interval or settings.producer_interval, settings.producer_orders_interval,
                                 settings.producer_market_hours, settings.producer_closed_interval)
        self.hashes = LastHashes() if settings.producer_skip_identical else None

    def close(self) -> None:
        self.fetcher.close()
        self.transport.close()

    def load_state(self, conn: psycopg.Connection[Any]) -> None:
        n = self.cache.load(conn)
        self.fetcher.watermarks = load_watermarks(conn)
        if self.hashes is not None:
            self.hashes.load(conn, self.transport.source)
        log.debug("state: %d cached instruments, %d order watermarks", n, len(self.fetcher.watermarks))

    def fetch(self, kinds: set[str]) -> CycleResult:
        if self.auth is not None:
            try:
                self.auth.ensure()
            except LoginRequired as exc:
                now = self.transport.now()
                result = CycleResult(now, self.transport.source, kinds, finished_at=now)
                for kind in sorted(kinds):
                    result.outcomes[kind] = Outcome("failed", str(exc), exc.status)
                return result
        result = self.fetcher.run(kinds)
        if result.auth_failed and self.auth is not None:
            self.auth.rejected()
        return result

    def cycle(self, conn: psycopg.Connection[Any], kinds: set[str]) -> CycleResult | None:
        """Fetch and store one cycle; ``None`` when a stop interrupted it (nothing stored:
        the next start fetches again, and the cycle log shows no failure that was not one)."""
        result = self.fetch(kinds)
        if self.stop.is_set() and result.status != "ok":
            log.info("stop requested during a cycle; its results are discarded")
            return None
        if self.hashes is not None:
            apply_skip_identical(result, self.hashes)
        cycle_id = save_cycle(conn, result, self.cache)
        self.fetcher.watermarks.update(result.watermarks)
        failed = {k for k, o in result.outcomes.items() if o.status == "failed"}
        self.schedule.record(kinds, failed, result.started_at)
        self._report(cycle_id, result)
        return result

    def _report(self, cycle_id: int, result: CycleResult) -> None:
        assert result.finished_at is not None
        took = (result.finished_at - result.started_at).total_seconds()
        kinds = ", ".join(f"{k} {o.status}" for k, o in sorted(result.outcomes.items()))
        level = logging.INFO if result.status == "ok" else logging.WARNING
        log.log(level, "cycle #%d %s in %.2fs: %d snapshots, %d broker calls (%s)%s", cycle_id,
                result.status, took, len(result.snapshots), result.broker_calls, kinds,
                f"; {result.error}" if result.error else "")
        if result.shape_drift:
            log.warning("broker responses lack fields the consumers rely on: %s", "; ".join(
                f"{e}: {', '.join(f)}" for e, f in sorted(result.shape_drift.items())))
        if result.clock_drift is not None and abs(result.clock_drift) > DRIFT_WARN_S:
            log.warning("the local clock is %.1fs %s the broker's (Date header); fix the clock "
                        "(NTP): the broker rejects requests outside its time window",
                        abs(result.clock_drift), "ahead of" if result.clock_drift > 0 else "behind")

    def run(self, url: str, once: bool = False) -> CycleResult | None:
        """Run cycles until stopped (or one cycle); returns the last cycle's result."""
        backoff = Backoff(0.5, self.settings.reconnect_max_backoff)
        last: CycleResult | None = None
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = connect(url, autocommit=True, application_name="brokersync-producer")
                        self.load_state(conn)
                        backoff.reset()
                    now = self.transport.now()
                    due = self.schedule.due(now)
                    if once:
                        due = set(self.schedule.due(now) | set(_all_kinds()))
                    if due:
                        last = self.cycle(conn, due)
                        if once or last is None:
                            return last
                    self.stop.wait(max(0.05, self.schedule.wait_seconds(self.transport.now())))
                except Exception as exc:  # only connection errors are handled here
                    if not is_connection_error(exc):
                        raise
                    if conn is not None:
                        conn.close()
                    conn = None
                    delay = backoff.next()
                    log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)
                    self.stop.wait(delay)
        finally:
            if conn is not None:
                conn.close()
        return last


def _all_kinds() -> tuple[str, ...]:
    from schema.eventlog import KINDS

    return KINDS

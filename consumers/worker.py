"""``brokersync worker``: the dramatiq worker that delivers notifications.

One process, its own OS service. The broker is dramatiq-postgres on the brokersync database
(no new server): the queue lives in the ``dramatiq`` schema (migration 0300). The broker is
created here, once, by :func:`run_worker` (the entry point) and passed to the actors
explicitly; nothing calls ``dramatiq.set_broker`` and no broker exists at import time.

One actor per sink (``notify_log``, ``notify_webhook``, ``notify_telegram``, ``notify_email``)
on the ``notifications`` queue. Each takes a delivery id and runs
:func:`consumers.delivery.deliver` (check-and-mark around the send; the crash windows are
documented there). Failures retry with exponential backoff through dramatiq's Retries
middleware, bounded by ``BROKERSYNC_NOTIFY_MAX_RETRIES``; the last failure is recorded on the
delivery row (status ``failed``).

Threads, not processes: dramatiq's CLI forks worker processes, which does not exist on Windows
and is not needed for a handful of messages a day; a ``dramatiq.Worker`` with a few threads
runs inside this process, and a stop signal drains it: the workers finish the message in hand,
prefetched messages go back to the queue, then the connections close (exit 0).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage
from psycopg_pool import ConnectionPool

from brokersync.settings import Settings
from consumers.delivery import QUEUE, actor_name, deliver
from consumers.sinks import SINKS, Outgoing, build_sink, check_settings

log = logging.getLogger(__name__)

STOP_SLICE = 0.5  # seconds: the main thread checks the stop event this often (signals on Windows)
# Idle poll of each queue (main and delayed-retry). An enqueue's NOTIFY wakes a consumer at once,
# so this only bounds how late a due retry is picked up and how long a stop takes.
IDLE_POLL_MS = 2000


@dataclass
class WorkerParts:
    broker: Any  # dramatiq_postgres.PostgresBroker
    pool: ConnectionPool
    actors: dict[str, dramatiq.Actor[Any, Any]]

    def close(self) -> None:
        self.broker.close()
        self.pool.close()


def make_broker(settings: Settings, url: str) -> WorkerParts:
    """The PostgreSQL broker, its connection pool and the actors, for one worker process."""
    from dramatiq_postgres import PostgresBroker

    pool = ConnectionPool(
        url,
        min_size=0,
        max_size=settings.notify_worker_threads + 4,
        kwargs={"application_name": "brokersync:worker"},
        check=ConnectionPool.check_connection,
        open=True,
    )
    ttl = settings.notify_worker_heartbeat_ttl
    broker = PostgresBroker(
        pool=pool,
        results=False,
        heartbeat_interval=max(ttl / 4, 0.2),
        heartbeat_ttl=ttl,
        maintenance_interval=min(30.0, max(ttl / 2, 0.5)),
        poll_interval=IDLE_POLL_MS / 1000,
    )
    broker.add_middleware(CurrentMessage())
    actors = {sink: declare_actor(broker, pool, settings, sink) for sink in SINKS}
    return WorkerParts(broker, pool, actors)


def declare_actor(broker: Any, pool: ConnectionPool, settings: Settings, sink: str) -> dramatiq.Actor[Any, Any]:
    max_retries = settings.notify_max_retries

    def send(message: Outgoing) -> None:
        build_sink(sink, settings).send(message)  # an unconfigured sink fails permanently

    def run(delivery_id: int) -> None:  # dramatiq warns about return values without Results
        current = CurrentMessage.get_current_message()
        retries = int(current.options.get("retries", 0)) if current is not None else 0
        with pool.connection() as conn:
            outcome = deliver(conn, int(delivery_id), send, final=retries >= max_retries)
        if outcome == "sent":
            log.info("delivery %s sent via %s", delivery_id, sink)
        elif outcome != "failed":
            log.info("delivery %s via %s: %s; skipped", delivery_id, sink, outcome)

    run.__name__ = actor_name(sink)
    run.__module__ = __name__
    return dramatiq.Actor(
        run,
        broker=broker,
        actor_name=actor_name(sink),
        queue_name=QUEUE,
        priority=0,
        options={
            "max_retries": max_retries,
            "min_backoff": int(settings.notify_min_backoff * 1000),
            "max_backoff": int(settings.notify_max_backoff * 1000),
        },
    )


def run_worker(settings: Settings, url: str, stop: threading.Event) -> int:
    """Run until ``stop`` is set; return the exit code."""
    sinks = check_settings(settings)
    parts = make_broker(settings, url)
    worker = dramatiq.Worker(
        parts.broker, queues={QUEUE}, worker_threads=settings.notify_worker_threads, worker_timeout=IDLE_POLL_MS
    )
    try:
        worker.start()
        log.info(
            "worker: delivering notifications (sinks enabled: %s; %d threads, queue %r)",
            ", ".join(sinks) or "none", settings.notify_worker_threads, QUEUE,
        )
        while not stop.wait(STOP_SLICE):
            pass
        # Shutdown order: worker threads finish the message in hand, consumers stop,
        # prefetched messages are requeued, then the broker and its pool close.
        log.info("worker: stopping")
        worker.stop(timeout=int((settings.notify_timeout + 5) * 1000))
    finally:
        parts.close()
    log.info("worker: stopped")
    return 0

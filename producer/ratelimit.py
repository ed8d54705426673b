"""A token bucket shared by every request of one producer (all threads).

The broker is polite to callers that are polite to it: a steady ``rate`` per minute with a
small burst, so a cycle's concurrent fetches go out together but a retry storm cannot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: float, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        # Default burst: a quarter minute's worth, at most 15 (an hourly cycle's 12 requests
        # go out together; a retry storm still cannot).
        self.capacity = float(burst if burst is not None else max(1, min(15, int(per_minute / 4))))
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Take one token, waiting for it; ``False`` when ``stop`` was set meanwhile."""
        while True:
            with self.lock:
                self._refill()
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                wait = (1 - self.tokens) / self.rate
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


class Unlimited:
    """For the history writer: a simulated broker needs no politeness."""

    def acquire(self, stop: threading.Event | None = None) -> bool:
        return True

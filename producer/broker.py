"""What the producer needs from a broker: HTTP-like GETs that say their status code.

Both brokers are *transports*: the simulated broker answers the same URLs with the same raw
JSON as Robinhood, and the Robinhood transport sends them through robin_stocks's own session.
Everything above the transport (pagination, retries, rate limit, instrument cache, snapshot
envelopes) is shared, so a consumer cannot tell the two apart and the simulator exercises the
same code paths as the real adapter.

A fetch either returns every page of a response or raises :class:`FetchError` with the HTTP
status: robin_stocks's habit of turning a 401/429/5xx into ``None`` or ``[]`` and of returning
the pages it got before a later one failed is exactly what this layer exists to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

API = "https://api.robinhood.com"


@dataclass(frozen=True)
class Response:
    """One HTTP answer, as received (body undecoded)."""

    status: int
    body: bytes
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds the call took
    # The decoded body, when the transport has it already (the simulator writing history
    # skips encoding JSON only to decode it again); ``None`` means decode ``body``.
    data: Any = None


class Transport(Protocol):
    """A broker that answers GETs. ``source`` is stored on every snapshot."""

    source: str

    def get(self, url: str, params: dict[str, str] | None, timeout: float) -> Response: ...

    def now(self) -> datetime:
        """The time a fetch happens at (the wall clock, or the simulator's clock)."""
        ...

    def close(self) -> None: ...


class FetchError(Exception):
    """A fetch failed; nothing from it may be stored as a snapshot."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class Throttled(FetchError):
    """The broker answered 429 Too Many Requests (after our retries)."""


class AuthRejected(FetchError):
    """The broker rejected the session (401/403): a login is needed."""


class Malformed(FetchError):
    """The broker answered 200 with a body that is not the JSON shape we expect."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None,
                 body: bytes = b"") -> None:
        super().__init__(message, status, url)
        self.body = body


class LoginRequired(FetchError):
    """No usable session and the broker needs a person (device approval, SMS code)."""

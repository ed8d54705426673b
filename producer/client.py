"""The shared broker client: status codes, retries, rate limit, pagination, clock drift.

Sits on a :class:`~producer.broker.Transport` (simulated or Robinhood). Every request:
waits for the rate limiter, has a timeout, is retried with exponential backoff on 429, 5xx
and network errors (honouring ``Retry-After``), and fails loudly on anything else. A
paginated fetch returns every page or raises: a later page failing fails the whole fetch.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from producer.broker import AuthRejected, FetchError, Malformed, Response, Throttled, Transport

log = logging.getLogger(__name__)

MAX_PAGES = 500  # a `next` chain longer than this is a broker bug, not data


class Limiter(Protocol):
    def acquire(self, stop: threading.Event | None = None) -> bool: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 15.0


class Stopped(FetchError):
    """The producer is stopping; the fetch was abandoned."""


class BrokerClient:
    def __init__(self, transport: Transport, limiter: Limiter, policy: RetryPolicy,
                 stop: threading.Event | None = None, check_clock: bool = True) -> None:
        self.transport = transport
        self.limiter = limiter
        self.policy = policy
        self.stop = stop or threading.Event()
        self.check_clock = check_clock
        self._lock = threading.Lock()
        self.calls = 0
        self.clock_drift: float | None = None  # local minus broker, seconds (latest sample)

    @property
    def source(self) -> str:
        return self.transport.source

    def take_calls(self) -> int:
        """Calls made since the previous take (one cycle's count)."""
        with self._lock:
            n, self.calls = self.calls, 0
        return n

    # ---- one request ---------------------------------------------------------------------
    def _send(self, url: str, params: dict[str, str] | None) -> Response:
        if self.stop.is_set() or not self.limiter.acquire(self.stop):
            raise Stopped("stopping", url=url)
        with self._lock:
            self.calls += 1
        sent = time.time()
        resp = self.transport.get(url, params, self.policy.timeout)
        if self.check_clock:
            self._sample_clock(resp, sent)
        return resp

    def _sample_clock(self, resp: Response, sent: float) -> None:
        date = resp.headers.get("Date") or resp.headers.get("date")
        if not date:
            return
        try:
            broker = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        # The Date header has one-second resolution and is stamped somewhere during the call:
        # compare it with the middle of the call, less the truncation (up to 1 s).
        local = sent + resp.elapsed / 2
        drift = local - (broker + 0.5)
        self.clock_drift = round(drift, 3)

    def get_response(self, url: str, params: dict[str, str] | None = None) -> Response:
        """GET with retries; a 2xx response, else :class:`FetchError` with the status."""
        delay = self.policy.backoff
        last: FetchError | None = None
        for attempt in range(1, self.policy.attempts + 1):
            try:
                resp = self._send(url, params)
            except Stopped:
                raise
            except FetchError as exc:  # network error or timeout, raised by the transport
                last = exc
                wait = delay
            else:
                if 200 <= resp.status < 300:
                    return resp
                if resp.status in (401, 403):
                    raise AuthRejected(
                        f"HTTP {resp.status} from {_short(url)}: the broker rejected the session",
                        resp.status, url)
                if resp.status == 429 or resp.status >= 500:
                    cls = Throttled if resp.status == 429 else FetchError
                    last = cls(f"HTTP {resp.status} from {_short(url)}{_detail(resp)}",
                               resp.status, url)
                    wait = max(delay, _retry_after(resp))
                else:
                    raise FetchError(f"HTTP {resp.status} from {_short(url)}{_detail(resp)}",
                                     resp.status, url)
            if attempt < self.policy.attempts:
                log.info("%s; retry %d/%d in %.2fs", last, attempt, self.policy.attempts - 1, wait)
                if self.stop.wait(min(wait, self.policy.max_backoff)):
                    raise Stopped("stopping", url=url)
                delay *= 2
        assert last is not None
        raise last

    def get_json(self, url: str, params: dict[str, str] | None = None) -> Any:
        resp = self.get_response(url, params)
        if resp.data is not None:
            return resp.data
        try:
            return orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise Malformed(f"malformed JSON from {_short(url)} (HTTP {resp.status}, "
                            f"{len(resp.body)} bytes)", resp.status, url, resp.body) from None

    def get_object(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        data = self.get_json(url, params)
        if not isinstance(data, dict):
            raise Malformed(f"{_short(url)} answered {type(data).__name__}, not an object",
                            200, url, orjson.dumps(data))
        return data

    def get_pages(self, url: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every page of a paginated endpoint, raw, in order; all or nothing."""
        pages: list[dict[str, Any]] = []
        next_url: str | None = url
        next_params = params
        seen: set[str] = set()
        while next_url:
            if len(pages) >= MAX_PAGES or next_url in seen:
                raise FetchError(f"pagination of {_short(url)} does not end (page {len(pages) + 1})",
                                 None, next_url)
            seen.add(next_url)
            page = self.get_object(next_url, next_params)
            if not isinstance(page.get("results"), list):
                raise Malformed(f"page {len(pages) + 1} of {_short(url)} has no results list",
                                200, next_url, orjson.dumps(page))
            pages.append(page)
            nxt = page.get("next")
            if nxt is not None and not isinstance(nxt, str):
                raise Malformed(f"page {len(pages)} of {_short(url)} has a non-string next",
                                200, next_url, orjson.dumps(page))
            next_url, next_params = nxt or None, None
        return pages


def _short(url: str) -> str:
    return url.split("?", 1)[0].replace("https://api.robinhood.com", "")


def _detail(resp: Response) -> str:
    text = resp.body[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def _retry_after(resp: Response) -> float:
    value = resp.headers.get("Retry-After") or resp.headers.get("retry-after")
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0

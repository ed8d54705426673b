"""The Robinhood transport: robin_stocks's own HTTP session, with timeouts and status codes.

robin_stocks's ``request_get`` hides status codes (``None``/``[]`` on 401, 429, 5xx; partial
data when a later page fails) and sets no timeout, so the producer sends its GETs through
robin_stocks's ``SESSION`` itself (the session that robin_stocks's login authorises) and keeps
every status. :class:`RobinhoodAuth` manages the stored session without ever prompting.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from producer.broker import FetchError, LoginRequired, Response
from producer.login import LOGIN_HINT, load_session, password_login

log = logging.getLogger(__name__)


def robin_session() -> requests.Session:
    from robin_stocks.robinhood.globals import SESSION

    return SESSION


class RobinhoodBroker:
    source = "robinhood"

    def __init__(self, session: requests.Session | None = None) -> None:
        self.session = session if session is not None else robin_session()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def close(self) -> None:
        pass

    def get(self, url: str, params: dict[str, str] | None, timeout: float) -> Response:
        started = time.monotonic()
        try:
            r = self.session.get(url, params=params, timeout=timeout)
        except requests.Timeout:
            raise FetchError(f"timed out after {timeout:.1f}s", None, url) from None
        except requests.RequestException as exc:
            raise FetchError(f"network error: {type(exc).__name__}", None, url) from None
        return Response(r.status_code, r.content, r.url, dict(r.headers), time.monotonic() - started)


class RobinhoodAuth:
    """Puts a stored session on the HTTP session; logs in again at most every ``retry`` s."""

    def __init__(self, session: requests.Session, folder: Path, username: str | None,
                 password: str | None, mfa_secret: str | None, timeout: float, retry: float) -> None:
        self.session, self.folder = session, folder
        self.username, self.password, self.mfa_secret = username, password, mfa_secret
        self.timeout, self.retry = timeout, retry
        self.authorised = False
        self.rejected_token: str | None = None
        self.last_attempt: float | None = None
        self.last_error: LoginRequired | None = None
        self.logged = False

    def _use(self, data: dict[str, str]) -> None:
        self.session.headers["Authorization"] = f"{data['token_type']} {data['access_token']}"
        self.authorised = True

    def ensure(self) -> None:
        """Authorise the session or raise :class:`LoginRequired` (never blocks on a person)."""
        if self.authorised:
            return
        stored = load_session(self.folder)
        if stored and stored["access_token"] != self.rejected_token:
            self._use(stored)
            log.info("using the stored Robinhood session in %s", self.folder)
            return
        now = time.monotonic()
        if self.last_attempt is not None and now - self.last_attempt < self.retry:
            assert self.last_error is not None
            raise self.last_error
        self.last_attempt = now
        if not (self.username and self.password):
            self.last_error = LoginRequired(f"no stored Robinhood session; {LOGIN_HINT}")
        else:
            try:
                self._use(password_login(self.session, self.folder, self.username, self.password,
                                         self.mfa_secret, self.timeout))
                log.info("logged in to Robinhood; session stored in %s", self.folder)
                self.logged = False
                return
            except LoginRequired as exc:
                self.last_error = exc
        if not self.logged:
            log.error("%s (next automatic attempt in %.0fs)", self.last_error, self.retry)
            self.logged = True
        raise self.last_error

    def rejected(self) -> None:
        """The broker answered 401/403: forget the session, log in again later."""
        token = self.session.headers.get("Authorization", "")
        if isinstance(token, str) and " " in token:
            self.rejected_token = token.split(" ", 1)[1]
        self.session.headers.pop("Authorization", None)
        if self.authorised:
            log.error("Robinhood rejected the session (expired or revoked); %s", LOGIN_HINT)
        self.authorised = False

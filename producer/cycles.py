"""One producer cycle: fetch the kinds that are due, build the snapshot envelopes.

A cycle runs in waves so that concurrent requests overlap their latency: (1) the account
list, the portfolio list and, per account, stock positions, option positions and orders;
(2) instruments not in the cache (batched with ``?ids=``); (3) quotes for the held symbols and option market data
(Greeks), both batched. With two accounts a steady-state cycle is 8 requests in two
round-trips. Each (kind, account) either yields a complete envelope or a failure with its
HTTP status; nothing partial becomes a snapshot. Persistence is the caller's
(:mod:`producer.store` for the service, :mod:`producer.simulate` for history).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from producer.broker import API, FetchError, Malformed
from producer.client import BrokerClient
from producer.instruments import InstrumentCache
from producer.shapes import missing_fields
from schema import eventlog as ev
from schema.payloads import QUOTES_ACCOUNT, envelope

log = logging.getLogger(__name__)

PER_ACCOUNT = (ev.STOCK_POSITIONS, ev.OPTION_POSITIONS, ev.ACCOUNT, ev.PORTFOLIO,
               ev.STOCK_ORDERS, ev.OPTION_ORDERS)
QUOTE_BATCH = 75  # symbols per /marketdata/quotes/ request
OPTION_BATCH = 40  # instrument URLs per /marketdata/options/ request (URLs are long)
INSTRUMENT_BATCH = 50  # ids per /instruments/?ids= (and /options/instruments/?ids=) request

ACCOUNTS_URL = f"{API}/accounts/"
PORTFOLIOS_URL = f"{API}/portfolios/"
POSITIONS_URL = f"{API}/positions/"
OPTION_POSITIONS_URL = f"{API}/options/aggregate_positions/"
QUOTES_URL = f"{API}/marketdata/quotes/"
INSTRUMENTS_URL = f"{API}/instruments/"
OPTION_INSTRUMENTS_URL = f"{API}/options/instruments/"
OPTION_MARKETDATA_URL = f"{API}/marketdata/options/"
ORDERS_URL = f"{API}/orders/"
OPTION_ORDERS_URL = f"{API}/options/orders/"

T = TypeVar("T")


@dataclass
class Snapshot:
    """One row for the event log: an envelope, or a malformed body kept verbatim."""

    account: str
    kind: str
    body: dict[str, Any] | bytes
    fetched_at: datetime


@dataclass
class Outcome:
    status: str = "ok"  # ok | failed | unchanged
    error: str | None = None
    http_status: int | None = None
    snapshots: int = 0
    accounts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "snapshots": self.snapshots}
        if self.error:
            out["error"] = self.error
        if self.http_status is not None:
            out["http_status"] = self.http_status
        if self.accounts:
            out["accounts"] = self.accounts
        return out


@dataclass
class CycleResult:
    started_at: datetime
    source: str
    kinds: set[str]
    finished_at: datetime | None = None
    snapshots: list[Snapshot] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    broker_calls: int = 0
    clock_drift: float | None = None
    shape_drift: dict[str, list[str]] = field(default_factory=dict)
    watermarks: dict[tuple[str, str], str] = field(default_factory=dict)
    auth_failed: bool = False

    def fail(self, kind: str, account: str | None, exc: FetchError) -> None:
        o = self.outcomes.setdefault(kind, Outcome())
        o.status = "failed"
        o.error = o.error or str(exc)
        o.http_status = o.http_status if o.http_status is not None else exc.status
        if account is not None:
            o.accounts[account] = f"failed: {exc}"
        if exc.__class__.__name__ in ("AuthRejected", "LoginRequired"):
            self.auth_failed = True

    def ok(self, kind: str, account: str | None, snap: Snapshot | None) -> None:
        o = self.outcomes.setdefault(kind, Outcome())
        if snap is not None:
            self.snapshots.append(snap)
            o.snapshots += 1
        if account is not None and account not in o.accounts:
            o.accounts[account] = "ok"

    @property
    def status(self) -> str:
        states = [o.status for o in self.outcomes.values()]
        if not states or all(s != "failed" for s in states):
            return "ok"
        if all(s == "failed" for s in states):
            return "failed"
        return "partial"

    @property
    def error(self) -> str | None:
        errors = [f"{k}: {o.error}" for k, o in self.outcomes.items() if o.status == "failed"]
        return "; ".join(errors) if errors else None


@dataclass
class Attempt:
    """The result of one task: a value or the fetch error."""

    value: Any = None
    error: FetchError | None = None


def content_hash(body: dict[str, Any] | bytes) -> str:
    raw = body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Fetcher:
    """Fetches kinds from a broker client; remembers accounts, symbols and order watermarks."""

    def __init__(self, client: BrokerClient, cache: InstrumentCache, concurrency: int = 6,
                 check_shapes: bool = True) -> None:
        self.client = client
        self.check_shapes = check_shapes
        self.cache = cache
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(concurrency, "fetch") if concurrency > 1 else None
        self.accounts: list[str] = []
        self.watermarks: dict[tuple[str, str], str] = {}
        self.symbols: list[str] = []  # last known held symbols (quotes when positions are not due)
        self.option_urls: dict[str, list[str]] = {}  # account -> option instrument URLs held

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- running tasks -------------------------------------------------------------------
    def _attempt(self, fn: Callable[[], T]) -> Attempt:
        try:
            return Attempt(fn())
        except FetchError as exc:
            return Attempt(error=exc)

    def _run(self, tasks: dict[Any, Callable[[], Any]]) -> dict[Any, Attempt]:
        if not tasks:
            return {}
        if self.pool is None or len(tasks) == 1:
            return {k: self._attempt(fn) for k, fn in tasks.items()}
        futures = {k: self.pool.submit(self._attempt, fn) for k, fn in tasks.items()}
        return {k: f.result() for k, f in futures.items()}

    # ---- the cycle -----------------------------------------------------------------------
    def run(self, kinds: Iterable[str]) -> CycleResult:
        kinds = set(kinds)
        client = self.client
        client.take_calls()
        result = CycleResult(started_at=client.transport.now(), source=client.source, kinds=kinds)
        try:
            self._cycle(kinds, result)
        except Exception as exc:  # a response shaped so oddly that our code tripped on it
            log.exception("cycle failed on an unexpected response")
            err = FetchError(f"internal error on an unexpected response: {type(exc).__name__}: {exc}")
            result.snapshots.clear()
            for kind in kinds:
                if result.outcomes.get(kind, Outcome()).status != "failed":
                    result.outcomes[kind] = Outcome()
                    result.fail(kind, None, err)
        finally:
            result.finished_at = client.transport.now()
            result.broker_calls = client.take_calls()
            result.clock_drift = client.clock_drift
        return result

    def _cycle(self, kinds: set[str], result: CycleResult) -> None:
        per_account = kinds & set(PER_ACCOUNT)
        accounts_attempt: Attempt | None = None
        if not self.accounts and per_account:
            accounts_attempt = self._attempt(self._fetch_accounts)
            if accounts_attempt.error is not None:
                for kind in sorted(per_account):
                    result.fail(kind, None, accounts_attempt.error)
                per_account = set()
                kinds = kinds - set(PER_ACCOUNT)

        # wave 1: lists and per-account pages
        tasks: dict[Any, Callable[[], Any]] = {}
        if ev.ACCOUNT in kinds and accounts_attempt is None:
            tasks["accounts"] = self._fetch_accounts
        if ev.PORTFOLIO in kinds:
            tasks["portfolios"] = lambda: self.client.get_pages(PORTFOLIOS_URL)
        for acct in self.accounts:
            if ev.STOCK_POSITIONS in kinds:
                tasks[(ev.STOCK_POSITIONS, acct)] = _bind(
                    self.client.get_pages, POSITIONS_URL, {"account_number": acct, "nonzero": "true"})
            if ev.OPTION_POSITIONS in kinds:
                tasks[(ev.OPTION_POSITIONS, acct)] = _bind(
                    self.client.get_pages, OPTION_POSITIONS_URL,
                    {"account_numbers": acct, "nonzero": "True"})
            for kind, url in ((ev.STOCK_ORDERS, ORDERS_URL), (ev.OPTION_ORDERS, OPTION_ORDERS_URL)):
                if kind in kinds:
                    params = {"account_numbers": acct}
                    since = self.watermarks.get((acct, kind))
                    if since:
                        params["updated_at[gte]"] = since
                    tasks[(kind, acct)] = _bind(self.client.get_pages, url, params)
        wave1 = self._run(tasks)
        if accounts_attempt is not None:
            wave1["accounts"] = accounts_attempt

        # the account kind
        if ev.ACCOUNT in kinds:
            self._account_snapshots(wave1["accounts"], result)

        # portfolios: one list request; per-account requests for accounts it lacks
        if ev.PORTFOLIO in kinds:
            self._portfolio_snapshots(wave1["portfolios"], result)

        # wave 2: instruments the cache lacks
        stock_urls: set[str] = set()
        option_urls: set[str] = set()
        for (key, attempt) in wave1.items():
            if not isinstance(key, tuple) or attempt.error is not None:
                continue
            kind = key[0]
            items = _items(attempt.value)
            if kind in (ev.STOCK_POSITIONS, ev.STOCK_ORDERS):
                stock_urls |= {i["instrument"] for i in items if isinstance(i.get("instrument"), str)}
            elif kind == ev.OPTION_POSITIONS:
                option_urls |= {leg["option"] for i in items for leg in i.get("legs") or []
                                if isinstance(leg, dict) and isinstance(leg.get("option"), str)}
        inst_tasks: dict[Any, Callable[[], Any]] = {}
        for ikind, urls, base in (("stock", self.cache.missing(stock_urls), INSTRUMENTS_URL),
                                  ("option", self.cache.missing(option_urls), OPTION_INSTRUMENTS_URL)):
            if urls:
                inst_tasks[ikind] = _bind(self._instruments, base, urls)
        failed_instruments: dict[str, FetchError] = {}
        for ikind, attempt in self._run(inst_tasks).items():
            found, failed = attempt.value if attempt.error is None else ({}, {})
            if attempt.error is not None:
                failed = dict.fromkeys(self.cache.missing(stock_urls if ikind == "stock" else option_urls),
                                       attempt.error)
            failed_instruments.update(failed)
            endpoint = "instruments" if ikind == "stock" else "option_instruments"
            self._drift(result, endpoint, found.values())
            for url, item in found.items():
                self.cache.put(url, ikind, item, result.started_at)

        # symbols held, for quotes
        if ev.STOCK_POSITIONS in kinds or ev.OPTION_POSITIONS in kinds:
            symbols = set(self.symbols) if (kinds & {ev.STOCK_POSITIONS, ev.OPTION_POSITIONS}) != \
                {ev.STOCK_POSITIONS, ev.OPTION_POSITIONS} else set()
            complete = True
            for acct in self.accounts:
                for kind in (ev.STOCK_POSITIONS, ev.OPTION_POSITIONS):
                    got = wave1.get((kind, acct))
                    if got is None:
                        continue
                    if got.error is not None:
                        complete = False
                        continue
                    for item in _items(got.value):
                        if kind == ev.STOCK_POSITIONS:
                            sym = self.cache.symbol(str(item.get("instrument")))
                        else:
                            sym = item.get("symbol") if isinstance(item.get("symbol"), str) else None
                        if sym:
                            symbols.add(sym)
            if not complete:
                symbols |= set(self.symbols)  # keep quoting what we may still hold
            self.symbols = sorted(symbols)

        # wave 3: quotes and option market data, batched
        md_urls: list[str] = []
        for acct in self.accounts:
            held = wave1.get((ev.OPTION_POSITIONS, acct))
            if held is not None and held.error is None:
                urls = sorted({leg["option"] for i in _items(held.value) for leg in i.get("legs") or []
                               if isinstance(leg, dict) and isinstance(leg.get("option"), str)})
                self.option_urls[acct] = urls
                md_urls.extend(u for u in urls if u not in md_urls)
        tasks = {}
        if ev.QUOTES in kinds and self.symbols:
            tasks["quotes"] = _bind(self._batched, QUOTES_URL, "symbols", self.symbols, QUOTE_BATCH)
        if md_urls:
            tasks["marketdata"] = _bind(self._batched, OPTION_MARKETDATA_URL, "instruments", md_urls,
                                        OPTION_BATCH)
        wave3 = self._run(tasks)

        if ev.QUOTES in kinds:
            positions_failed = any(
                o.status == "failed" for k, o in result.outcomes.items()
                if k in (ev.STOCK_POSITIONS, ev.OPTION_POSITIONS, ev.ACCOUNT)) or (
                per_account & {ev.STOCK_POSITIONS, ev.OPTION_POSITIONS} and any(
                    a.error is not None for k, a in wave1.items()
                    if isinstance(k, tuple) and k[0] in (ev.STOCK_POSITIONS, ev.OPTION_POSITIONS)))
            if "quotes" not in wave3 and not self.symbols and positions_failed:
                result.fail(ev.QUOTES, None, FetchError("held symbols unknown: the positions fetch failed"))
            else:
                self._quotes_snapshot(wave3.get("quotes"), result)
        for acct in self.accounts:
            self._positions_snapshot(acct, wave1.get((ev.STOCK_POSITIONS, acct)), failed_instruments, result)
            self._option_positions_snapshot(acct, wave1.get((ev.OPTION_POSITIONS, acct)),
                                            wave3.get("marketdata"), failed_instruments, result)
            for kind in (ev.STOCK_ORDERS, ev.OPTION_ORDERS):
                self._orders_snapshot(kind, acct, wave1.get((kind, acct)), failed_instruments, result)

    # ---- fetch helpers -------------------------------------------------------------------
    def _fetch_accounts(self) -> list[dict[str, Any]]:
        pages = self.client.get_pages(ACCOUNTS_URL, {"default_to_all_accounts": "true"})
        numbers = [a["account_number"] for a in _items(pages)
                   if isinstance(a.get("account_number"), str) and not a.get("deactivated")]
        if not numbers:
            raise FetchError("the broker listed no active account", 200, ACCOUNTS_URL)
        if numbers != self.accounts:
            log.info("broker accounts: %s", ", ".join(numbers))
            self.accounts = numbers
        return pages

    def _instruments(self, base: str, urls: list[str]
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, FetchError]]:
        """Instruments by URL: batched ``?ids=`` lookups, one by one for whatever a batch lacks.

        A batch answer is used only when it is exactly what was asked (every result one of the
        requested URLs, no further page); otherwise, e.g. if the endpoint ignored ``ids`` and
        listed everything, the lookups fall back to ``{base}{id}/`` one at a time.
        """
        found: dict[str, dict[str, Any]] = {}
        failed: dict[str, FetchError] = {}
        wanted = set(urls)
        if len(urls) > 1:
            for start in range(0, len(urls), INSTRUMENT_BATCH):
                chunk = urls[start:start + INSTRUMENT_BATCH]
                ids = [u.rstrip("/").rsplit("/", 1)[-1] for u in chunk]
                try:
                    page = self.client.get_object(base, {"ids": ",".join(ids)})
                except FetchError as exc:
                    if exc.status not in (400, 404):
                        raise
                    break  # the endpoint does not take ids: one by one
                items = page.get("results")
                if page.get("next") or not isinstance(items, list) or not all(
                        isinstance(i, dict) and i.get("url") in wanted for i in items):
                    log.warning("%s?ids= answered more than was asked; looking instruments up one by one",
                                base)
                    break
                found.update({i["url"]: i for i in items})
        for url in urls:
            if url not in found:
                try:
                    found[url] = self.client.get_object(url)
                except FetchError as exc:
                    failed[url] = exc
        return found, failed

    def _batched(self, url: str, param: str, values: list[str], size: int) -> list[dict[str, Any]]:
        pages: list[dict[str, Any]] = []
        for start in range(0, len(values), size):
            pages.extend(self.client.get_pages(url, {param: ",".join(values[start:start + size])}))
        return pages

    def _drift(self, result: CycleResult, endpoint: str, items: Iterable[Any]) -> None:
        if not self.check_shapes:
            return
        missing = missing_fields(endpoint, items)
        if missing:
            known = result.shape_drift.setdefault(endpoint, [])
            result.shape_drift[endpoint] = sorted(set(known) | set(missing))

    def _malformed(self, kind: str, account: str, exc: FetchError, result: CycleResult) -> None:
        """A body that is not JSON: the kind fails, and the body is kept verbatim (raw_body)."""
        result.fail(kind, account, exc)
        if isinstance(exc, Malformed) and exc.body:
            try:
                orjson.loads(exc.body)
            except orjson.JSONDecodeError:
                result.snapshots.append(Snapshot(account, kind, exc.body, result.started_at))
                result.outcomes[kind].snapshots += 1

    def _fail(self, kind: str, account: str, exc: FetchError, result: CycleResult) -> None:
        if isinstance(exc, Malformed):
            self._malformed(kind, account, exc, result)
        else:
            result.fail(kind, account, exc)

    # ---- snapshot builders ---------------------------------------------------------------
    def _account_snapshots(self, attempt: Attempt, result: CycleResult) -> None:
        if attempt.error is not None:
            self._fail(ev.ACCOUNT, "*", attempt.error, result)
            return
        items = _items(attempt.value)
        self._drift(result, "accounts", items)
        for item in items:
            number = item.get("account_number")
            if number in self.accounts:
                result.ok(ev.ACCOUNT, number, Snapshot(number, ev.ACCOUNT, envelope(account=item),
                                                       result.started_at))

    def _portfolio_snapshots(self, attempt: Attempt, result: CycleResult) -> None:
        found: dict[str, dict[str, Any]] = {}
        if attempt.error is None:
            for item in _items(attempt.value):
                number = str(item.get("account", "")).rstrip("/").rsplit("/", 1)[-1]
                if number in self.accounts:
                    found[number] = item
        else:
            log.debug("portfolio list failed (%s); asking per account", attempt.error)
        lacking = [a for a in self.accounts if a not in found]
        extra = self._run({a: _bind(self.client.get_object, f"{PORTFOLIOS_URL}{a}/") for a in lacking})
        for acct in self.accounts:
            if acct in found:
                item = found[acct]
            elif extra[acct].error is not None:
                self._fail(ev.PORTFOLIO, acct, extra[acct].error, result)  # type: ignore[arg-type]
                continue
            else:
                item = extra[acct].value
            self._drift(result, "portfolios", [item])
            result.ok(ev.PORTFOLIO, acct, Snapshot(acct, ev.PORTFOLIO, envelope(portfolio=item),
                                                   result.started_at))

    def _instruments_for(self, urls: Iterable[str], failed: dict[str, FetchError]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for url in sorted(set(urls)):
            if url in failed:
                raise FetchError(f"instrument lookup failed: {failed[url]}", failed[url].status, url)
            item = self.cache.get(url)
            if item is None:
                raise FetchError("instrument missing from the cache", None, url)
            out[url] = item
        return out

    def _positions_snapshot(self, acct: str, attempt: Attempt | None,
                            failed: dict[str, FetchError], result: CycleResult) -> None:
        if attempt is None:
            return
        if attempt.error is not None:
            self._fail(ev.STOCK_POSITIONS, acct, attempt.error, result)
            return
        items = _items(attempt.value)
        self._drift(result, "positions", items)
        try:
            instruments = self._instruments_for(
                (i["instrument"] for i in items if isinstance(i.get("instrument"), str)), failed)
        except FetchError as exc:
            result.fail(ev.STOCK_POSITIONS, acct, exc)
            return
        result.ok(ev.STOCK_POSITIONS, acct, Snapshot(
            acct, ev.STOCK_POSITIONS, envelope(positions=attempt.value, instruments=instruments),
            result.started_at))

    def _option_positions_snapshot(self, acct: str, attempt: Attempt | None, marketdata: Attempt | None,
                                   failed: dict[str, FetchError], result: CycleResult) -> None:
        if attempt is None:
            return
        if attempt.error is not None:
            self._fail(ev.OPTION_POSITIONS, acct, attempt.error, result)
            return
        items = _items(attempt.value)
        self._drift(result, "option_positions", items)
        urls = self.option_urls.get(acct, [])
        md_pages: list[dict[str, Any]] = []
        if urls:
            if marketdata is None or marketdata.error is not None:
                err = marketdata.error if marketdata is not None else FetchError("no market data")
                self._fail(ev.OPTION_POSITIONS, acct, err, result)  # type: ignore[arg-type]
                return
            md_pages = marketdata.value
            self._drift(result, "option_marketdata", [m for m in _items(md_pages) if m is not None])
        try:
            instruments = self._instruments_for(urls, failed)
        except FetchError as exc:
            result.fail(ev.OPTION_POSITIONS, acct, exc)
            return
        result.ok(ev.OPTION_POSITIONS, acct, Snapshot(
            acct, ev.OPTION_POSITIONS,
            envelope(positions=attempt.value, instruments=instruments, marketdata=md_pages),
            result.started_at))

    def _quotes_snapshot(self, attempt: Attempt | None, result: CycleResult) -> None:
        if attempt is None:  # nothing held: nothing to quote
            result.outcomes.setdefault(ev.QUOTES, Outcome())
            return
        if attempt.error is not None:
            self._fail(ev.QUOTES, QUOTES_ACCOUNT, attempt.error, result)
            return
        self._drift(result, "quotes", [q for q in _items(attempt.value) if q is not None])
        result.ok(ev.QUOTES, None, Snapshot(QUOTES_ACCOUNT, ev.QUOTES, envelope(quotes=attempt.value),
                                            result.started_at))

    def _orders_snapshot(self, kind: str, acct: str, attempt: Attempt | None,
                         failed: dict[str, FetchError], result: CycleResult) -> None:
        if attempt is None:
            return
        if attempt.error is not None:
            self._fail(kind, acct, attempt.error, result)
            return
        items = _items(attempt.value)
        self._drift(result, kind, items)
        body: dict[str, Any]
        if kind == ev.STOCK_ORDERS:
            try:
                instruments = self._instruments_for(
                    (i["instrument"] for i in items if isinstance(i.get("instrument"), str)), failed)
            except FetchError as exc:
                result.fail(kind, acct, exc)
                return
            body = envelope(orders=attempt.value, instruments=instruments)
        else:
            body = envelope(orders=attempt.value)
        stamps = [i["updated_at"] for i in items if isinstance(i.get("updated_at"), str)]
        if stamps:
            result.watermarks[(acct, kind)] = max(stamps)
        result.ok(kind, acct, Snapshot(acct, kind, body, result.started_at))


def _bind(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    return lambda: fn(*args)


def _items(pages: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in pages or []:
        out.extend(i for i in page.get("results") or [] if isinstance(i, dict))
    return out

"""Pure helpers that turn Robinhood's raw JSON into typed values, shared by the consumers.

Robinhood sends every number as a string ("12.3400", "-0.0312") and every time as ISO 8601 with
a ``Z``. The consumers keep money exact (``Decimal``, stored as ``numeric``) and never guess: a
required field that is missing or unparsable raises :class:`schema.payloads.PayloadError`, so the
runtime retries the event and then dead-letters it instead of silently writing a wrong row.

Day boundary: a "market day" is the calendar date in ``America/New_York`` (the US equity market's
time zone, DST included), so 00:30 UTC on 2026-03-10 belongs to 2026-03-09.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from schema.payloads import PayloadError

MARKET_TZ = ZoneInfo("America/New_York")


def require(obj: Mapping[str, Any], key: str, what: str = "object") -> Any:
    """``obj[key]``, or :class:`PayloadError` naming the missing field."""
    if not isinstance(obj, Mapping):
        raise PayloadError(f"{what} is not a JSON object")
    if key not in obj or obj[key] is None:
        raise PayloadError(f"{what} has no {key!r}")
    return obj[key]


def dec(value: Any, field: str = "value") -> Decimal:
    """A required number: Robinhood's string (or a JSON number) as an exact ``Decimal``."""
    if value is None or isinstance(value, bool) or value == "":
        raise PayloadError(f"{field} is missing")
    try:
        d = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        raise PayloadError(f"{field} is not a number: {value!r:.40}") from None
    if not d.is_finite():
        raise PayloadError(f"{field} is not a finite number: {value!r:.40}")
    return d


def opt_dec(value: Any, field: str = "value") -> Decimal | None:
    """An optional number (``None``/``""`` -> ``None``), e.g. Greeks that Robinhood may null."""
    if value is None or value == "":
        return None
    return dec(value, field)


def ts(value: Any, field: str = "timestamp") -> datetime:
    """A required ISO 8601 timestamp with a zone (``...Z`` or ``+00:00``)."""
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{field} is missing or not a string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(f"{field} is not an ISO timestamp: {value!r:.40}") from None
    if t.tzinfo is None:
        raise PayloadError(f"{field} has no time zone: {value!r:.40}")
    return t


def day(value: Any, field: str = "date") -> date:
    """A required ``YYYY-MM-DD`` date (option expirations, settlement dates)."""
    if not isinstance(value, str):
        raise PayloadError(f"{field} is missing or not a string")
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise PayloadError(f"{field} is not a date: {value!r:.40}") from None


def market_day(t: datetime) -> date:
    """The US market day of an instant: its calendar date in America/New_York."""
    return t.astimezone(MARKET_TZ).date()


def id_from_url(url: Any, field: str = "url") -> str:
    """The trailing id of a Robinhood resource URL (``.../instruments/<id>/`` -> ``<id>``)."""
    if not isinstance(url, str) or not url.strip("/"):
        raise PayloadError(f"{field} is missing or not a URL")
    return url.rstrip("/").rsplit("/", 1)[-1]


def content_hash(value: Any) -> str:
    """A stable hash of JSON content (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def envelope_of(event_payload: Any, raw_body: str | None) -> Any:
    """The event's JSON payload; a body that was not JSON at all is a :class:`PayloadError`."""
    if event_payload is None:
        preview = (raw_body or "")[:60]
        raise PayloadError(f"snapshot body is not JSON: {preview!r}")
    return event_payload

"""The shape of a snapshot's payload: the contract between the producer and the consumers.

A snapshot row holds one fetch of one kind for one account. Its ``payload`` is an envelope of
the broker's raw responses, each kept exactly as the broker returned it (field names and
string-typed numbers untouched; for paginated endpoints, every page in order)::

    {"v": 1, "responses": {"<response name>": <raw JSON>, ...}}

Paginated responses are a list of the raw pages (``[{"next": ..., "results": [...]}, ...]``);
single-object responses are the raw object. Both the simulated broker and the Robinhood adapter
write exactly these shapes, so a consumer cannot tell them apart.

===================  ========================  ============================================================
kind                 account column            responses
===================  ========================  ============================================================
stock_positions      account number            ``positions``: pages of ``/positions/?nonzero=true``;
                                               ``instruments``: {instrument URL: raw ``/instruments/{id}/``}
option_positions     account number            ``positions``: pages of ``/options/aggregate_positions/``
                                               (nonzero); ``instruments``: {option URL: raw
                                               ``/options/instruments/{id}/``}; ``marketdata``: pages of
                                               ``/marketdata/options/?instruments=...`` (Greeks, mark;
                                               Greeks may be null)
quotes               ``*`` (market data)       ``quotes``: pages of ``/marketdata/quotes/?symbols=...``
account              account number            ``account``: raw ``/accounts/{number}/``
portfolio            account number            ``portfolio``: raw ``/portfolios/{number}/``
stock_orders         account number            ``orders``: pages of ``/orders/?updated_at[gte]=...``
                                               (incremental: orders updated since the previous fetch);
                                               ``instruments``: {instrument URL: raw instrument}
option_orders        account number            ``orders``: pages of ``/options/orders/?updated_at[gte]=...``
                                               (incremental, legs with executions)
===================  ========================  ============================================================

A positions snapshot is the full state of that account; an orders snapshot is a delta (every
order updated since the previous fetch, with all its executions), so order consumers dedupe by
execution id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

VERSION = 1
QUOTES_ACCOUNT = "*"


def envelope(**responses: Any) -> dict[str, Any]:
    return {"v": VERSION, "responses": responses}


class PayloadError(ValueError):
    """The snapshot's payload does not have the documented shape."""


def response(payload: Any, name: str) -> Any:
    """One raw response of an envelope; :class:`PayloadError` when missing."""
    if not isinstance(payload, dict) or not isinstance(payload.get("responses"), dict):
        raise PayloadError("payload is not a snapshot envelope ({'v': 1, 'responses': {...}})")
    if name not in payload["responses"]:
        raise PayloadError(f"payload has no {name!r} response")
    return payload["responses"][name]


def results(payload: Any, name: str) -> Iterator[dict[str, Any]]:
    """Every result object across the pages of a paginated response."""
    pages = response(payload, name)
    if not isinstance(pages, list):
        raise PayloadError(f"{name!r} is not a list of pages")
    for page in pages:
        if not isinstance(page, dict) or not isinstance(page.get("results"), list):
            raise PayloadError(f"a page of {name!r} has no results list")
        for item in page["results"]:
            if not isinstance(item, dict):
                raise PayloadError(f"a result of {name!r} is not an object")
            yield item

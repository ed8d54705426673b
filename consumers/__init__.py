"""Consumers: each applies the event log to its own tables, as its own process.

``REGISTRY`` maps a consumer's name to the module that exports ``CONSUMER``
(a :class:`consumers.runtime.Consumer`). ``brokersync consumer NAME`` also accepts
``package.module:ATTRIBUTE`` for a consumer defined outside this package.
"""

from __future__ import annotations

import importlib

from brokersync.errors import UnknownConsumer
from consumers.runtime import Consumer

# name -> "module:attribute"; the built-in consumers land here (see the consumers issue).
REGISTRY: dict[str, str] = {
    "positions": "consumers.positions:CONSUMER",
    "balances": "consumers.balances:CONSUMER",
    "trade_history": "consumers.trades:CONSUMER",
    "cache_invalidation": "consumers.cache:CONSUMER",
    "notifications": "consumers.notifications:CONSUMER",
}


def names() -> list[str]:
    return list(REGISTRY)


def load(name_or_spec: str) -> Consumer:
    spec = REGISTRY.get(name_or_spec, name_or_spec if ":" in name_or_spec else None)
    if spec is None:
        known = ", ".join(REGISTRY) or "none yet"
        raise UnknownConsumer(f"no consumer named {name_or_spec!r} (known: {known})")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownConsumer(f"cannot import {module_name!r} for consumer {name_or_spec!r}: {exc}") from None
    consumer = getattr(module, attr or "CONSUMER", None)
    if not isinstance(consumer, Consumer):
        raise UnknownConsumer(f"{spec!r} is not a consumers.runtime.Consumer")
    return consumer

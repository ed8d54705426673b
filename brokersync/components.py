"""The one registry of runnable components: what `brokersync up` supervises and what the
NSSM and systemd service files are generated from (`brokersync services render`).

Every component is `python -m brokersync <args>`; nothing calls another component directly.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    name: str  # service-safe name: producer, consumer-positions, worker
    args: tuple[str, ...]  # arguments after `brokersync`
    description: str
    # The dramatiq worker forks child processes: systemd should signal only the main one
    # first (KillMode=mixed) so it can drain them.
    kill_mode_mixed: bool = False


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def components() -> list[Component]:
    """Every component that exists in this checkout, producer first."""
    import consumers

    out: list[Component] = []
    if _has("producer.main"):
        out.append(
            Component("producer", ("producer",), "Polls the broker on schedule into the event log")
        )
    for name in consumers.names():
        consumer = consumers.load(name)
        out.append(
            Component(
                f"consumer-{name}",
                ("consumer", name),
                consumer.description or f"Applies the event log to the {name} tables",
            )
        )
    if _has("consumers.worker"):
        out.append(
            Component(
                "worker",
                ("worker",),
                "Delivers notifications (dramatiq worker on the PostgreSQL broker)",
                kill_mode_mixed=True,
            )
        )
    return out


def by_name(name: str) -> Component:
    for c in components():
        if c.name == name:
            return c
    raise KeyError(name)

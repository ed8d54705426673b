"""Run a custom list of components under the supervisor `brokersync up` uses.

``python -m tests.support.supervise NAME=ARG[,ARG...] ...`` starts each ``NAME`` as
``python -m brokersync ARG ARG`` with :class:`brokersync.supervisor.Supervisor`, exactly as
``brokersync up`` (``make run``) does for the registry, until SIGINT/SIGTERM. Tests use it to
supervise test consumers that are not in the registry.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from brokersync.components import Component
from brokersync.signals import install_stop_handlers
from brokersync.supervisor import Supervisor, child_env


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s: %(message)s")
    items = []
    for spec in argv:
        name, _, args = spec.partition("=")
        items.append(Component(name, tuple(args.split(",")), f"test component {name}"))
    stop = threading.Event()
    install_stop_handlers(stop)
    return Supervisor(items, child_env(os.environ["BROKERSYNC_DATABASE_URL"]), stop).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

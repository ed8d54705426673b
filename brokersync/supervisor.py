"""`brokersync up`: run every component as its own process, restart the one that crashes.

The same isolation the OS services give (NSSM on Windows, systemd on Linux), for development
and `make run`: a component that exits unexpectedly is restarted with backoff while the others
keep running; one that exits with 78 (configuration error) is not restarted; Ctrl+C stops them
all gracefully (SIGINT on POSIX, CTRL_BREAK on Windows), then kills what is left.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from brokersync.components import Component
from brokersync.exitcodes import RET_CONFIG, RET_OK, RET_USAGE

log = logging.getLogger("brokersync.up")

STOP_GRACE = 15.0  # seconds each component gets to drain before it is killed
STABLE_AFTER = 60.0  # a component that ran this long gets its backoff reset
# Exit codes that a restart cannot fix.
NO_RESTART = {RET_CONFIG: "configuration error", RET_USAGE: "bad command line"}
WINDOWS = sys.platform == "win32"


@dataclass
class Child:
    component: Component
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    given_up: bool = False
    backoff: float = 1.0


class Supervisor:
    def __init__(
        self,
        components: Sequence[Component],
        env: dict[str, str],
        stop: threading.Event,
        *,
        max_backoff: float = 30.0,
        first_backoff: float = 1.0,
    ) -> None:
        self.children = [Child(c, backoff=first_backoff) for c in components]
        self.env = env
        self.stop = stop
        self.max_backoff = max_backoff
        self.first_backoff = first_backoff

    def _spawn(self, child: Child) -> None:
        cmd = [sys.executable, "-m", "brokersync", *child.component.args]
        kwargs: dict[str, object] = {}
        if WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # the terminal's Ctrl+C reaches only us; we forward
        child.proc = subprocess.Popen(cmd, env=self.env, **kwargs)  # type: ignore[call-overload]
        child.started = time.monotonic()
        log.info("started %s (pid %d)", child.component.name, child.proc.pid)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.shutdown()  # whatever happened, never leave children behind

    def _run(self) -> int:
        for child in self.children:
            self._spawn(child)
        while not self.stop.wait(0.2):
            if self.children and all(c.given_up for c in self.children):
                log.error("every component has given up; stopping")
                break
            now = time.monotonic()
            for child in self.children:
                if child.given_up:
                    continue
                if child.proc is None:
                    if now >= child.next_start:
                        child.restarts += 1
                        self._spawn(child)
                    continue
                code = child.proc.poll()
                if code is None:
                    if now - child.started > STABLE_AFTER:
                        child.backoff = self.first_backoff
                    continue
                child.proc = None
                if code in NO_RESTART:
                    child.given_up = True
                    log.error(
                        "%s exited with code %d (%s); not restarting it. Fix it and run again.",
                        child.component.name, code, NO_RESTART[code],
                    )
                    continue
                delay = child.backoff
                child.backoff = min(self.max_backoff, child.backoff * 2)
                child.next_start = now + delay
                log.warning(
                    "%s exited with code %s; restarting in %.1fs", child.component.name, code, delay
                )
        return RET_CONFIG if any(c.given_up for c in self.children) else RET_OK

    def shutdown(self) -> None:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            try:
                if WINDOWS:
                    child.proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                else:
                    child.proc.send_signal(signal.SIGINT)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for child in running:
            assert child.proc is not None
            try:
                code = child.proc.wait(max(0.1, deadline - time.monotonic()))
                log.info("%s stopped (exit %s)", child.component.name, code)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.component.name, STOP_GRACE)
                child.proc.kill()
                child.proc.wait()


def child_env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BROKERSYNC_DATABASE_URL"] = database_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONUTF8", "1")
    return env

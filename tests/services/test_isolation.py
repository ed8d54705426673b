"""Failure isolation, for real: SIGKILL one supervised consumer; the others go on, it comes back.

Three consumers run as separate processes under :class:`brokersync.supervisor.Supervisor`, the
supervision `brokersync up` (`make run`) uses, and that the OS services mirror.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.conftest import ROOT
from tests.support import events

WINDOWS = sys.platform == "win32"
CONSUMERS = {
    "consumer-ledger": ("tests.support.ledger:CONSUMER", "ledger", "test_ledger", "test_totals"),
    "consumer-journal-a": ("tests.support.journal:JOURNAL_A", "journal-a", "test_journal_a",
                           "test_journal_a_sums"),
    "consumer-journal-b": ("tests.support.journal:JOURNAL_B", "journal-b", "test_journal_b",
                           "test_journal_b_sums"),
}
VICTIM = "consumer-journal-a"


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class Output:
    """Collects a process's output lines on a thread (so its pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def close(self, proc: subprocess.Popen[str]) -> None:
        self._thread.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()

    def text(self) -> str:
        return "\n".join(self.lines)

    def pids(self, name: str) -> list[int]:
        return [int(m.group(1)) for line in list(self.lines)
                if (m := re.search(rf"started {re.escape(name)} \(pid (\d+)\)", line))]


def count(conn: psycopg.Connection[Any], table: str) -> int:
    try:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # test table names only
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def totals(conn: psycopg.Connection[Any], table: str) -> dict[str, int]:
    return {k: int(t) for k, t in conn.execute(f"SELECT key, total FROM {table}").fetchall()}


def rows_are(conn: psycopg.Connection[Any], table: str, n: int) -> Callable[[], bool]:
    return lambda: count(conn, table) == n


def hard_kill(pid: int) -> None:
    """SIGKILL on POSIX; on Windows os.kill with SIGTERM is TerminateProcess (exit code 15)."""
    os.kill(pid, signal.SIGTERM if WINDOWS else signal.SIGKILL)


def interrupt(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGINT)  # type: ignore[attr-defined]


def payloads(start: int, n: int) -> list[dict[str, Any]]:
    return [{"key": f"k{i % 5}", "amount": i} for i in range(start, start + n)]


def test_sigkill_one_consumer_the_others_keep_going_and_it_catches_up(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    first, second = payloads(0, 40), payloads(40, 60)
    events.insert_many(conn, first)

    specs = [f"{name}=consumer,{spec[0]}" for name, spec in CONSUMERS.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.supervise", *specs],
        env=cli_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        creationflags=subprocess.CREATE_NEW_PROCESS_GROUP if WINDOWS else 0,  # type: ignore[attr-defined]
    )
    out = Output(proc)
    try:
        for _, _, table, _ in CONSUMERS.values():
            wait_for(rows_are(conn, table, len(first)), f"{table} to apply the first batch")
        first_pids = {name: out.pids(name) for name in CONSUMERS}
        assert all(len(p) == 1 for p in first_pids.values()), out.text()
        victim_pid = first_pids[VICTIM][0]

        hard_kill(victim_pid)
        events.insert_many(conn, second)  # while the victim is dead or restarting
        total = len(first) + len(second)

        # The others keep processing, in the same processes (never restarted).
        for name, (_, _, table, _) in CONSUMERS.items():
            if name != VICTIM:
                wait_for(rows_are(conn, table, total), f"{name} to apply the second batch")
                assert out.pids(name) == first_pids[name], out.text()

        # The victim is restarted by the supervisor, as a new process, and catches up.
        restarted = wait_for(lambda: len(out.pids(VICTIM)) >= 2 and out.pids(VICTIM), "the restart")
        assert restarted[0] == victim_pid and restarted[1] != victim_pid
        wait_for(rows_are(conn, "test_journal_a", total), "the victim to catch up")
        assert re.search(rf"{VICTIM} exited with code (-9|15); restarting", out.text()), out.text()

        # Exactly once each: the totals (not idempotent on purpose) match the events.
        expected: dict[str, int] = {}
        for p in first + second:
            expected[p["key"]] = expected.get(p["key"], 0) + p["amount"]
        for _, _, _, sums in CONSUMERS.values():
            assert totals(conn, sums) == expected, sums
        lag = dict(conn.execute("SELECT consumer, events_behind FROM consumer_lag").fetchall())
        assert {n: lag[spec[1]] for n, spec in CONSUMERS.items()} == dict.fromkeys(CONSUMERS, 0)

        interrupt(proc)  # graceful stop of everything
        assert proc.wait(timeout=40) == 0, out.text()
    finally:
        if proc.poll() is None:
            interrupt(proc)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                for name in CONSUMERS:  # children run in their own sessions
                    for pid in out.pids(name):
                        with contextlib.suppress(OSError):
                            hard_kill(pid)
        out.close(proc)

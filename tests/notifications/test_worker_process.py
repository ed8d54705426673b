"""`brokersync worker` and `brokersync consumer notifications` as real processes."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from typing import Any

import psycopg

from schema import eventlog
from tests.conftest import run_cli, start_cli
from tests.notifications import payloads as rh
from tests.notifications.servers import http_sink
from tests.notifications.support import deliveries, queued_messages
from tests.support.wait import wait_until


def stop(proc: subprocess.Popen[str], timeout: float = 20) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def output(proc: subprocess.Popen[str]) -> str:
    return proc.stdout.read() if proc.stdout else ""


def sent(conn: psycopg.Connection[Any]) -> list[str]:
    return [d["dedupe_key"] for d in deliveries(conn) if d["status"] == "sent"]


def test_consumer_and_worker_processes_deliver_and_stop_on_sigint(conn, cli_env, tmp_path):
    with http_sink() as server:
        env = dict(cli_env, BROKERSYNC_NOTIFY_SINKS="log,webhook",
                   BROKERSYNC_NOTIFY_WEBHOOK_URL=server.url + "/hook",
                   BROKERSYNC_NOTIFY_LOG_PATH=str(tmp_path / "sent.jsonl"))
        consumer = start_cli(["consumer", "notifications"], env)
        worker = start_cli(["worker"], env)
        try:
            rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("10", "150"), "MSFT": ("1", "400")}))
            wait_until(lambda: len(sent(conn)) == 4, timeout=30, what="4 deliveries sent")
        finally:
            code_c, code_w = stop(consumer), stop(worker)
        out = output(worker)
        assert code_w == 0, out
        assert code_c == 0, output(consumer)
    assert sorted(b["subject"] for b in server.bodies()) == ["AAPL", "MSFT"]
    log_lines = (tmp_path / "sent.jsonl").read_text().splitlines()
    assert len(log_lines) == 2
    assert queued_messages(conn) == []
    assert "delivering notifications" in out and "stopped" in out


def test_a_worker_killed_mid_work_still_sends_each_message_once(conn, cli_env, db_url, tmp_path):
    """Kill -9 the worker while it is sending delivery A and holds B claimed (prefetched),
    with C still queued. After a restart B and C go out exactly once. A was in the middle of
    its HTTP exchange when the worker died (crash window 4 in consumers/delivery.py): it is
    sent again, with the same Idempotency-Key, so the receiver can tell."""
    import threading

    from consumers import notifications
    from consumers.runtime import Runner
    from tests.notifications.support import make_settings
    from tests.support.runner import FAST

    hold = threading.Event()
    with http_sink(hold_first=hold) as server:
        settings = make_settings(tmp_path, notify_sinks="webhook", notify_webhook_url=server.url)
        rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions(
            {"AAPL": ("1", "1"), "MSFT": ("1", "1"), "TSLA": ("1", "1")}))
        Runner(notifications.build(settings), db_url, FAST, threading.Event(), exit_when_idle=True).run()
        assert len(queued_messages(conn)) == 3

        env = dict(cli_env, BROKERSYNC_NOTIFY_SINKS="webhook", BROKERSYNC_NOTIFY_WEBHOOK_URL=server.url,
                   BROKERSYNC_NOTIFY_WORKER_THREADS="1", BROKERSYNC_NOTIFY_WORKER_HEARTBEAT_TTL="2")
        first = start_cli(["worker"], env)
        try:
            assert server.first_arrived.wait(30), "the worker never sent"
            wait_until(lambda: [s for _, _, s in queued_messages(conn)].count("consumed") == 2,
                       timeout=10, what="A in hand and B prefetched")
        finally:
            first.kill()
            first.wait(10)
        hold.set()  # the receiver answers A, to a dead worker
        wait_until(lambda: conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'notification_deliveries' AND l.mode = 'RowShareLock')").fetchone()[0],
            timeout=10, what="the dead worker's transaction to end")
        assert sent(conn) == []  # nothing was marked: A's transaction died with the worker
        a_key = server.bodies()[0]["key"]

        second = start_cli(["worker"], env)
        try:
            wait_until(lambda: len(sent(conn)) == 3, timeout=40, what="all three sent after the restart")
        finally:
            code = stop(second)
        assert code == 0, output(second)

    counts = Counter(b["key"] for b in server.bodies())
    others = {k: n for k, n in counts.items() if k != a_key}
    assert len(others) == 2 and set(others.values()) == {1}, counts  # B and C: exactly once
    assert counts[a_key] == 2  # A: the documented in-flight window ...
    a_requests = [r for r in server.requests if r.body["key"] == a_key]
    assert len({r.headers["Idempotency-Key"] for r in a_requests}) == 1  # ... with one idempotency key
    assert [(d["status"], d["attempts"]) for d in deliveries(conn)] == [("sent", 1)] * 3
    assert queued_messages(conn) == []


def test_worker_config_error_exits_78_naming_the_variable(cli_env):
    env = dict(cli_env, BROKERSYNC_NOTIFY_SINKS="log,telegram",
               BROKERSYNC_NOTIFY_TELEGRAM_TOKEN="999:very-secret-token")
    r = run_cli(["worker"], env, timeout=30)
    assert r.returncode == 78, r.stderr
    assert "BROKERSYNC_NOTIFY_TELEGRAM_CHAT_ID" in r.stderr
    assert "very-secret-token" not in r.stderr + r.stdout
    r = run_cli(["consumer", "notifications"], env, timeout=30)
    assert r.returncode == 78, r.stderr
    assert "BROKERSYNC_NOTIFY_TELEGRAM_CHAT_ID" in r.stderr


def test_notify_test_sends_through_a_sink_now(cli_env):
    with http_sink() as server:
        env = dict(cli_env, BROKERSYNC_NOTIFY_SINKS="webhook", BROKERSYNC_NOTIFY_WEBHOOK_URL=server.url)
        r = run_cli(["notify", "test", "webhook"], env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "webhook: sent"
    [body] = server.bodies()
    assert body["title"] == "brokersync test notification"


def test_replay_command_rebuilds_and_sends_nothing_again(conn, cli_env):
    from tests.notifications.test_rules import state

    env = dict(cli_env, BROKERSYNC_NOTIFY_SINKS="log", BROKERSYNC_NOTIFY_BUYING_POWER_FLOOR="100")
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("1", "100")}))
    rh.put(conn, eventlog.ACCOUNT, rh.account("50"))
    rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": "130"}), account="*")
    first = run_cli(["replay", "notifications"], env)  # nothing applied yet: a first run
    assert first.returncode == 0, first.stderr
    live = (state(conn), deliveries(conn), queued_messages(conn))
    assert [d["rule"] for d in live[1]] == ["position_opened", "buying_power_low"]
    again = run_cli(["replay", "notifications"], env)
    assert again.returncode == 0, again.stderr
    assert "rebuilding from the first event; 3 events to apply" in again.stderr
    assert (state(conn), deliveries(conn), queued_messages(conn)) == live
    listed = run_cli(["notify", "list"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert "log      queued   x0 position_opened [5QR12345] Position opened: AAPL" in lines[0]
    assert "buying_power_low" in lines[1]

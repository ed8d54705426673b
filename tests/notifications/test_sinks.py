"""Each sink against a real local server; configuration errors name the variable."""

from __future__ import annotations

import orjson
import pytest

from brokersync.errors import ConfigError
from consumers.sinks import (
    EmailSink,
    LogSink,
    SinkError,
    TelegramSink,
    WebhookSink,
    build_sink,
    check_settings,
)
from tests.notifications.servers import http_sink, smtp_server
from tests.notifications.support import make_settings, outgoing

TOKEN = "123456:SECRET-telegram-token-value"


def test_webhook_posts_json_with_an_idempotency_key():
    with http_sink() as server:
        message = outgoing()
        WebhookSink(server.url + "/hook", timeout=5).send(message)
        WebhookSink(server.url + "/hook", timeout=5).send(message)
    assert len(server.requests) == 2
    first = server.requests[0]
    assert first.path == "/hook"
    assert first.body["key"] == "rule:acct:subject:1"
    assert first.body["rule"] == "position_opened"
    assert first.body["title"] == "Position opened: AAPL"
    assert first.body["data"] == {"quantity": "10"}
    assert first.headers["Content-Type"] == "application/json"
    # The same delivery always carries the same key, so a receiver can drop a repeat.
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(keys) == 1
    assert keys != {outgoing(key="other").idempotency_key}


def test_webhook_5xx_is_retryable_and_4xx_is_permanent():
    with http_sink(script=[503, 400, 429]) as server:
        sink = WebhookSink(server.url, timeout=5)
        with pytest.raises(SinkError) as e503:
            sink.send(outgoing())
        with pytest.raises(SinkError) as e400:
            sink.send(outgoing())
        with pytest.raises(SinkError) as e429:
            sink.send(outgoing())
    assert not e503.value.permanent and "HTTP 503" in str(e503.value)
    assert e400.value.permanent
    assert not e429.value.permanent


def test_webhook_unreachable_is_retryable():
    with http_sink() as server:
        url = server.url
    with pytest.raises(SinkError) as err:
        WebhookSink(url, timeout=2).send(outgoing())
    assert not err.value.permanent


def test_telegram_calls_send_message_on_the_configured_base_url():
    with http_sink(telegram=True) as server:
        TelegramSink(TOKEN, "-100200300", server.url + "/tg", timeout=5).send(outgoing())
    [req] = server.requests
    assert req.path == f"/tg/bot{TOKEN}/sendMessage"
    assert req.body["chat_id"] == "-100200300"
    assert req.body["text"].startswith("Position opened: AAPL\nAAPL: 10")


def test_telegram_errors_never_show_the_token():
    with http_sink(telegram=True, status=400) as server:
        with pytest.raises(SinkError) as err:
            TelegramSink(TOKEN, "nope", server.url, timeout=5).send(outgoing())
        url = server.url
    assert err.value.permanent
    assert "chat not found" in str(err.value)
    assert TOKEN not in str(err.value) and "SECRET" not in str(err.value)
    with pytest.raises(SinkError) as down:  # connection refused: requests quotes the URL
        TelegramSink(TOKEN, "x", url, timeout=2).send(outgoing())
    assert "SECRET" not in str(down.value)
    assert not down.value.permanent


def test_email_through_a_real_smtp_server():
    with smtp_server() as box:
        sink = EmailSink(host=box.host, port=box.port, sender="bot@example.test",
                         recipients=("me@example.test", "you@example.test"), user=None,
                         password=None, starttls=False, timeout=5)
        sink.send(outgoing(sink="email"))
    [(mail_from, rcpt, msg)] = box.messages
    assert mail_from == "bot@example.test"
    assert rcpt == ["me@example.test", "you@example.test"]
    assert msg["Subject"] == "[brokersync] Position opened: AAPL"
    assert msg["Message-ID"] == f"<{outgoing(sink='email').idempotency_key}@brokersync>"
    assert "AAPL: 10 at average cost" in msg.get_content()


def test_email_server_down_is_retryable(tmp_path):
    with smtp_server() as box:
        port = box.port
    sink = EmailSink(host="127.0.0.1", port=port, sender="a@x.test", recipients=("b@x.test",),
                     user=None, password=None, starttls=False, timeout=2)
    with pytest.raises(SinkError) as err:
        sink.send(outgoing(sink="email"))
    assert not err.value.permanent


def test_log_sink_appends_json_lines(tmp_path):
    path = tmp_path / "logs" / "notifications.jsonl"
    sink = LogSink(path)
    sink.send(outgoing(sink="log"))
    sink.send(outgoing(sink="log", key="k2", title="second"))
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [x["title"] for x in lines] == ["Position opened: AAPL", "second"]
    assert lines[1]["key"] == "k2"


def test_build_sink_from_settings(tmp_path):
    with http_sink(telegram=True) as server:
        s = make_settings(tmp_path, notify_sinks="log,telegram", notify_telegram_token=TOKEN,
                          notify_telegram_chat_id="42", notify_telegram_base_url=server.url)
        assert check_settings(s) == ("log", "telegram")
        build_sink("telegram", s).send(outgoing())
        build_sink("log", s).send(outgoing())
    assert server.requests[0].body["chat_id"] == "42"
    assert (tmp_path / "data" / "logs" / "notifications.jsonl").exists()
    # A sink that is not configured fails permanently (the worker records it, no retry loop).
    with pytest.raises(SinkError) as err:
        build_sink("email", s)
    assert err.value.permanent and "BROKERSYNC_NOTIFY_SMTP_HOST" in str(err.value)


@pytest.mark.parametrize(
    ("sinks", "missing"),
    [
        ("webhook", "BROKERSYNC_NOTIFY_WEBHOOK_URL"),
        ("log,telegram", "BROKERSYNC_NOTIFY_TELEGRAM_TOKEN"),
        ("email", "BROKERSYNC_NOTIFY_SMTP_TO"),
    ],
)
def test_a_selected_sink_missing_a_value_is_a_config_error(tmp_path, sinks, missing):
    s = make_settings(tmp_path, notify_sinks=sinks, notify_smtp_host="h", notify_smtp_from="f@x",
                      notify_telegram_chat_id="1")
    with pytest.raises(ConfigError) as err:
        check_settings(s)
    assert missing in str(err.value)
    assert err.value.exit_code == 78


def test_unknown_sink_and_bad_time_zone(tmp_path):
    with pytest.raises(ConfigError, match="BROKERSYNC_NOTIFY_SINKS.*pager"):
        check_settings(make_settings(tmp_path, notify_sinks="log,pager"))
    with pytest.raises(ConfigError, match="BROKERSYNC_NOTIFY_TIME_ZONE"):
        check_settings(make_settings(tmp_path, notify_time_zone="Mars/Olympus"))
    assert check_settings(make_settings(tmp_path, notify_sinks="none")) == ()


def test_log_sink_writes_a_key_once_even_when_a_retry_sends_it_again(tmp_path):
    """A worker dying between the write and the commit retries the send: the file keeps one line."""
    from datetime import UTC, datetime

    import orjson

    from consumers.sinks import LogSink, Outgoing

    path = tmp_path / "n.jsonl"
    msg = Outgoing(id=1, dedupe_key="rule:A:X:1", sink="log", rule="rule", account="A", subject="X",
                   title="t", body="b", occurred_at=datetime(2026, 11, 20, tzinfo=UTC), data={})
    other = Outgoing(id=2, dedupe_key="rule:A:X:2", sink="log", rule="rule", account="A", subject="X",
                     title="t", body="b", occurred_at=datetime(2026, 11, 20, tzinfo=UTC), data={})
    LogSink(path).send(msg)
    LogSink(path).send(msg)
    LogSink(path).send(other)
    from consumers import sinks

    sinks._LOG_INDEX.clear()  # a new worker process: reads the keys back from the file
    LogSink(path).send(msg)
    keys = [orjson.loads(line)["key"] for line in path.read_bytes().splitlines()]
    assert keys == ["rule:A:X:1", "rule:A:X:2"]

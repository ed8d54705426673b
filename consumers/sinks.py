"""Notification sinks: where a delivery goes (a log file, a webhook, Telegram, email).

A sink sends one :class:`Outgoing` message or raises :class:`SinkError`; ``permanent`` says
that retrying cannot help (a 4xx answer, a refused recipient, a sink that is not configured),
so the worker records the failure at once instead of retrying for hours.

Configuration comes from the ``BROKERSYNC_NOTIFY_*`` settings; :func:`check_settings` turns a
selected sink with a missing value into a :class:`ConfigError` that names the variable (exit
78), and is called by both the notifications consumer and the worker when they start. Secrets
(the Telegram token, the SMTP password) never appear in an error: the Telegram token is part of
its API's URL, so every error text from that sink is built without the URL.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from brokersync.errors import ConfigError
from brokersync.settings import Settings, env_name

SINKS = ("log", "webhook", "telegram", "email")

# Per sink: the settings that must be set when the sink is selected.
REQUIRED: dict[str, tuple[str, ...]] = {
    "log": (),
    "webhook": ("notify_webhook_url",),
    "telegram": ("notify_telegram_token", "notify_telegram_chat_id"),
    "email": ("notify_smtp_host", "notify_smtp_from", "notify_smtp_to"),
}


class SinkError(Exception):
    """A sink could not deliver a message."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# ---- configuration -------------------------------------------------------------------------


def selected_sinks(settings: Settings) -> tuple[str, ...]:
    """The sinks named by BROKERSYNC_NOTIFY_SINKS ("none" selects none)."""
    raw = settings.notify_sinks.strip().lower()
    if raw == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ConfigError(
            f"configuration error:\n  {env_name('notify_sinks')}: unknown sink(s) "
            f"{', '.join(unknown)}; choose from {', '.join(SINKS)} (comma-separated) or 'none'"
        )
    return names


def time_zone(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.notify_time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"configuration error:\n  {env_name('notify_time_zone')}: "
            f"{settings.notify_time_zone!r} is not an IANA time zone (e.g. America/New_York)"
        ) from None


def check_settings(settings: Settings) -> tuple[str, ...]:
    """Validate the notification settings; return the selected sinks."""
    sinks = selected_sinks(settings)
    time_zone(settings)
    problems = []
    for sink in sinks:
        for name in REQUIRED[sink]:
            value = getattr(settings, name)
            if value is None or (isinstance(value, str) and not value):
                problems.append(
                    f"{env_name(name)} is required when {env_name('notify_sinks')} includes "
                    f"{sink}. Set it in the environment or .env, or remove {sink} from the sinks."
                )
    url = settings.notify_webhook_url
    if "webhook" in sinks and url and not url.startswith(("http://", "https://")):
        problems.append(f"{env_name('notify_webhook_url')} must be an http:// or https:// URL")
    if problems:
        raise ConfigError("configuration error:\n  " + "\n  ".join(problems))
    return sinks


# ---- the message ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One delivery, as read from ``notification_deliveries``."""

    id: int
    dedupe_key: str
    sink: str
    rule: str
    account: str
    subject: str
    title: str
    body: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return hashlib.sha256(f"{self.dedupe_key}|{self.sink}".encode()).hexdigest()[:32]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.dedupe_key,
            "rule": self.rule,
            "account": self.account,
            "subject": self.subject,
            "title": self.title,
            "text": self.body,
            "occurred_at": self.occurred_at.isoformat(),
            "data": self.data,
        }

    @property
    def text(self) -> str:
        return f"{self.title}\n{self.body}" if self.body else self.title


class Sink(Protocol):
    name: str

    def send(self, message: Outgoing) -> None: ...


# ---- sinks ---------------------------------------------------------------------------------


@dataclass
class LogSink:
    """Appends one JSON line per message to a file (the default sink: works with no setup)."""

    path: Path
    name: str = "log"

    def send(self, message: Outgoing) -> None:
        """Append the message unless its key is already in the file.

        The worker marks a delivery sent in the transaction around the send; a worker or
        database dying between this write and that commit retries the delivery. Other sinks
        can only pass an idempotency key on; for the file we own, the retry finds the key
        already written and does nothing, so the log sink is exactly once.
        """
        line = orjson.dumps({"sent_at": datetime.now().astimezone().isoformat(), **message.as_json()})
        try:
            with _LOG_INDEX_LOCK:
                keys = _written_keys(self.path)
                if message.dedupe_key in keys:
                    return
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as f:
                    f.write(line + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                keys.add(message.dedupe_key)
                _LOG_INDEX[self.path] = (self.path.stat().st_size, keys)
        except OSError as exc:
            raise SinkError(f"log sink: cannot write {self.path}: {exc.strerror or exc}") from None


# The keys already in each log sink file, read once per worker and then only the new tail.
_LOG_INDEX_LOCK = threading.Lock()
_LOG_INDEX: dict[Path, tuple[int, set[str]]] = {}


def _written_keys(path: Path) -> set[str]:
    scanned, keys = _LOG_INDEX.get(path, (0, set()))
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    if size < scanned:  # rotated or truncated by the user: start over
        scanned, keys = 0, set()
    if size > scanned:
        with open(path, "rb") as f:
            f.seek(scanned)
            for raw in f.read(size - scanned).splitlines():
                try:
                    keys.add(orjson.loads(raw)["key"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # a line someone edited, or cut short by a crash
        scanned = size
    _LOG_INDEX[path] = (scanned, keys)
    return keys


def _http_error(sink: str, status: int, text: str) -> SinkError:
    # 408/429 and 5xx are worth retrying; any other 4xx will fail the same way again.
    permanent = 400 <= status < 500 and status not in (408, 425, 429)
    return SinkError(f"{sink}: HTTP {status}: {text[:200]}", permanent=permanent)


@dataclass
class WebhookSink:
    """POSTs the message as JSON. ``Idempotency-Key`` lets a receiver drop a repeat."""

    url: str
    timeout: float
    name: str = "webhook"

    def send(self, message: Outgoing) -> None:
        import requests  # only the worker sends: the consumer never loads it

        try:
            r = requests.post(
                self.url,
                data=orjson.dumps(message.as_json()),
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": message.idempotency_key,
                    "User-Agent": "brokersync-notifications",
                },
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise SinkError(f"webhook: {type(exc).__name__} posting to the webhook URL") from None
        if not 200 <= r.status_code < 300:
            raise _http_error("webhook", r.status_code, r.text)


@dataclass
class TelegramSink:
    """The Bot API's sendMessage; ``base_url`` is configurable (a proxy, a local Bot API server)."""

    token: str
    chat_id: str
    base_url: str
    timeout: float
    name: str = "telegram"

    def send(self, message: Outgoing) -> None:
        import requests

        url = f"{self.base_url.rstrip('/')}/bot{self.token}/sendMessage"
        try:
            r = requests.post(
                url,
                json={"chat_id": self.chat_id, "text": message.text[:4096],
                      "disable_web_page_preview": True},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            # Never str(exc): it quotes the URL, which holds the token.
            raise SinkError(f"telegram: {type(exc).__name__} calling {self.base_url}") from None
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        if r.status_code != 200 or not (isinstance(answer, dict) and answer.get("ok")):
            text = answer.get("description", r.text) if isinstance(answer, dict) else r.text
            raise _http_error("telegram", r.status_code, str(text).replace(self.token, "***"))


@dataclass
class EmailSink:
    """Sends over SMTP (STARTTLS and login when configured). The Message-ID derives from the
    dedupe key, so a mail client shows a repeat as the same message."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    user: str | None
    password: str | None
    starttls: bool
    timeout: float
    name: str = "email"

    def send(self, message: Outgoing) -> None:
        mail = EmailMessage()
        mail["Subject"] = f"[brokersync] {message.title}"
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = format_datetime(message.occurred_at)
        mail["Message-ID"] = f"<{message.idempotency_key}@brokersync>"
        mail.set_content(message.body or message.title)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user and self.password:
                    smtp.login(self.user, self.password)
                smtp.send_message(mail)
        except smtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.smtp_code < 600
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise SinkError(f"email: SMTP {exc.smtp_code}: {text[:200]}", permanent=permanent) from None
        except smtplib.SMTPRecipientsRefused:
            raise SinkError("email: every recipient was refused", permanent=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise SinkError(f"email: {type(exc).__name__} talking to {self.host}:{self.port}") from None


def log_path(settings: Settings) -> Path:
    return settings.notify_log_path or settings.logs_path / "notifications.jsonl"


def build_sink(name: str, settings: Settings) -> Sink:
    """The sink called ``name``; :class:`SinkError` (permanent) when it is not configured."""
    missing = [env_name(f) for f in REQUIRED.get(name, ()) if not getattr(settings, f)]
    if name not in SINKS or missing:
        why = f"unknown sink {name!r}" if name not in SINKS else f"{', '.join(missing)} not set"
        raise SinkError(f"{name}: not configured ({why})", permanent=True)
    t = settings.notify_timeout
    if name == "log":
        return LogSink(log_path(settings))
    if name == "webhook":
        assert settings.notify_webhook_url
        return WebhookSink(settings.notify_webhook_url, t)
    if name == "telegram":
        assert settings.notify_telegram_token and settings.notify_telegram_chat_id
        return TelegramSink(settings.notify_telegram_token.get_secret_value(),
                            settings.notify_telegram_chat_id, settings.notify_telegram_base_url, t)
    assert settings.notify_smtp_host and settings.notify_smtp_from and settings.notify_smtp_to
    return EmailSink(
        host=settings.notify_smtp_host,
        port=settings.notify_smtp_port,
        sender=settings.notify_smtp_from,
        recipients=tuple(r.strip() for r in settings.notify_smtp_to.split(",") if r.strip()),
        user=settings.notify_smtp_user,
        password=settings.notify_smtp_password.get_secret_value() if settings.notify_smtp_password else None,
        starttls=settings.notify_smtp_starttls,
        timeout=t,
    )

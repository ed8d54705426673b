"""Configuration: environment variables with the prefix ``BROKERSYNC_`` and an optional ``.env``.

Built once, in a component's entry point, and passed down explicitly (no module globals).

Strictness, because a service that starts with a typo'd variable silently uses a default:
* an unknown ``BROKERSYNC_*`` name is an error, with a did-you-mean;
* a value with leading or trailing whitespace is an error (a classic ``.env`` / NSSM pitfall);
* a missing required value (e.g. credentials once ``BROKERSYNC_BROKER=robinhood``) is an error;
each naming the variable and the fix, raised as :class:`ConfigError` (exit code 78).
Secret values are ``SecretStr`` and never appear in messages.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from brokersync.errors import ConfigError

PREFIX = "BROKERSYNC_"


def project_root() -> Path:
    """The checkout that holds this package (editable install), else the current folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


class Settings(BaseSettings):
    """Every setting brokersync reads. Field ``foo`` is the variable ``BROKERSYNC_FOO``."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        case_sensitive=False,
        extra="forbid",
        env_file=None,  # loaded explicitly by load_settings(), after validation
        frozen=True,
    )

    # --- database -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:pass@host:5432/db). Unset: an embedded "
        "server is started in BROKERSYNC_DATA_DIR/pgdata.",
    )
    data_dir: Path = Field(
        default_factory=lambda: project_root() / ".brokersync",
        description="Folder for the embedded database, logs and the broker session.",
    )

    # --- logging --------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR."
    )
    log_dir: Path | None = Field(default=None, description="Default: BROKERSYNC_DATA_DIR/logs.")
    log_file: bool = Field(
        default=False,
        description="Also write a rotating log file per component (set by the service files).",
    )
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Rotate a log file at this size.")
    log_backups: int = Field(default=5, ge=0, description="Rotated log files kept per component.")

    # --- consumer runtime -----------------------------------------------------------------
    consumer_batch_size: int = Field(
        default=500, ge=1, le=100_000, description="Events applied per transaction."
    )
    consumer_poll_interval: float = Field(
        default=30.0, gt=0, description="Seconds between catch-up polls when no NOTIFY arrives."
    )
    consumer_max_attempts: int = Field(
        default=4, ge=1, description="Attempts at one event before it becomes a dead letter."
    )
    consumer_retry_backoff: float = Field(
        default=0.5, ge=0, description="First retry delay in seconds; doubles per attempt."
    )
    reconnect_max_backoff: float = Field(
        default=30.0, gt=0, description="Longest wait (s) between database reconnect attempts."
    )

    # --- broker / producer ----------------------------------------------------------------
    broker: Literal["auto", "simulated", "robinhood"] = Field(
        default="auto",
        description="auto: Robinhood when BROKERSYNC_ROBINHOOD_USERNAME is set, else simulated.",
    )
    robinhood_username: str | None = Field(default=None, description="Robinhood login e-mail; set: use Robinhood.")
    robinhood_password: SecretStr | None = Field(default=None, description="Robinhood password.")
    robinhood_mfa_secret: SecretStr | None = Field(
        default=None, description="Base32 TOTP secret, for accounts with an authenticator app."
    )
    session_dir: Path | None = Field(
        default=None, description="Where the broker session is stored. Default: DATA_DIR/session."
    )

    # --- producer -------------------------------------------------------------------------
    producer_interval: float = Field(
        default=300.0, gt=0,
        description="Seconds between fetches of positions, option positions, quotes, account "
        "and portfolio (the main interval; `brokersync producer --interval` overrides it).",
    )
    producer_orders_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between incremental stock and option order fetches."
    )
    producer_market_hours: bool = Field(
        default=False,
        description="Poll at PRODUCER_CLOSED_INTERVAL while the US market is closed "
        "(weekends and outside 09:30-16:00 America/New_York).",
    )
    producer_closed_interval: float = Field(
        default=1800.0, gt=0, description="Main interval while the market is closed."
    )
    producer_skip_identical: bool = Field(
        default=False,
        description="Do not append a snapshot identical to the previous one of its kind and "
        "account (the cycle row still records the fetch as 'unchanged').",
    )
    producer_rate_limit: int = Field(
        default=60, ge=1, description="Broker requests per minute (a token bucket)."
    )
    producer_timeout: float = Field(
        default=15.0, gt=0, description="Seconds before one broker request times out."
    )
    producer_max_attempts: int = Field(
        default=3, ge=1, description="Attempts per request on 429/5xx/timeouts, with backoff."
    )
    producer_backoff: float = Field(
        default=1.0, ge=0, description="First backoff in seconds on 429/5xx; doubles per attempt."
    )
    producer_concurrency: int = Field(
        default=6, ge=1, le=32, description="Broker requests in flight at once within a cycle."
    )
    producer_login_retry: float = Field(
        default=900.0, gt=0,
        description="Seconds between automatic re-login attempts after the session was rejected.",
    )
    sim_seed: int = Field(default=1, description="Seed of the simulated broker.")
    sim_epoch: datetime | None = Field(
        default=None,
        description="Start of the simulated world. Default: UTC midnight of the day the producer "
        "starts. Same seed and epoch give the same snapshots at the same times.",
    )
    sim_latency: float = Field(default=0.0, ge=0, description="Seconds added to every simulated call.")
    sim_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of simulated calls that fail with HTTP 500/503."
    )
    sim_throttle_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of simulated calls that answer HTTP 429."
    )
    sim_slow_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of simulated calls that take SIM_SLOW_SECONDS."
    )
    sim_slow_seconds: float = Field(default=3.0, ge=0, description="Duration (s) of a slow simulated call.")

    # --- notifications ---------------------------------------------------------------------
    # Rules run in the `notifications` consumer; delivery in `brokersync worker` (dramatiq).
    notify_sinks: str = Field(
        default="log",
        description="Comma-separated sinks: log, webhook, telegram, email; 'none' delivers nothing.",
    )
    notify_log_path: Path | None = Field(
        default=None, description="JSON-lines file of the log sink. Default: LOG_DIR/notifications.jsonl."
    )
    notify_webhook_url: str | None = Field(default=None, description="Receives a JSON POST.")
    notify_telegram_token: SecretStr | None = None
    notify_telegram_chat_id: str | None = Field(default=None, description="Telegram chat that receives the messages (required for telegram).")
    notify_telegram_base_url: str = Field(default="https://api.telegram.org", description="Bot API base URL (a proxy or a local Bot API server).")
    notify_smtp_host: str | None = Field(default=None, description="SMTP server (required for email).")
    notify_smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP port.")
    notify_smtp_user: str | None = Field(default=None, description="SMTP login user (login when user and password are set).")
    notify_smtp_password: SecretStr | None = None
    notify_smtp_from: str | None = Field(default=None, description="Sender address (required for email).")
    notify_smtp_to: str | None = Field(default=None, description="Comma-separated recipients.")
    notify_smtp_starttls: bool = Field(default=True, description="Use STARTTLS.")
    notify_timeout: float = Field(default=10.0, gt=0, description="Seconds per sink call.")
    notify_max_retries: int = Field(default=6, ge=0, description="Retries per delivery.")
    notify_min_backoff: float = Field(default=2.0, gt=0, description="First retry delay (s).")
    notify_max_backoff: float = Field(default=600.0, gt=0, description="Longest retry delay (s).")
    notify_pnl_move_pct: float = Field(
        default=5.0, gt=0, description="Alert when a position's unrealized P&L % crosses a multiple."
    )
    notify_option_pnl_move_pct: float = Field(
        default=25.0, gt=0, description="The same for option positions (options move more)."
    )
    notify_option_expiry_days: int = Field(default=3, ge=0, description="Alert when an option position expires within this many days.")
    notify_buying_power_floor: float | None = Field(
        default=None, description="Alert when buying power goes under it. Unset: off."
    )
    notify_producer_failing_cycles: int = Field(default=3, ge=1, description="Alert when this many producer cycles in a row failed or were partial.")
    notify_data_age_minutes: float = Field(
        default=90.0, gt=0,
        description="Alert when the newest snapshot is older. Keep it above the producer's "
        "closed-market interval (hourly by default), or every night alerts.",
    )
    notify_daily_summary_time: str = Field(
        default="16:30", pattern=r"^(off|([01]\d|2[0-3]):[0-5]\d)$",
        description="Local HH:MM of the daily summary, or 'off'.",
    )
    notify_time_zone: str = Field(default="America/New_York", description="IANA zone name.")
    notify_max_event_age_hours: float = Field(
        default=24.0, gt=0,
        description="Older events (a first catch-up of history) are recorded as expired, not sent.",
    )
    notify_tick_interval: float = Field(default=60.0, gt=0, description="Time-based rule checks (s).")
    notify_worker_threads: int = Field(default=2, ge=1, le=64, description="Delivery threads in the worker.")
    notify_worker_heartbeat_ttl: float = Field(
        default=60.0, gt=0, description="A worker silent this long is dead: its messages requeue."
    )

    @field_validator("data_dir", "log_dir", "session_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return v.expanduser().resolve() if v is not None else None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):
        # load_settings() reads and checks the environment and .env itself, then passes
        # the values in: the environment is read exactly once, by code that validates names.
        return (init_settings,)

    # --- derived --------------------------------------------------------------------------
    @property
    def logs_path(self) -> Path:
        return self.log_dir or self.data_dir / "logs"

    @property
    def session_path(self) -> Path:
        return self.session_dir or self.data_dir / "session"

    @property
    def effective_broker(self) -> Literal["simulated", "robinhood"]:
        if self.broker == "auto":
            return "robinhood" if self.robinhood_username else "simulated"
        return self.broker

    def secret_values(self) -> list[str]:
        """Every secret's plain value, for the log redaction filter."""
        out: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                plain = value.get_secret_value()
                if plain:
                    out.append(plain)
        if self.database_url is not None:  # the password inside the URL, on its own
            try:
                from psycopg.conninfo import conninfo_to_dict

                password = conninfo_to_dict(self.database_url.get_secret_value()).get("password")
            except Exception:  # an unparsable URL fails later, with a clear message
                password = None
            if password:
                out.append(str(password))
        return out


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def known_names() -> set[str]:
    return {env_name(f) for f in Settings.model_fields}


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values  # a dependency of pydantic-settings

    values = dotenv_values(path)
    return {k: v for k, v in values.items() if v is not None}


def default_env_file() -> Path | None:
    for candidate in (Path.cwd() / ".env", project_root() / ".env"):
        if candidate.is_file():
            return candidate
    return None


def check_raw(raw: Mapping[str, str], origin: Mapping[str, str]) -> None:
    """Reject unknown ``BROKERSYNC_*`` names and values with surrounding whitespace."""
    known = known_names()
    problems: list[str] = []
    for name, value in sorted(raw.items()):
        upper = name.upper()
        where = origin.get(name, "the environment")
        if upper not in known:
            guess = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
            hint = f" Did you mean {guess[0]}?" if guess else ""
            problems.append(
                f"{upper} (from {where}) is not a brokersync setting.{hint} "
                f"Rename or remove it; the settings are listed in the README."
            )
            continue
        if value != value.strip():
            problems.append(
                f"{upper} (from {where}) has leading or trailing whitespace. "
                f"Remove the spaces, tabs or newlines around the value."
            )
    if problems:
        raise ConfigError("configuration error:\n  " + "\n  ".join(problems))


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None | Literal["default"] = "default",
    **overrides: Any,
) -> Settings:
    """Build and validate the settings; raise :class:`ConfigError` naming the variable."""
    environ = os.environ if environ is None else environ
    path = default_env_file() if env_file == "default" else env_file

    raw: dict[str, str] = {}
    origin: dict[str, str] = {}
    if path is not None:
        for k, v in _read_env_file(path).items():
            if k.upper().startswith(PREFIX):
                raw[k.upper()] = v
                origin[k.upper()] = str(path)
    for k, v in environ.items():  # the environment wins over .env
        if k.upper().startswith(PREFIX):
            raw[k.upper()] = v
            origin[k.upper()] = "the environment"
    check_raw(raw, origin)

    values: dict[str, Any] = {k[len(PREFIX) :].lower(): v for k, v in raw.items() if v != ""}
    values.update(overrides)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"{env_name(field)}: {err['msg']}")
        raise ConfigError("configuration error:\n  " + "\n  ".join(lines)) from None

    if settings.effective_broker == "robinhood":
        missing = [
            env_name(f)
            for f in ("robinhood_username", "robinhood_password")
            if getattr(settings, f) is None
        ]
        if missing:
            raise ConfigError(
                "configuration error:\n  "
                + "\n  ".join(
                    f"{m} is required when BROKERSYNC_BROKER is robinhood (or a username is set). "
                    f"Set it in the environment or .env, or unset BROKERSYNC_BROKER to use the "
                    f"simulated broker."
                    for m in missing
                )
            )
    return settings

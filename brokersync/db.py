"""Database access: resolve the URL (configured or embedded), connect, translate errors.

Every component connects through :func:`connect`; nothing keeps a module-global connection.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads

from brokersync.errors import ConfigError, DatabaseUnavailable
from brokersync.settings import Settings

if TYPE_CHECKING:
    from brokersync.embedded import EmbeddedServer

log = logging.getLogger(__name__)

_URL_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (also key=value form)."""
    url = _URL_PASSWORD.sub(lambda m: m.group(1) + ("***" if m.group(2) else "") + m.group(3), url)
    return _KV_PASSWORD.sub(r"\1***", url)


def with_dbname(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


class Database:
    """Where the database is; starts the embedded server on demand and stops it if it owns it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._url: str | None = (
            settings.database_url.get_secret_value() if settings.database_url else None
        )
        self._embedded: EmbeddedServer | None = None

    @property
    def is_embedded(self) -> bool:
        return self.settings.database_url is None

    def url(self) -> str:
        if self._url is None:
            from brokersync.embedded import EmbeddedServer

            server = EmbeddedServer(self.settings.data_dir / "pgdata")
            self._embedded = server
            self._url = server.start()
        return self._url

    def display_url(self) -> str:
        return redact_url(self.url())

    def connect(self, *, autocommit: bool = False, application_name: str = "brokersync") -> psycopg.Connection[Any]:
        return connect(self.url(), autocommit=autocommit, application_name=application_name)

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def configure(conn: psycopg.Connection[Any]) -> None:
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)


def connect(url: str, *, autocommit: bool = False, application_name: str = "brokersync", connect_timeout: int = 10) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=connect_timeout,
            # A standby must notice a dead active instance (power loss, network split) in
            # about a minute, not after the kernel's two-hour default.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg.OperationalError as exc:
        # psycopg's message can quote the conninfo: redact before it reaches a log.
        detail = redact_url(str(exc)).strip()
        if getattr(exc, "sqlstate", None) in ("28P01", "28000", "3D000") or "password authentication failed" in detail:
            raise ConfigError(
                f"PostgreSQL at {redact_url(url)} refused the login or the database: {detail}. "
                f"Check BROKERSYNC_DATABASE_URL."
            ) from None
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact_url(url)}: {detail}") from None
    configure(conn)
    return conn


@contextlib.contextmanager
def connection(url: str, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(url, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


# SQLSTATEs that mean the server ended our session (admin/crash shutdown, cannot connect now).
_SESSION_GONE = {"57P01", "57P02", "57P03"}


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "the connection is gone", not "this event is bad".

    psycopg's OperationalError also covers statement errors (query cancelled, lock timeout,
    program limit exceeded): those are the event's problem and go to the retry/dead-letter
    path, or a poison event would loop on "reconnecting" forever.
    """
    if isinstance(exc, DatabaseUnavailable | psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state in _SESSION_GONE
    return False

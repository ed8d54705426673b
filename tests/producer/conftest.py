"""Producer fixtures: settings for tests, a Robinhood session in a temporary folder."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import responses

from brokersync.db import configure
from brokersync.settings import Settings, load_settings
from tests.producer.robinhood_fake import FakeRobinhood


def make_settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "BROKERSYNC_DATA_DIR": str(tmp_path / "data"),
        "BROKERSYNC_PRODUCER_BACKOFF": "0.01",
        "BROKERSYNC_PRODUCER_RATE_LIMIT": "6000",
        "BROKERSYNC_PRODUCER_TIMEOUT": "5",
    }
    base.update(env)
    return load_settings(base, env_file=None)


@pytest.fixture
def rh_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, BROKERSYNC_BROKER="robinhood", BROKERSYNC_ROBINHOOD_USERNAME="trader@example.com",
                         BROKERSYNC_ROBINHOOD_PASSWORD="hunter2-secret")


@pytest.fixture
def rh_session() -> Iterator[Any]:
    """robin_stocks's global session, restored afterwards (tests share the process)."""
    from robin_stocks.robinhood.globals import SESSION

    saved = dict(SESSION.headers)
    yield SESSION
    SESSION.headers.clear()
    SESSION.headers.update(saved)


@pytest.fixture
def stored_session(rh_settings: Settings) -> Path:
    from producer.login import save_session

    return save_session(rh_settings.session_path, {"token_type": "Bearer", "access_token": "tok-123",
                                                   "refresh_token": "ref-456", "device_token": "dev-789"})


@pytest.fixture
def fake_rh(rh_session: Any) -> Iterator[FakeRobinhood]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeRobinhood(rsps)


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def rows(conn: psycopg.Connection[Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    configure(conn)
    return conn.execute(sql, args).fetchall()

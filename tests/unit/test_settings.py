"""Settings: strict names, no whitespace, required values, secrets kept secret."""

from __future__ import annotations

import logging

import pytest

from brokersync.db import redact_url
from brokersync.errors import ConfigError
from brokersync.logs import RedactingFilter
from brokersync.settings import load_settings


def load(**env: str):
    return load_settings(environ=env, env_file=None)


def test_defaults_need_nothing():
    s = load()
    assert s.database_url is None and s.effective_broker == "simulated"
    assert s.data_dir.name == ".brokersync"


def test_values_are_parsed():
    s = load(BROKERSYNC_CONSUMER_BATCH_SIZE="25", BROKERSYNC_LOG_FILE="true",
             BROKERSYNC_DATABASE_URL="postgresql://u:p@h/db")
    assert s.consumer_batch_size == 25 and s.log_file is True
    assert s.database_url is not None and s.database_url.get_secret_value().endswith("/db")


def test_unknown_name_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean BROKERSYNC_DATABASE_URL"):
        load(BROKERSYNC_DATABASE_UR="x")


def test_unknown_name_without_a_close_match():
    with pytest.raises(ConfigError, match="BROKERSYNC_ZZZ .*not a brokersync setting"):
        load(BROKERSYNC_ZZZ="1")


@pytest.mark.parametrize("value", [" INFO", "INFO ", "INFO\n", "\tINFO"])
def test_whitespace_is_refused(value):
    with pytest.raises(ConfigError, match="BROKERSYNC_LOG_LEVEL .*whitespace"):
        load(BROKERSYNC_LOG_LEVEL=value)


def test_bad_value_names_variable_and_hides_secret():
    with pytest.raises(ConfigError) as info:
        load(BROKERSYNC_CONSUMER_MAX_ATTEMPTS="0", BROKERSYNC_ROBINHOOD_PASSWORD="s3cret-value")
    assert "BROKERSYNC_CONSUMER_MAX_ATTEMPTS" in str(info.value)
    assert "s3cret-value" not in str(info.value)


def test_robinhood_requires_credentials():
    with pytest.raises(ConfigError, match="BROKERSYNC_ROBINHOOD_USERNAME is required"):
        load(BROKERSYNC_BROKER="robinhood")
    s = load(BROKERSYNC_ROBINHOOD_USERNAME="me", BROKERSYNC_ROBINHOOD_PASSWORD="pw")
    assert s.effective_broker == "robinhood"
    assert "pw" not in repr(s)


def test_env_file_values_and_environment_precedence(tmp_path):
    f = tmp_path / ".env"
    f.write_text("BROKERSYNC_CONSUMER_BATCH_SIZE=7\nBROKERSYNC_LOG_LEVEL=DEBUG\nOTHER=1\n")
    s = load_settings(environ={"BROKERSYNC_LOG_LEVEL": "ERROR"}, env_file=f)
    assert s.consumer_batch_size == 7 and s.log_level == "ERROR"
    f.write_text("BROKERSYNC_LOG_LEVEL='DEBUG '\n")
    with pytest.raises(ConfigError, match=f"BROKERSYNC_LOG_LEVEL \\(from {f}\\)"):
        load_settings(environ={}, env_file=f)


def test_redaction_of_urls_and_secrets():
    assert redact_url("postgresql://bob:pa55@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redact_url("host=db password=pa55 user=bob") == "host=db password=*** user=bob"
    assert redact_url("postgresql://postgres:@/db?host=/tmp") == "postgresql://postgres:@/db?host=/tmp"
    f = RedactingFilter(["tok-123456"])
    record = logging.LogRecord("x", logging.INFO, "f", 1, "token %s at %s", ("tok-123456", "postgresql://a:b@h/d"), None)
    f.filter(record)
    assert record.getMessage() == "token *** at postgresql://a:***@h/d"

"""`brokersync config env|check`: what install.ps1 puts into AppEnvironmentExtra, validated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from brokersync.errors import ConfigError
from brokersync.exitcodes import RET_CONFIG
from brokersync.services import service_config
from tests.conftest import ROOT

PASSWORD = "hunter2-very-secret"
DB_PASSWORD = "db-pass-very-secret"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "brokersync", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def _env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8")
    return path


def test_env_lists_one_variable_per_entry_and_keeps_secrets_out(tmp_path: Path) -> None:
    data = tmp_path / "my data"
    _env_file(tmp_path, (
        f"BROKERSYNC_DATABASE_URL=postgresql://app:{DB_PASSWORD}@localhost:5432/brokersync\n"
        f"BROKERSYNC_ROBINHOOD_PASSWORD={PASSWORD}\n"
        "BROKERSYNC_LOG_LEVEL=DEBUG\n"
        f"BROKERSYNC_DATA_DIR={data}\n"
        "BROKERSYNC_CONSUMER_BATCH_SIZE=200\n"
    ))
    r = _cli(["config", "env", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = orjson.loads(r.stdout)
    assert out["env"] == [
        "BROKERSYNC_CONSUMER_BATCH_SIZE=200",
        f"BROKERSYNC_DATA_DIR={data}",  # a value with a space stays one entry
        "BROKERSYNC_LOG_LEVEL=DEBUG",
    ]
    assert out["kept_in_env_file"] == ["BROKERSYNC_DATABASE_URL", "BROKERSYNC_ROBINHOOD_PASSWORD"]
    assert out["database"] == "local"
    assert out["log_dir"] == str(data / "logs")
    for secret in (PASSWORD, DB_PASSWORD):
        assert secret not in r.stdout + r.stderr

    r = _cli(["config", "check"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "BROKERSYNC_ROBINHOOD_PASSWORD=*** (secret)" in r.stdout
    for secret in (PASSWORD, DB_PASSWORD):
        assert secret not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("BROKERSYNC_LOG_LEVL=DEBUG", "Did you mean BROKERSYNC_LOG_LEVEL?"),
        (f"BROKERSYNC_ROBINHOOD_PASSWORD= {PASSWORD}", ".env:1: BROKERSYNC_ROBINHOOD_PASSWORD: "
         "remove the whitespace around the name and ="),
        ("BROKERSYNC_LOG_LEVEL =INFO", "BROKERSYNC_LOG_LEVEL: remove the whitespace around"),
        (f"BROKERSYNC_ROBINHOOD_PASSWORD={PASSWORD}  ", "remove the trailing whitespace"),
        (f"BROKERSYNC_ROBINHOOD_PASSWORD='{PASSWORD} '", "leading or trailing whitespace"),
        ("BROKERSYNC_CONSUMER_BATCH_SIZE=many", "BROKERSYNC_CONSUMER_BATCH_SIZE"),
    ],
)
def test_a_bad_env_file_is_a_configuration_error_without_the_secret(
    tmp_path: Path, line: str, message: str
) -> None:
    _env_file(tmp_path, line + "\n")
    r = _cli(["config", "env", "--json"], tmp_path)
    assert r.returncode == RET_CONFIG
    assert message in r.stderr
    assert r.stdout == ""
    assert PASSWORD not in r.stdout + r.stderr


@pytest.mark.parametrize("value", ["'C:\\my \"data\"'", "C:\\my data\\"])
def test_values_that_cannot_reach_a_windows_service_are_refused(tmp_path: Path, value: str) -> None:
    # PowerShell 5.1 quotes an argument with spaces as "...", so a quote inside or a backslash
    # at the end would change what nssm receives.
    path = _env_file(tmp_path, f"BROKERSYNC_DATA_DIR={value}\n")
    with pytest.raises(ConfigError, match="BROKERSYNC_DATA_DIR .* cannot be passed to a Windows service"):
        service_config(path)


def test_a_line_the_parser_drops_is_an_error_not_a_missing_setting(tmp_path: Path) -> None:
    path = _env_file(tmp_path, f"BROKERSYNC_LOG_LEVEL=INFO\nBROKERSYNC_ROBINHOOD_PASSWORD='{PASSWORD}\\'\n")
    with pytest.raises(ConfigError, match=r"\.env:2: BROKERSYNC_ROBINHOOD_PASSWORD could not be read") as e:
        service_config(path)
    assert PASSWORD not in str(e.value)


def test_other_variables_do_not_belong_in_the_env_file(tmp_path: Path) -> None:
    path = _env_file(tmp_path, "PGPASSWORD=x\nBROKERSYNC_LOG_LEVEL=INFO\n")
    with pytest.raises(ConfigError, match="sets PGPASSWORD: only BROKERSYNC_"):
        service_config(path)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        (None, "embedded"),
        ("postgresql://u:p@localhost/db", "local"),
        ("postgresql://u:p@127.0.0.1:5433/db", "local"),
        ("postgresql:///db?host=/var/run/postgresql", "local"),
        ("postgresql://u:p@db.example.com/db", "remote"),
        ("postgresql://u:p@localhost,db.example.com/db", "remote"),
    ],
)
def test_database_location_decides_the_postgresql_dependency(
    tmp_path: Path, url: str | None, where: str
) -> None:
    path = _env_file(tmp_path, f"BROKERSYNC_DATABASE_URL={url}\n" if url else "")
    assert service_config(path).database == where

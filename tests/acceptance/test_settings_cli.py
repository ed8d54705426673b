"""Configuration errors stop every command with exit 78 and a message naming the variable."""

from __future__ import annotations

from tests.conftest import run_cli


def test_whitespace_value_exits_78(cli_env):
    r = run_cli(["status"], dict(cli_env, BROKERSYNC_LOG_LEVEL="DEBUG "))
    assert r.returncode == 78
    assert "BROKERSYNC_LOG_LEVEL" in r.stderr and "whitespace" in r.stderr


def test_misspelled_variable_exits_78_with_did_you_mean(cli_env):
    r = run_cli(["consumer", "x"], dict(cli_env, BROKERSYNC_CONSUMER_BATCHSIZE="10"))
    assert r.returncode == 78
    assert "BROKERSYNC_CONSUMER_BATCHSIZE" in r.stderr
    assert "Did you mean BROKERSYNC_CONSUMER_BATCH_SIZE?" in r.stderr


def test_missing_required_value_exits_78(cli_env):
    env = dict(cli_env, BROKERSYNC_BROKER="robinhood", BROKERSYNC_ROBINHOOD_USERNAME="me@example.com")
    r = run_cli(["status"], env)
    assert r.returncode == 78
    assert "BROKERSYNC_ROBINHOOD_PASSWORD is required" in r.stderr


def test_invalid_value_names_the_variable_without_echoing_secrets(cli_env):
    env = dict(cli_env, BROKERSYNC_CONSUMER_BATCH_SIZE="lots", BROKERSYNC_ROBINHOOD_PASSWORD="hunter2-secret")
    r = run_cli(["status"], env)
    assert r.returncode == 78
    assert "BROKERSYNC_CONSUMER_BATCH_SIZE" in r.stderr
    assert "hunter2-secret" not in r.stderr + r.stdout


def test_env_file_is_checked_too(cli_env, tmp_path):
    (tmp_path / ".env").write_text("BROKERSYNC_POLL_INTERVL=5\n")
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "brokersync", "status"], cwd=tmp_path, env=cli_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "BROKERSYNC_POLL_INTERVL" in r.stderr and str(tmp_path / ".env") in r.stderr
    assert ROOT  # the package runs from another folder too

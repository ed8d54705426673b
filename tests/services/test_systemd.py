"""The generated systemd units: `systemd-analyze verify` prints nothing, and the rules hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brokersync.components import Component, components
from brokersync.services import POLICY, render_systemd, service_name

SAMPLE = [
    Component("producer", ("producer",), "Polls the broker on schedule into the event log"),
    Component("consumer-positions", ("consumer", "positions"), "Applies positions"),
    Component("worker", ("worker",), "Delivers notifications", kill_mode_mixed=True),
]


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(
            "systemd-analyze is not installed, so the unit files cannot be verified: "
            "apt-get install -y systemd (.ci/run does this)"
        )
    return exe


def _verify(folder: Path) -> subprocess.CompletedProcess[str]:
    units = sorted(str(p) for p in folder.iterdir())
    return subprocess.run(
        [_systemd_analyze(), "verify", *units],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "LANG": "C.UTF-8"},
    )


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def _prefix(tmp_path: Path) -> str:
    """An install prefix whose .venv/bin/python exists (verify checks ExecStart is executable)."""
    prefix = tmp_path / "opt" / "brokersync"
    (prefix / ".venv" / "bin").mkdir(parents=True)
    (prefix / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return str(prefix)


@pytest.mark.parametrize("items", [SAMPLE, None], ids=["sample", "registry"])
def test_systemd_analyze_verify_prints_no_warning(tmp_path: Path, items: list[Component] | None) -> None:
    # The committed files are this render with the prefix /opt/brokersync (see test_drift).
    folder = tmp_path / "units"
    _write(folder, render_systemd(components() if items is None else items, prefix=_prefix(tmp_path)))
    r = _verify(folder)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout + r.stderr == ""


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key is reported (with exit 0, hence the output check)."""
    files = render_systemd(SAMPLE, prefix=_prefix(tmp_path))
    files["brokersync-producer.service"] = files["brokersync-producer.service"].replace(
        "RestartSec=", "RestartSecs="
    )
    folder = tmp_path / "units"
    _write(folder, files)
    r = _verify(folder)
    assert "Unknown key" in r.stdout + r.stderr


def _settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_units_restart_harden_and_stop_gracefully() -> None:
    files = render_systemd(SAMPLE, prefix="/opt/brokersync")
    for c in SAMPLE:
        s = _settings(files[service_name(c) + ".service"])
        assert s["ExecStart"] == [f"/opt/brokersync/.venv/bin/python -m brokersync {' '.join(c.args)}"]
        assert s["WorkingDirectory"] == ["/opt/brokersync"]
        assert s["Restart"] == ["on-failure"]
        assert s["RestartSec"] == [str(POLICY.restart_delay_s)]
        assert s["RestartPreventExitStatus"] == ["78"]
        assert s["StartLimitIntervalSec"] == [str(POLICY.start_limit_interval_s)]
        assert s["StartLimitBurst"] == [str(POLICY.start_limit_burst)]
        assert s["EnvironmentFile"] == ["-/etc/brokersync/brokersync.env"]
        assert "PYTHONUNBUFFERED=1 PYTHONUTF8=1" in s["Environment"]
        assert s["NoNewPrivileges"] == ["yes"]
        assert s["ProtectSystem"] == ["strict"]
        assert s["PrivateTmp"] == ["yes"]
        assert s["StateDirectory"] == ["brokersync"]
        assert "BROKERSYNC_DATA_DIR=/var/lib/brokersync" in s["Environment"]
        assert s["KillSignal"] == ["SIGINT"]
        assert s["TimeoutStopSec"] == [str(POLICY.stop_timeout_s)]
        assert s.get("KillMode", []) == (["mixed"] if c.name == "worker" else [])
        # No Requires/BindsTo/After between our own components: a crash stays isolated.
        deps = " ".join(s.get("Requires", []) + s.get("BindsTo", []) + s.get("After", [])
                        + s.get("Wants", []))
        assert "brokersync" not in deps
        assert s["WantedBy"] == ["brokersync.target"]


def test_target_wants_every_component() -> None:
    files = render_systemd(SAMPLE)
    s = _settings(files["brokersync.target"])
    assert s["Wants"] == [" ".join(service_name(c) + ".service" for c in SAMPLE)]
    assert s["WantedBy"] == ["multi-user.target"]
    assert sorted(files) == sorted([service_name(c) + ".service" for c in SAMPLE] + ["brokersync.target"])


def test_a_relative_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        render_systemd(SAMPLE, prefix="opt/brokersync")

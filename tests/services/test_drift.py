"""The committed services/ folders are exactly `brokersync services render` output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from brokersync.services import NSSM_DIR, SYSTEMD_DIR, drift, render_all
from tests.conftest import ROOT


def test_committed_service_files_match_the_registry() -> None:
    problems = drift(ROOT, render_all())
    assert problems == [], (
        "services/ is out of date with brokersync/components.py; run `brokersync services render` "
        "and commit the result:\n  " + "\n  ".join(problems)
    )


def _copy_services(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for folder in (NSSM_DIR, SYSTEMD_DIR):
        shutil.copytree(ROOT / folder, root / folder)
    return root


def test_drift_names_changed_missing_and_stale_files(tmp_path: Path) -> None:
    root = _copy_services(tmp_path)
    files = render_all()
    assert drift(root, files) == []
    install = root / NSSM_DIR / "install.ps1"
    install.write_text(install.read_text().replace("'78', 'Exit'", "'78', 'Restart'"))
    (root / SYSTEMD_DIR / "brokersync.target").unlink()
    (root / SYSTEMD_DIR / "brokersync-gone.service").write_text("[Service]\n")
    assert drift(root, files) == [
        "differs: services/nssm/install.ps1",
        "missing: services/systemd/brokersync.target",
        "stale: services/systemd/brokersync-gone.service",
    ]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SYSTEMROOT": "C:\\Windows"}
    return subprocess.run([sys.executable, "-m", "brokersync", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_render_check_fails_on_drift_and_render_repairs_it(tmp_path: Path) -> None:
    root = _copy_services(tmp_path)
    (root / SYSTEMD_DIR / "brokersync-gone.service").write_text("[Service]\n")
    r = _cli(["services", "render", "--check", "--root", str(root)], tmp_path)
    assert r.returncode == 1
    assert "stale: services/systemd/brokersync-gone.service" in r.stderr

    r = _cli(["services", "render", "--root", str(root)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "services/systemd/brokersync-gone.service (removed)" in r.stdout
    r = _cli(["services", "render", "--check", "--root", str(root)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert drift(root, render_all()) == []

"""The README stays true: every setting documented, the two quick-start commands exist and CI runs one."""

from __future__ import annotations

import re
from pathlib import Path

from brokersync.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented():
    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in README]
    assert missing == []


def test_quick_start_commands_are_real_targets_and_ci_runs_the_test_one():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test", "run-producer", "psql", "bench", "chaos"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
        assert f"make {target}" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()

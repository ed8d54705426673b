"""The short chaos run inside `make test` (`make chaos` runs many more trials)."""

from __future__ import annotations

import pytest

from bench import chaos


@pytest.mark.timeout(600)
def test_one_chaos_trial_loses_nothing():
    report = chaos.run(trials=1, duration=12, seed=20261121, verbose=False)
    print(report.line())
    assert report.trials == 1
    assert sum(report.faults.values()) >= 4, "faults were injected"
    assert report.events_checked > 500 and report.malformed > 0 and report.notifications > 0
    assert report.mismatches == []

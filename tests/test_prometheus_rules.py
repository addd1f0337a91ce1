"""The shipped alerting rules (etc/prometheus/) are valid and do what they say: `promtool
check rules` and `promtool test rules` (Debian's prometheus package; .ci/run installs it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parent.parent / "etc" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus package")
    return found


def test_the_alerting_rules_are_valid():
    done = subprocess.run([promtool(), "check", "rules", str(RULES / "replicante-poller.rules.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 14 rules found" in done.stdout


def test_the_alerting_rules_fire_as_their_unit_tests_say():
    done = subprocess.run([promtool(), "test", "rules", "replicante-poller.rules.test.yml"], cwd=RULES,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout

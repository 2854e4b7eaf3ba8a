"""Runs the Fetch User Profile script's own tests (tests/js/) under Node.js, so CI runs them with pytest."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_fetch_user_profile_script_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed; the profile script's tests need it")
    result = subprocess.run([node, "--test", "tests/js/"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.M)
    assert "# fail 0" in result.stdout and passed and int(passed.group(1)) >= 7, result.stdout

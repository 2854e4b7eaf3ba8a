"""scripts/setup-tests checks Node.js and npm (scripts/check-node) before it installs anything: the one thing it
cannot install itself, so it says what to install, with the version tests/js/package.json requires."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK_NODE = REPO / "scripts" / "check-node"


def required_node() -> int:
    """tests/js/package.json's engines.node, ">=N": the one place that says which Node.js the tests need."""
    engines = json.loads((REPO / "tests" / "js" / "package.json").read_text())["engines"]["node"]
    match = re.fullmatch(r">=(\d+)", engines)
    assert match, f"tests/js/package.json's engines.node is {engines!r}, not >=N"
    return int(match[1])


def check_node(tmp_path: Path, node: str | None, npm: str | None) -> subprocess.CompletedProcess[str]:
    """scripts/check-node with a PATH holding only python3 and, when given, a node and an npm printing these."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "python3").symlink_to(sys.executable)
    for name, version in (("node", node), ("npm", npm)):
        if version is not None:
            (tools / name).write_text(f"#!/bin/sh\necho {version}\n")
            (tools / name).chmod(0o755)
    env = {"PATH": str(tools)}
    return subprocess.run(["/bin/bash", str(CHECK_NODE)], env=env, capture_output=True, text=True, timeout=30)


def test_this_machines_node_and_npm_pass() -> None:
    checked = subprocess.run([str(CHECK_NODE)], env=os.environ, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stderr


def test_the_required_version_and_newer_pass(tmp_path: Path) -> None:
    assert check_node(tmp_path, f"v{required_node()}.0.0", "7.0.0").returncode == 0


@pytest.mark.parametrize(
    ("node", "npm", "says"),
    [
        (None, None, "the JavaScript tests need Node.js {required} or newer, and there is no node on PATH"),
        ("v18.19.0", "9.2.0", "the JavaScript tests need Node.js {required} or newer, and node is v18.19.0"),
        ("v{below}.9.1", "10.2.4", "the JavaScript tests need Node.js {required} or newer, and node is v{below}.9.1"),
        ("v{required}.1.0", None, "the JavaScript tests need npm, and there is none on PATH"),
        ("v{required}.1.0", "6.14.4", "npm 6.14.4 cannot read tests/js/package-lock.json, which needs npm 7 or newer"),
    ],
    ids=["no node", "Debian 12's node", "one below", "no npm", "old npm"],
)
def test_a_missing_or_old_node_or_npm_says_what_to_install(
    tmp_path: Path, node: str | None, npm: str | None, says: str
) -> None:
    versions = {"required": required_node(), "below": required_node() - 1}
    node = node.format(**versions) if node else None
    checked = check_node(tmp_path, node, npm)
    assert checked.returncode == 1
    (line,) = checked.stderr.splitlines()
    assert line.startswith(f"scripts/check-node: {says.format(**versions)}: install Node.js {versions['required']} ")
    assert "NodeSource (https://github.com/nodesource/distributions)" in line
    assert "nodejs.org (https://nodejs.org/en/download)" in line


def test_setup_tests_checks_node_before_installing_anything() -> None:
    script = (REPO / "scripts" / "setup-tests").read_text()
    assert script.index("\nscripts/check-node\n") < script.index("apt-get") < script.index("npm ci")

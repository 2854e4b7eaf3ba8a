"""Without a gate the proxy serves on loopback only, however it was started: the address really listened on is
looked at, not only HOST (tiktok_proxy/listening.py). Each start runs in a network namespace with only a loopback
interface (tests/tools/lo_only.py), so that listening on 0.0.0.0 exposes nothing meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tiktok_proxy.config import ConfigError, Settings, require_gate_off_loopback

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
UVICORN = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "proxy:app"]
GATE = {"PROXY_SECRET": "gate-secret-value-0123456789"}


def lo_only(command: list[str], tmp_path: Path, seconds: float, env: dict[str, str], *listen: str) -> dict[str, Any]:
    """tests/tools/lo_only.py: the command in a namespace with only `lo`, a client trying /healthz meanwhile."""
    port = free_port()
    command = [part.replace("PORT", str(port)) for part in command]
    tool = [sys.executable, str(REPO / "tests" / "tools" / "lo_only.py"), str(port), str(seconds), *listen, "--"]
    environment = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", **env}  # no .env: cwd is tmp_path
    done = subprocess.run([*tool, *command], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["interfaces"] == ["lo"]  # nothing it listened on was reachable from outside the namespace
    return result


def refusal(host: str) -> str:
    """config.py's one line for HOST=host with no gate, whatever its wording."""
    with pytest.raises(ConfigError) as refused:
        require_gate_off_loopback(replace(Settings(), host=host))
    return f"tiktok-token-proxy: configuration error: {refused.value}"


@pytest.mark.parametrize(
    ("command", "listen", "host", "status"),
    [
        ([*UVICORN, "--host", "0.0.0.0", "--port", "PORT"], (), "0.0.0.0", 3),
        ([*UVICORN, "--host", "::", "--port", "PORT"], (), "::", 3),
        ([*UVICORN], ("--listen", "0.0.0.0"), "0.0.0.0", 3),  # a socket handed over by a service manager
        ([*UVICORN, "--host", "0.0.0.0", "--port", "PORT", "--workers", "2"], (), "0.0.0.0", None),
        ([sys.executable, str(REPO / "proxy.py"), "--host", "0.0.0.0", "--port", "PORT"], (), "0.0.0.0", 2),
    ],
    ids=["uvicorn --host 0.0.0.0", "uvicorn --host ::", "uvicorn --fd", "uvicorn --workers 2", "python proxy.py"],
)
def test_without_a_gate_it_refuses_to_serve_off_loopback_however_started(
    tmp_path: Path, command: list[str], listen: tuple[str, ...], host: str, status: int | None
) -> None:
    """It stops with config.py's line and a failure status, and a client that kept trying from the start got no
    answer: the check runs before any request is read. Several workers each stop with uvicorn's startup-failure
    status, and uvicorn's parent then stops (with its own status, 0)."""
    result = lo_only(command, tmp_path, 8, {}, *listen)
    lines = result["output"].splitlines()
    assert result["status"] is not None, result["output"]  # it stopped by itself
    assert refusal(host) in lines and result["answers"] == 0
    if status is None:
        assert any("failed to start, stopping the parent process" in line for line in lines)
    else:
        assert result["status"] == status
    assert "Traceback" not in result["output"]


@pytest.mark.parametrize(
    ("command", "env", "listen"),
    [
        ([*UVICORN, "--port", "PORT"], {}, ()),  # uvicorn's default host, 127.0.0.1
        ([*UVICORN], {}, ("--listen", "127.0.0.1")),
        ([*UVICORN, "--uds", "proxy.sock"], {}, ()),  # a Unix socket: who reaches it is on this machine
        ([*UVICORN, "--host", "0.0.0.0", "--port", "PORT"], GATE, ()),
        ([*UVICORN, "--host", "0.0.0.0", "--port", "PORT"], {"ALLOW_OPEN_RELAY": "true"}, ()),
    ],
    ids=["127.0.0.1", "--fd on 127.0.0.1", "--uds", "0.0.0.0 with a gate", "0.0.0.0 with ALLOW_OPEN_RELAY"],
)
def test_on_loopback_or_with_a_gate_it_serves(
    tmp_path: Path, command: list[str], env: dict[str, str], listen: tuple[str, ...]
) -> None:
    result = lo_only(command, tmp_path, 4, env, *listen)
    assert result["status"] is None and result["answers"] > 0, result["output"]
    assert "configuration error" not in result["output"]

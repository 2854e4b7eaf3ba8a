"""How the proxy stops (tiktok_proxy/shutdown.py): on SIGTERM it drains, then exits 0 when every request under way
got its answer, and 1 when the grace period ran out first. Each process is started as users start it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import ServerThread, free_port, wait_until_healthy
from stand_ins.tiktok import TOKEN_PATH, TikTokStandIn, drip
from test_cli import RunningProxy, clean_env
from test_token import code_grant

REPO = Path(__file__).resolve().parent.parent
SLOW_ANSWER = drip(b'{"access_token":"act.slow","expires_in":86400}', 0.02)  # TikTok answers in about a second
# shutdown.serve() on tests/tools/slow_app.py, with a grace period of 1 s; the port and the workers as arguments.
SERVE_SLOW_APP = (
    "import sys, uvicorn; from tiktok_proxy import shutdown; shutdown.serve(uvicorn.Config('slow_app:app', "
    "port=int(sys.argv[1]), workers=int(sys.argv[2]), lifespan='off', timeout_graceful_shutdown=1))"
)


def in_the_background(call: Callable[[], httpx.Response]) -> Callable[[], httpx.Response | Exception]:
    """Start a request in a thread; the function returned waits for its answer (or what went wrong)."""
    outcome: list[httpx.Response | Exception] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # e.g. the connection closed with no answer
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return lambda: (thread.join(30), outcome[0])[1]


def stopped(process: subprocess.Popen[str]) -> tuple[int, str, float]:
    """SIGTERM; the exit status, the output, and the seconds it took to stop."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    return process.returncode, output, time.monotonic() - started


@pytest.mark.parametrize("workers", ["1", "2"])
def test_python_proxy_py_answers_the_exchange_under_way_then_exits_0(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tiktok: TikTokStandIn, tmp_path: Path, workers: str
) -> None:
    _, tiktok_server = stand_in_server
    env = clean_env(WEB_CONCURRENCY=workers, TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH, TIKTOK_TIMEOUT="5")
    running = RunningProxy.start([], env, tmp_path)
    tiktok.fault = SLOW_ANSWER
    answer = in_the_background(lambda: httpx.post(running.url + "/proxy/token", data=code_grant("any"), timeout=10))
    deadline = time.monotonic() + 10
    while not tiktok.seen and time.monotonic() < deadline:  # the exchange has reached TikTok: it is under way
        time.sleep(0.01)
    status, output, seconds = stopped(running.process)
    response = answer()
    assert isinstance(response, httpx.Response) and response.status_code == 200, (response, output)
    assert response.json()["access_token"] == "act.slow"
    assert status == 0, output
    assert "event=token outcome=ok" in output and "Finished server process" in output
    assert "timeout graceful shutdown exceeded" not in output and "Traceback" not in output
    assert seconds < 10, output


def test_under_uvicorns_own_command_line_the_status_is_uvicorns(tmp_path: Path) -> None:
    # What the docs say of `uvicorn proxy:app`: uvicorn raises SIGTERM again after its shutdown, so the process
    # dies of it, however the drain went. `python proxy.py` is the start that reports the drain (above).
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "--port", str(port), "proxy:app"],
        env=clean_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_until_healthy(f"http://127.0.0.1:{port}", process)
    status, output, _ = stopped(process)
    assert status == -signal.SIGTERM, output
    assert "Finished server process" in output


def serving_the_slow_app(workers: str, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """SERVE_SLOW_APP in a process of its own, once it answers; the process and its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SLOW_APP, str(port), workers],
        env=clean_env(PYTHONPATH=f"{REPO}:{REPO / 'tests' / 'tools'}"), cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process)  # any path but /slow answers at once
    return process, url


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_drain_cut_short_by_the_grace_period_exits_1(tmp_path: Path, workers: str) -> None:
    process, url = serving_the_slow_app(workers, tmp_path)
    answer = in_the_background(lambda: httpx.get(url + "/slow", timeout=30))
    time.sleep(0.3)  # the request has arrived
    status, output, seconds = stopped(process)
    cut = answer()
    assert isinstance(cut, httpx.Response) and cut.status_code == 500, cut  # uvicorn's answer to a cancelled request
    assert status == 1, output
    assert "timeout graceful shutdown exceeded" in output  # uvicorn's line: it cancelled the request
    assert seconds < 10, output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_control_the_same_server_with_nothing_under_way_exits_0(tmp_path: Path, workers: str) -> None:
    process, _ = serving_the_slow_app(workers, tmp_path)
    status, output, _ = stopped(process)
    assert status == 0, output

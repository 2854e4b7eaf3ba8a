"""The proxy as users run it: `python proxy.py` in its own process, with its real logging."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerThread, free_port, wait_until_healthy
from tiktok_stand_in import CLIENT_KEY, CLIENT_SECRET, REDIRECT_URI, REVOKE_PATH, TOKEN_PATH, TikTokStandIn

REPO = Path(__file__).resolve().parent.parent


def clean_env(**variables: str) -> dict[str, str]:
    """Only what the test sets: no stray TIKTOK_* or .env from the developer's shell."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONUNBUFFERED": "1", **variables}


@pytest.mark.parametrize(
    "command",
    [[sys.executable, str(REPO / "proxy.py")], [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "proxy:app"]],
    ids=["python proxy.py", "uvicorn proxy:app"],
)
def test_bad_configuration_stops_startup_with_one_line(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        command, env=clean_env(TIKTOK_TIMEOUT="ten"), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "tiktok-token-proxy: configuration error: TIKTOK_TIMEOUT must be a number, got 'ten'"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIKTOK_TIMEOUT=ten\nLOG_LEVEL=LOUD\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "proxy.py")],
        env=clean_env(TIKTOK_TIMEOUT="3"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "LOG_LEVEL must be one of" in result.stderr  # from .env; TIKTOK_TIMEOUT=ten was overridden


class RunningProxy:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.url = process, f"http://127.0.0.1:{port}"

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=15)
        return output


@pytest.fixture
def running_proxy(stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path: Path) -> Iterator[RunningProxy]:
    _, tiktok_server = stand_in_server
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
        env=clean_env(
            LOG_LEVEL="DEBUG",
            TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH,
            TIKTOK_REVOKE_URL=tiktok_server.url + REVOKE_PATH,
            TIKTOK_TIMEOUT="2",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningProxy(process, port)
    wait_until_healthy(running.url, process)
    yield running
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_no_secret_code_verifier_or_token_reaches_the_log(running_proxy: RunningProxy, tiktok: TikTokStandIn) -> None:
    """A full session at LOG_LEVEL=DEBUG (uvicorn, httpx and httpcore included): nothing sensitive is logged."""
    verifier = "Verifier-" + "v" * 40
    code = tiktok.issue_code(code_verifier=verifier)
    sensitive = [CLIENT_SECRET, code, verifier]
    with httpx.Client(base_url=running_proxy.url) as client:
        exchange = {
            "client_id": CLIENT_KEY,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
        first = client.post("/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange})
        assert first.status_code == 200, first.text
        sensitive += [first.json()["access_token"], first.json()["refresh_token"]]
        refresh = {
            "grant_type": "refresh_token",
            "client_id": CLIENT_KEY,
            "client_secret": CLIENT_SECRET,
            "refresh_token": first.json()["refresh_token"],
        }
        second = client.post("/proxy/token", data=refresh)
        assert second.status_code == 200, second.text
        sensitive += [second.json()["access_token"], second.json()["refresh_token"]]
        revoked = client.post(
            "/proxy/revoke",
            data={"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "token": second.json()["access_token"]},
        )
        assert revoked.status_code == 200, revoked.text
        reused = client.post("/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange})
        assert reused.status_code == 400
        refused = client.post(
            "/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange, "client_secret": ""}
        )
        assert refused.status_code == 400
        tiktok.fault = lambda: httpx_html_500()
        failed = client.post("/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange})
        assert failed.status_code == 502
        for response in (reused, refused, failed):
            assert not any(value in response.text for value in sensitive)
    log = running_proxy.stop()

    assert log.count("event=token ") == 5, log
    assert "event=revoke outcome=ok" in log
    assert "event=token outcome=ok grant=authorization_code client_key=aw1testclientkey upstream_status=200" in log
    assert "INFO tiktok_proxy event=start token_url=http://127.0.0.1:" in log
    assert "WARNING tiktok_proxy neither PROXY_SECRET nor ALLOWED_CLIENT_KEYS is set" in log
    assert "outcome=invalid_grant" in log and "outcome=server_error" in log
    # The capture really ran at DEBUG, and the DEBUG lines name parameters, never their values.
    assert (
        "DEBUG tiktok_proxy event=token_request params=client_id,client_secret,code,code_verifier,grant_type,redirect_uri"
        in log
    )
    assert "DEBUG tiktok_proxy.upstream upstream_connect host=127.0.0.1" in log
    for value in sensitive:
        assert value not in log


def httpx_html_500():  # type: ignore[no-untyped-def]
    from starlette.responses import HTMLResponse

    return HTMLResponse("<h1>oops</h1>", status_code=500)


def test_sigterm_stops_the_proxy_cleanly(running_proxy: RunningProxy) -> None:
    log = running_proxy.stop()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why it stopped.
    assert running_proxy.process.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in log
    assert "Traceback" not in log


def test_several_workers_serve_the_same_exchanges(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tiktok: TikTokStandIn, tmp_path: Path
) -> None:
    _, tiktok_server = stand_in_server
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
        env=clean_env(WEB_CONCURRENCY="2", TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningProxy(process, port)
    try:
        wait_until_healthy(running.url, process)
        credentials = {"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT_URI}
        for _ in range(20):  # a fresh connection each time, so both workers get some
            code = tiktok.issue_code()
            response = httpx.post(
                running.url + "/proxy/token", data={"grant_type": "authorization_code", "code": code, **credentials}
            )
            assert response.status_code == 200, response.text
    finally:
        log = running.stop()
    assert log.count("event=token outcome=ok") == 20
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2, log
    assert "Traceback" not in log

"""TikTok misbehaving at the socket level, with the proxy under uvicorn: every fault ends in a clear 502 or 504."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tiktok_proxy.app import create_app
from tiktok_proxy.config import Settings

from conftest import PROXY_TIMEOUT, ServerThread, free_port, timer, wait_until_healthy
from stand_ins.faulty_upstream import (
    TOKEN,
    FaultyUpstream,
    answer,
    answer_then_hang_up,
    drip,
    garbage,
    headers_then_silence,
    huge,
    interim_then,
    never_answer,
    reset_mid_body,
    slowly,
)
from test_token import assert_oauth_error

GRANT = {"grant_type": "client_credentials", "client_id": "aw1faultkey", "client_secret": "fault-secret-value"}
THIRTY_MB = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def faulty_proxy(upstream: FaultyUpstream) -> Iterator[httpx.Client]:
    settings = replace(Settings(), token_url=upstream.url, timeout=PROXY_TIMEOUT)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def pool_of_its_own(upstream: FaultyUpstream) -> Iterator[httpx.Client]:
    """A new proxy, so its connection pool starts empty."""
    settings = replace(Settings(), token_url=upstream.url, timeout=PROXY_TIMEOUT)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def fresh(upstream: FaultyUpstream) -> FaultyUpstream:
    upstream.requests = upstream.connections = 0
    upstream.behaviour = answer(200, TOKEN)
    return upstream


@pytest.mark.parametrize(
    ("behaviour", "status", "fragment"),
    [
        (never_answer(), 504, "did not answer within"),
        (headers_then_silence(), 504, "did not answer within"),
        (drip(TOKEN, 1.0), 504, "did not answer within"),
        (reset_mid_body(), 502, "closed before a complete answer"),
        (huge(THIRTY_MB, declared=True), 502, "over 1048576 bytes"),
        (huge(THIRTY_MB, declared=False), 502, "over 1048576 bytes"),
        (answer(301, b"", headers="Location: https://elsewhere.example/steal\r\n"), 502, "redirect (HTTP 301)"),
        (answer(307, b"", headers="Location: /v2/oauth/token/\r\n"), 502, "redirect (HTTP 307)"),
        (answer(200, b'{"access_token": "act.x", '), 502, "not JSON"),
        (answer(200, json.dumps({"access_token": 123}).encode()), 502, "neither a token nor an error"),
        (answer(200, json.dumps({"access_token": "act.x", "expires_in": "86400"}).encode()), 502, "expires_in"),
        (answer(200, json.dumps([{"access_token": "act.x"}]).encode()), 502, "neither a token nor an error"),
        (garbage(), 502, "not valid HTTP"),
    ],
    ids=[
        "accept-never-answer", "headers-then-silence", "drip-1-byte-a-second", "reset-mid-body", "30MB-declared",
        "30MB-chunked", "301", "307", "invalid-json", "access_token-123", "expires_in-string", "list",
        "not-http",
    ],
)  # fmt: skip
def test_each_fault_ends_in_a_clear_error_within_the_deadline(
    faulty_proxy: httpx.Client, fresh: FaultyUpstream, behaviour: object, status: int, fragment: str
) -> None:
    fresh.behaviour = behaviour  # type: ignore[assignment]
    with timer() as elapsed:
        response = faulty_proxy.post("/proxy/token", data=GRANT)
    body = assert_oauth_error(response, status, "server_error" if status == 502 else "temporarily_unavailable")
    assert fragment in body["error_description"]
    assert elapsed() < PROXY_TIMEOUT + 1.0
    assert fresh.requests == 1  # never retried, never redirected
    assert "fault-secret-value" not in response.text
    fresh.behaviour = answer(200, TOKEN)
    assert faulty_proxy.post("/proxy/token", data=GRANT).status_code == 200  # and the proxy carries on


@pytest.mark.parametrize(
    "behaviour",
    [answer(200, TOKEN, chunked=True), answer(200, TOKEN, close_delimited=True), interim_then(200, TOKEN)],
    ids=["chunked", "close-delimited", "100-continue-first"],
)
def test_every_valid_http_framing_is_read(faulty_proxy: httpx.Client, fresh: FaultyUpstream, behaviour: object) -> None:
    fresh.behaviour = behaviour  # type: ignore[assignment]
    for _ in range(2):
        response = faulty_proxy.post("/proxy/token", data=GRANT)
        assert response.status_code == 200, response.text
        assert response.json()["access_token"] == "act.fault"


def test_connections_are_kept_alive_and_reused(pool_of_its_own: httpx.Client, fresh: FaultyUpstream) -> None:
    for _ in range(5):
        assert pool_of_its_own.post("/proxy/token", data=GRANT).status_code == 200
    assert (fresh.requests, fresh.connections) == (5, 1)


def test_an_idle_connection_closed_by_tiktok_is_not_reused(
    pool_of_its_own: httpx.Client, fresh: FaultyUpstream
) -> None:
    fresh.behaviour = answer_then_hang_up(200, TOKEN)
    for _ in range(3):
        assert pool_of_its_own.post("/proxy/token", data=GRANT).status_code == 200
        time.sleep(0.2)  # TikTok's close reaches the proxy before the next request
    assert (fresh.requests, fresh.connections) == (3, 3)


def test_connection_refused_is_retried_once_then_502(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(token_url=f"http://127.0.0.1:{free_port()}/v2/oauth/token/")
    body = assert_oauth_error(client.post("/proxy/token", data=GRANT), 502, "server_error")
    assert "unreachable" in body["error_description"]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_memory_and_connections_return_to_baseline_after_faults(upstream: FaultyUpstream, tmp_path: Path) -> None:
    port = free_port()
    env = {"PATH": os.environ["PATH"], "TIKTOK_TOKEN_URL": upstream.url, "TIKTOK_TIMEOUT": "1", "LOG_LEVEL": "ERROR"}
    script = Path(__file__).resolve().parent.parent / "proxy.py"
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port)], env=env, cwd=tmp_path)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)

        def exchange(_: int) -> int:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as own:
                return own.post("/proxy/token", data=GRANT).status_code

        upstream.behaviour = answer(200, TOKEN)
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(exchange, range(200))) == {200}
        fds, rss = open_fds(process.pid), rss_kib(process.pid)

        faults = [never_answer(), headers_then_silence(), reset_mid_body(), huge(THIRTY_MB, declared=False), garbage()]
        for behaviour in faults:
            upstream.behaviour = behaviour
            with ThreadPoolExecutor(16) as pool:
                assert set(pool.map(exchange, range(32))) <= {502, 504}

        upstream.behaviour = answer(200, TOKEN)
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(exchange, range(200))) == {200}
        time.sleep(0.2)
        # The pool may hold a different number of keep-alive connections (at most one per concurrent
        # exchange: 16); a leak would add one per failed exchange (160).
        assert open_fds(process.pid) <= fds + 16
        assert rss_kib(process.pid) < rss + 16 * 1024
    finally:
        process.terminate()
        process.wait(15)


def test_sigterm_lets_in_flight_exchanges_finish_and_refuses_new_ones(upstream: FaultyUpstream, tmp_path: Path) -> None:
    upstream.behaviour = slowly(1.0, 200, TOKEN)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "TIKTOK_TOKEN_URL": upstream.url, "TIKTOK_TIMEOUT": "5"}
    script = Path(__file__).resolve().parent.parent / "proxy.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port)], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, process)

        def exchange(_: int) -> httpx.Response:
            return httpx.post(base + "/proxy/token", data=GRANT, timeout=10)

        with ThreadPoolExecutor(8) as pool:
            before = upstream.requests
            in_flight = [pool.submit(exchange, n) for n in range(8)]
            deadline = time.monotonic() + 5
            while upstream.requests < before + 8 and time.monotonic() < deadline:  # all eight wait on TikTok now
                time.sleep(0.02)
            assert upstream.requests == before + 8
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            with pytest.raises(httpx.ConnectError):  # a new exchange is refused at once, not half-served
                httpx.post(base + "/proxy/token", data=GRANT, timeout=2)
            answers = [future.result() for future in in_flight]
        assert [answer.status_code for answer in answers] == [200] * 8
        assert all(answer.json()["access_token"] == "act.fault" for answer in answers)
        _, log = process.communicate(timeout=15)
        assert process.returncode in (0, -signal.SIGTERM)
        assert "Traceback" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_kept_alive_connection_closed_without_any_answer_is_resent_once_on_a_new_one(
    pool_of_its_own: httpx.Client, fresh: FaultyUpstream
) -> None:
    """After a bodiless 204, TikTok closes the connection instead of answering the next request: that request is
    sent again on a new connection. Once any byte of an answer has arrived, it never is."""
    calls = 0

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # keep-alive, and no length: nothing follows
        elif calls == 2:
            writer.close()  # not a byte of answer
            return
        elif calls == 3:
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(TOKEN)}\r\n\r\n".encode() + TOKEN)
        else:
            writer.write(b"HTTP/1.1 2")  # a byte of answer, then nothing more
            writer.close()
            return
        await writer.drain()

    fresh.behaviour = scripted
    assert pool_of_its_own.post("/proxy/token", data=GRANT).status_code == 502  # empty 204: not a token
    second = pool_of_its_own.post("/proxy/token", data=GRANT)
    assert second.status_code == 200, second.text  # the 204's state was not mistaken for this answer
    assert (fresh.requests, fresh.connections) == (3, 2)  # resent once, on a new connection
    third = pool_of_its_own.post("/proxy/token", data=GRANT)
    body = assert_oauth_error(third, 502, "server_error")
    assert "closed before a complete answer" in body["error_description"]
    assert (fresh.requests, fresh.connections) == (4, 2)  # part of an answer had arrived: never resent

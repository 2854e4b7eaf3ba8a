"""Serving limits over real sockets: the request deadline, the head cap, the connection cap, lingering closes.

The proxy runs under uvicorn with tiktok_proxy.serving's protocol and short limits (REQUEST_TIMEOUT=1), in a
thread; the last tests start it as users do (`python proxy.py`, `uvicorn proxy:app --http ...`).
"""

from __future__ import annotations

import base64
import gc
import http.client
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tiktok_proxy import serving
from tiktok_proxy.app import create_app
from tiktok_proxy.config import Settings
from tiktok_proxy.serving import OpenFiles

from conftest import ServerThread, free_port, oidc_env, timer, wait_until_healthy
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REDIRECT_URI, REVOKE_PATH, TOKEN_PATH, TikTokStandIn

REPO = Path(__file__).resolve().parent.parent
MARKER = "SeCrEt-marker-value"  # sent where a secret would be; finding it in a log line means it leaked
TWO_MIB = 2 * 1024 * 1024
UVICORN = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "proxy:app"]


@pytest.fixture(scope="module")
def limited(base_settings: Settings) -> Iterator[ServerThread]:
    settings = replace(base_settings, request_timeout=1)
    with ServerThread(create_app(settings), http=serving.protocol_for(settings)) as server:
        yield server


def connect(server: ServerThread | int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server if isinstance(server, int) else server.port))
    sock.settimeout(10)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset fails the test (the client lost the answer)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON body of one whole answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert len(body) == int(headers["content-length"]), raw
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_refusal(raw: bytes, status: int, error: str = "invalid_request") -> dict[str, str]:
    code, headers, body = parse(raw)
    assert code == status, raw
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["connection"] == "close"
    assert body["error"] == error and body["error_description"], body
    return headers


def proxy_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("tiktok_proxy")]
    assert not [line for line in lines if MARKER in line or CLIENT_SECRET in line], "a secret leaked into the log"
    return lines


def refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    return [line for line in proxy_lines(caplog) if line.startswith(f"event=refused reason={reason} ")]


# ------------------------------------------------------------------------------- the request deadline


def test_a_connection_that_sends_nothing_is_closed_silently_at_the_deadline(
    limited: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """As nginx does: no unsolicited 408, which a front door that opened the connection ahead of time would take
    for the answer to the request it is just sending."""
    caplog.set_level(logging.DEBUG, logger="tiktok_proxy")
    with connect(limited) as sock, timer() as elapsed:
        raw = read_to_end(sock)
        assert 0.8 <= elapsed() <= 3
    assert raw == b""
    assert not refusals(caplog, "deadline")
    assert "event=closed reason=no_request request_timeout=1" in proxy_lines(caplog)


def test_a_dripped_head_is_cut_at_the_deadline_however_often_data_arrives(
    limited: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(limited) as sock, timer() as elapsed:
        sock.sendall(b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\n")
        drips = 0
        while not select.select([sock], [], [], 0.3)[0] and elapsed() < 5:  # one header line every 0.3 s
            sock.sendall(f"X-Drip-{drips}: {MARKER}\r\n".encode())
            drips += 1
        cut_after = elapsed()
        try:
            raw = read_to_end(sock)
        except ConnectionResetError:  # a drip that crossed the close resets it; the cut is what counts here
            raw = b""
    assert 0.8 <= cut_after <= 3 and drips >= 2
    if raw:
        assert_refusal(raw, 408)
    assert refusals(caplog, "deadline") == ["event=refused reason=deadline status=408 phase=head request_timeout=1"]


def test_a_body_that_never_finishes_gets_a_408_and_only_one_log_line(
    limited: ServerThread, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    body = f"grant_type=authorization_code&client_id={CLIENT_KEY}&client_secret={MARKER}&code="
    with connect(limited) as sock, timer() as elapsed:
        sock.sendall(
            b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 500\r\n\r\n" + body.encode()
        )
        raw = read_to_end(sock)
        assert 0.8 <= elapsed() <= 3
    assert_refusal(raw, 408)
    time.sleep(0.2)  # the app sees the cut as a disconnect: give it the time to (wrongly) log it
    # One line: the cut, not also the app's "client disconnected" 400.
    assert proxy_lines(caplog) == ["event=refused reason=deadline status=408 phase=body request_timeout=1"]
    assert tiktok.seen == []


def test_a_connection_reset_after_its_answer_releases_its_protocol_at_once(limited: ServerThread) -> None:
    """uvicorn cancels its keep-alive timer only when a connection ends cleanly: one reset by the client (RST) stayed
    in memory, held by that timer, for KEEP_ALIVE_TIMEOUT (75 s), so clients that connect, ask and reset could pile
    up the worker's memory. The serving protocol cancels it however the connection ends."""
    protocol_class = limited.server.config.http
    assert isinstance(protocol_class, type) and issubclass(protocol_class, serving.LimitedProtocol)

    def alive() -> int:
        gc.collect()
        return sum(1 for thing in gc.get_objects() if type(thing) is protocol_class)

    before = alive()
    for _ in range(100):
        sock = connect(limited)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    deadline = time.monotonic() + 5
    while alive() > before + 2 and time.monotonic() < deadline:  # each reset reaches the server within moments
        time.sleep(0.05)
    assert alive() <= before + 2


def test_a_kept_alive_connection_serves_exchange_after_exchange(
    limited: ServerThread, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline runs per request: four exchanges over 1.6 s on one connection, each well within it."""
    connection = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=10)
    sockets = set()
    for _ in range(4):
        form = f"grant_type=authorization_code&client_id={CLIENT_KEY}&client_secret={CLIENT_SECRET}&code="
        form += f"{tiktok.issue_code()}&redirect_uri={REDIRECT_URI}"
        connection.request("POST", "/proxy/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        assert json.loads(response.read())["access_token"].startswith("act.")
        sockets.add(id(connection.sock))
        time.sleep(0.4)
    connection.close()
    assert len(sockets) == 1  # one connection throughout
    assert not refusals(caplog, "deadline")
    assert len([line for line in proxy_lines(caplog) if line.startswith("event=token outcome=ok")]) == 4


def test_pipelined_requests_are_all_answered(limited: ServerThread) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"
    with connect(limited) as sock:
        sock.sendall(request * 3 + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        raw = read_to_end(sock)
    assert raw.count(b"HTTP/1.1 200 OK") == 4


# ------------------------------------------------------------------------------- the head cap


def test_a_head_over_16_kib_gets_431_and_one_just_under_is_served(
    limited: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(limited) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nX-Big: " + b"a" * 15_000 + b"\r\nConnection: close\r\n\r\n"
        )
        assert parse(read_to_end(sock))[0] == 200
    with connect(limited) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nAuthorization: Basic " + MARKER.encode() + b"a" * 17 * 1024 + b"\r\n\r\n"
        )
        assert_refusal(read_to_end(sock), 431)
    assert refusals(caplog, "head") == ["event=refused reason=head status=431 max_head_bytes=16384"]


def test_a_large_body_in_the_same_read_as_its_head_is_not_taken_for_a_head(limited: ServerThread) -> None:
    form = "&".join(f"p{index}=" + "v" * 900 for index in range(60))  # 55 KiB, under the 64 KiB body cap
    head = f"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\nConnection: close\r\n\r\n"
    with connect(limited) as sock:
        sock.sendall(head.encode() + form.encode())
        status, _, body = parse(read_to_end(sock))
    assert status == 400 and "missing" in body["error_description"]  # read whole, then refused for its content


def test_a_never_ending_head_line_is_answered_after_16_kib(limited: ServerThread) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        sent = 0
        while not select.select([sock], [], [], 0.05)[0]:
            sock.sendall(b"a" * 4096)
            sent += 4096
            assert sent < 128 * 1024, "no answer while the head grew past 128 KiB"
        while sent < TWO_MIB:  # the client keeps sending; the server reads and drops it, and the 431 stays readable
            sock.sendall(b"a" * 65536)
            sent += 65536
        assert_refusal(read_to_end(sock), 431)


# ------------------------------------------------------------------------------- the connection cap


def test_past_max_connections_new_ones_get_a_fast_503_and_a_few_warnings(
    base_settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "WARN_EVERY_SECONDS", 0.5)
    settings = replace(base_settings, request_timeout=5, max_connections=5)
    with ServerThread(create_app(settings), http=serving.protocol_for(settings)) as server:
        held = [connect(server) for _ in range(5)]
        for sock in held:  # each in the middle of a request: busy, so none can make room
            sock.sendall(b"POST /proxy/token HTTP/1.1\r\n")
        time.sleep(0.2)
        for _ in range(30):
            with connect(server) as sock, timer() as elapsed:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
                headers = assert_refusal(read_to_end(sock), 503, "temporarily_unavailable")
                assert elapsed() < 1
            assert headers["retry-after"] == "5"
        time.sleep(0.8)  # the refusals after the first warning are reported together, at most 0.5 s later
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            assert parse(read_to_end(sock))[0] == 200  # a freed slot serves again
    warnings = [record for record in caplog.records if "reason=full" in record.getMessage()]
    assert 2 <= len(warnings) <= 4  # never one per connection
    assert all(record.levelno == logging.WARNING for record in warnings)
    counted = [int(record.getMessage().split("connections_refused=")[1].split()[0]) for record in warnings]
    assert sum(counted) == 30  # every refusal is counted in some line: none is dropped silently
    assert "max_connections=5" in warnings[0].getMessage()


def exchange_on(sock: socket.socket, tiktok: TikTokStandIn, *, close: bool = False) -> dict[str, str]:
    """One token exchange on an open connection, as Auth0 sends it; the answer's JSON."""
    form = f"grant_type=authorization_code&client_id={CLIENT_KEY}&client_secret={CLIENT_SECRET}"
    form += f"&code={tiktok.issue_code()}&redirect_uri={REDIRECT_URI}"
    head = "POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    head += f"Content-Length: {len(form)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    sock.sendall(head.encode() + form.encode())
    return read_answer(sock)


def read_answer(sock: socket.socket) -> dict[str, str]:
    """One answer framed by Content-Length, leaving the connection open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 "), raw
    return json.loads(body)  # type: ignore[no-any-return]


def test_at_max_connections_the_longest_idle_connection_makes_room(
    base_settings: Settings, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """Long keep-alive must not starve the cap: as nginx does, the connection idle the longest is closed to admit
    a new one, and only when none is idle is a new one refused."""
    settings = replace(base_settings, request_timeout=5, max_connections=3)
    with ServerThread(create_app(settings), http=serving.protocol_for(settings)) as server:
        caplog.set_level(logging.DEBUG, logger="tiktok_proxy")  # after the lifespan set LOG_LEVEL
        kept = [connect(server) for _ in range(3)]
        for sock in kept:  # each served once and kept alive, the first one idle the longest
            assert exchange_on(sock, tiktok)["access_token"].startswith("act.")
            time.sleep(0.05)
        with connect(server) as newcomer:
            assert exchange_on(newcomer, tiktok, close=True)["access_token"].startswith("act.")
        assert kept[0].recv(1) == b""  # closed silently, with no answer it did not ask for
        for sock in kept[1:]:  # the others were left alone and still serve
            assert exchange_on(sock, tiktok)["access_token"].startswith("act.")
        extra = connect(server)  # the third place again
        for sock in [*kept[1:], extra]:  # all busy in the middle of a request: no room can be made
            sock.sendall(b"POST /proxy/token HTTP/1.1\r\n")
        time.sleep(0.1)
        with connect(server) as refused:
            refused.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
            assert_refusal(read_to_end(refused), 503, "temporarily_unavailable")
        extra.close()
        for sock in kept:
            sock.close()
    assert len([line for line in proxy_lines(caplog) if line == "event=closed reason=idle_at_max_connections"]) == 1


def test_an_idle_connection_with_a_request_on_its_way_is_not_the_one_closed(
    base_settings: Settings, tiktok: TikTokStandIn
) -> None:
    """An idle connection whose next request already waits in its socket is busy, not idle: it keeps its place."""
    settings = replace(base_settings, request_timeout=5, max_connections=2)
    protocol = serving.protocol_for(settings)
    with ServerThread(create_app(settings), http=protocol) as server:
        first, second = connect(server), connect(server)
        assert exchange_on(first, tiktok)["access_token"]
        assert exchange_on(second, tiktok)["access_token"]
        time.sleep(0.1)
        # Freeze the server's loop, so that the request sent now waits unread when the newcomer arrives.
        pause = threading.Event()
        resumed = threading.Event()
        loop = next(iter(protocol.limits.idle)).loop  # the server thread's: block it with a callback
        loop.call_soon_threadsafe(lambda: (pause.set(), resumed.wait(5)))
        assert pause.wait(5)
        form = f"grant_type=authorization_code&client_id={CLIENT_KEY}&client_secret={CLIENT_SECRET}"
        form += f"&code={tiktok.issue_code()}&redirect_uri={REDIRECT_URI}"
        first.sendall(
            b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(form)}\r\n\r\n{form}".encode()
        )
        newcomer = connect(server)
        time.sleep(0.1)
        resumed.set()
        assert read_answer(first)["access_token"].startswith("act.")  # first was idle longest, but busy
        assert second.recv(1) == b""  # so the other idle one made room
        assert exchange_on(newcomer, tiktok, close=True)["access_token"].startswith("act.")
        for sock in (first, second, newcomer):
            sock.close()


# ------------------------------------------------------------------------------- answering, then closing


def test_a_client_that_keeps_sending_a_2_mib_body_reads_the_413(limited: ServerThread) -> None:
    """Without a lingering close, the kernel resets such a connection and the client often never sees the 413."""
    body = b"a" * TWO_MIB
    for _ in range(20):  # as urllib sends it: Connection: close
        request = urllib.request.Request(limited.url + "/proxy/token", data=body)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"] == "invalid_request"
    for framing in (f"Content-Length: {TWO_MIB}", "Transfer-Encoding: chunked") * 10:  # kept alive
        chunked = "chunked" in framing
        with connect(limited) as sock:
            sock.sendall(f"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\n{framing}\r\n\r\n".encode())
            for offset in range(0, TWO_MIB, 65536):
                piece = body[offset : offset + 65536]
                sock.sendall(b"10000\r\n" + piece + b"\r\n" if chunked else piece)
            status, headers, answer = parse(read_to_end(sock))
        assert status == 413 and answer["error"] == "invalid_request"


def test_an_early_answer_on_a_kept_alive_connection_ends_it(limited: ServerThread) -> None:
    """An answer sent before the body is all in (here a 404) closes the connection, and says so: no half-read
    body is parsed as the next request."""
    with connect(limited) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        status, headers, _ = parse(read_to_end(sock))
    assert status == 404 and headers["connection"] == "close"


GATE_SECRET = "gate-secret-value-0123456789"


@pytest.fixture(scope="module")
def gated(base_settings: Settings) -> Iterator[ServerThread]:
    settings = replace(base_settings, request_timeout=2, proxy_secrets=frozenset({GATE_SECRET}))
    with ServerThread(create_app(settings), http=serving.protocol_for(settings)) as server:
        yield server


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Length: 5000\r\n\r\n", 401),  # the gate, before the body
        (b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nX-Proxy-Secret: " + GATE_SECRET.encode()
         + b"\r\nContent-Length: 200000\r\n\r\n", 413),  # by Content-Length, before the body
    ],
    ids=["401 before the body", "413 by Content-Length"],
)  # fmt: skip
def test_an_answer_before_the_body_says_connection_close(gated: ServerThread, head: bytes, status: int) -> None:
    with connect(gated) as sock:
        sock.sendall(head + b"grant_type=")  # the rest of the body is still on its way
        code, headers, body = parse(read_to_end(sock))
    assert code == status and headers["connection"] == "close" and body["error"]


def test_an_answer_to_a_whole_request_keeps_the_connection(gated: ServerThread) -> None:
    """The gate's 401 to a request that arrived whole closes nothing: the front door may reuse the connection."""
    with connect(gated) as sock:
        for _ in range(2):
            sock.sendall(b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Length: 3\r\n\r\nx=y")
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 401 ") and b"connection: close" not in head.lower()


TOKEN_REQUEST = (
    "POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    "Content-Length: {length}\r\n\r\n{form}"
)


def token_request(tiktok: TikTokStandIn) -> bytes:
    form = f"grant_type=authorization_code&client_id={CLIENT_KEY}&client_secret={CLIENT_SECRET}"
    form += f"&code={tiktok.issue_code()}&redirect_uri={REDIRECT_URI}"
    return TOKEN_REQUEST.format(length=len(form), form=form).encode()


def split_answers(raw: bytes) -> list[tuple[int, dict[str, str], dict[str, str]]]:
    """Every answer in a stream of Content-Length-framed answers, in order."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))  # type: ignore[union-attr]
        answers.append(parse(head + b"\r\n\r\n" + rest[:length]))
        raw = rest[length:]
    return answers


@pytest.mark.parametrize(
    ("later", "status"),
    [
        (b"GARBAGE / HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nBad Header\x00: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 17 * 1024 + b"\r\n\r\n", 431),
    ],
    ids=["not HTTP", "a NUL in a header", "a head over 16 KiB"],
)
def test_pipelined_requests_are_answered_in_order_and_none_is_lost(
    limited: ServerThread, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture, later: bytes, status: int
) -> None:
    """A token exchange, then a malformed request in the same write: the exchange's answer goes out first, whole,
    and the refusal after it; the log's 200 is an answer the client really got."""
    with connect(limited) as sock:
        sock.sendall(token_request(tiktok) + token_request(tiktok) + later)
        answers = split_answers(read_to_end(sock))
    assert [code for code, _, _ in answers] == [200, 200, status], answers
    assert all(body["access_token"].startswith("act.") for _, _, body in answers[:2])
    assert answers[2][1]["connection"] == "close" and answers[2][2]["error"] == "invalid_request"
    assert answers[2][1]["content-type"] == "application/json"
    assert len([line for line in proxy_lines(caplog) if line.startswith("event=token outcome=ok")]) == 2


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"


def test_more_pipelined_requests_than_are_parsed_ahead_are_all_answered_in_order(
    limited: ServerThread, tiktok: TikTokStandIn
) -> None:
    """Past PIPELINE_DEPTH waiting, the rest of a read waits unparsed, and is parsed as the answers go out."""
    exchanges = range(0, 60, 6)
    requests = [token_request(tiktok) if index in exchanges else HEALTHZ for index in range(60)]
    with connect(limited) as sock:
        sock.sendall(b"".join(requests) + HEALTHZ.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        answers = split_answers(read_to_end(sock))
    assert len(answers) == 61 and all(code == 200 for code, _, _ in answers)
    assert all(("access_token" in body) == (index in exchanges) for index, (_, _, body) in enumerate(answers))
    assert len(tiktok.seen) == len(exchanges)


def chunked_token_request(form: str, trailers: bytes, *, pad: int = 0, auth: bytes = b"") -> bytes:
    """A token request with a chunked body, its trailer section, and `pad` bytes of padding in its head."""
    head = b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    head += b"Transfer-Encoding: chunked\r\nX-Pad: " + b"p" * pad + b"\r\n" + auth + b"Connection: close\r\n\r\n"
    return head + b"%x\r\n%s\r\n0\r\n" % (len(form), form.encode()) + trailers + b"\r\n"


def test_trailer_fields_are_never_taken_for_header_fields(limited: ServerThread, tiktok: TikTokStandIn) -> None:
    """uvicorn adds trailer fields to the request's headers, where the app would take them for header fields (RFC
    9110, 6.5.1): client credentials sent as a trailer field are not seen, the same sent as a header field are."""
    authorization = b"Authorization: Basic " + base64.b64encode(f"{CLIENT_KEY}:{CLIENT_SECRET}".encode()) + b"\r\n"
    for trailers, auth, status in ((authorization, b"", 400), (b"X-Trailer: 1\r\n", authorization, 200)):
        form = f"grant_type=authorization_code&code={tiktok.issue_code()}&redirect_uri={REDIRECT_URI}"
        with connect(limited) as sock:
            sock.sendall(chunked_token_request(form, trailers, auth=auth))
            code, _, body = parse(read_to_end(sock))
        assert code == status, body
    assert len(tiktok.seen) == 1


def test_a_malformed_chunk_gets_a_400_and_only_one_log_line(
    limited: ServerThread, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(limited) as sock:
        sock.sendall(chunked_token_request("grant_type=client_credentials", b"").replace(b"\r\n0\r\n", b"\r\nzz\r\n"))
        assert_refusal(read_to_end(sock), 400)
    time.sleep(0.2)  # the app sees the cut as a disconnect: give it the time to (wrongly) log it
    assert proxy_lines(caplog) == ["event=refused reason=malformed status=400"]  # not also the app's 400


@pytest.mark.parametrize(("trailer_bytes", "status"), [(5000, 200), (9000, 431)])
def test_trailer_fields_count_toward_the_head_cap(
    limited: ServerThread, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture, trailer_bytes: int, status: int
) -> None:
    """A 9 KiB head with 5 KB of trailer fields is served; with 9 KB, over 16 KiB together, it gets a 431."""
    form = f"grant_type=authorization_code&client_id={CLIENT_KEY}&client_secret={CLIENT_SECRET}"
    form += f"&code={tiktok.issue_code()}&redirect_uri={REDIRECT_URI}"
    with connect(limited) as sock:
        sock.sendall(chunked_token_request(form, b"X-Trailer: " + b"t" * trailer_bytes + b"\r\n", pad=9 * 1024))
        raw = read_to_end(sock)
    if status == 431:
        assert_refusal(raw, 431)
        time.sleep(0.2)  # the app sees the cut as a disconnect: give it the time to (wrongly) log it
        assert proxy_lines(caplog) == ["event=refused reason=head status=431 max_head_bytes=16384"]  # one line
        assert tiktok.seen == []
    else:
        assert parse(raw)[0] == 200


@pytest.mark.parametrize(
    "upgrade",
    [b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
     b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"],
    ids=["h2c", "websocket"],
)  # fmt: skip
def test_a_request_to_switch_protocols_is_refused_at_once(
    limited: ServerThread, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture, upgrade: bytes
) -> None:
    """The parser would take a body after Upgrade for the new protocol's bytes, so a POST would reach the app
    without its body and be refused for the wrong reason: the proxy speaks HTTP/1.1 only, and says so."""
    request = token_request(tiktok)
    with connect(limited) as sock, timer() as elapsed:
        sock.sendall(request.replace(b"Host: proxy\r\n", b"Host: proxy\r\n" + upgrade))
        ((code, headers, body),) = split_answers(read_to_end(sock))
        assert elapsed() < 1
    assert code == 400 and headers["connection"] == "close" and "without Upgrade" in body["error_description"]
    assert refusals(caplog, "upgrade") == ["event=refused reason=upgrade status=400"]
    assert "upgrade" not in caplog.text.lower().replace("reason=upgrade", "")  # none of uvicorn's WebSocket advice
    assert tiktok.seen == []


def test_a_client_that_half_closes_after_its_request_gets_the_answer(
    limited: ServerThread, tiktok: TikTokStandIn
) -> None:
    with connect(limited) as sock:
        sock.sendall(token_request(tiktok))
        sock.shutdown(socket.SHUT_WR)
        ((code, headers, body),) = split_answers(read_to_end(sock))
    assert code == 200 and body["access_token"].startswith("act.")


# ------------------------------------------------------------------------------- as users start it


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@pytest.mark.parametrize(
    "command",
    [[sys.executable, str(REPO / "proxy.py")], [*UVICORN, "--http", "tiktok_proxy.serving:LimitedHttpToolsProtocol"]],
    ids=["python proxy.py", "uvicorn proxy:app --http"],
)
@pytest.mark.alone  # measures the proxy's memory
def test_the_limits_hold_however_the_proxy_is_started(
    command: list[str], stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path: Path
) -> None:
    _, tiktok_server = stand_in_server
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "TIKTOK_TOKEN_URL": tiktok_server.url + TOKEN_PATH,
        "TIKTOK_REVOKE_URL": tiktok_server.url + REVOKE_PATH,
        "REQUEST_TIMEOUT": "1",
    }
    # With an open-file limit of 1024, MAX_CONNECTIONS defaults to fewer than 1000, well below it.
    process = subprocess.Popen(
        ["sh", "-c", 'ulimit -n 1024 && exec "$0" "$@"', *command, "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        with connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer " + MARKER.encode() * 1024 + b"\r\n\r\n")
            assert_refusal(read_to_end(sock), 431)
        # Eight clients each send a 2 MiB header line that never ends: the parser would hold all 16 MiB of it.
        before = vm_hwm_kib(process.pid)

        def endless_head() -> None:
            with connect(port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
                try:
                    for _ in range(TWO_MIB // 65536):
                        sock.sendall(b"a" * 65536)
                    read_to_end(sock)
                except OSError:
                    pass

        clients = [threading.Thread(target=endless_head) for _ in range(8)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        assert vm_hwm_kib(process.pid) - before < 6 * 1024
        with connect(port) as sock, timer() as elapsed:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert_refusal(read_to_end(sock), 408)
            assert 0.8 <= elapsed() <= 3
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    assert "event=refused reason=head status=431" in output
    assert "event=refused reason=deadline status=408" in output
    assert (
        "event=serving_limits request_timeout=1.0 keep_alive_timeout=75 max_connections=320 open_file_limit=1024 backlog=240"
        in output
    )
    assert "is not well below this process's open-file limit" not in output
    assert "Traceback" not in output and MARKER not in output


EIGHT_MIB = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def own_process(
    stand_in_server: tuple[TikTokStandIn, ServerThread],
    key_files: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """`python proxy.py`, as users start it, with the OpenID Connect facade on and REQUEST_TIMEOUT=2: its process,
    its port and its log."""
    _, tiktok_server = stand_in_server
    port, folder = free_port(), tmp_path_factory.mktemp("own-process")
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "REQUEST_TIMEOUT": "2",
           **oidc_env(tiktok_server.url, key_files["rsa"], PUBLIC_URL=f"http://127.0.0.1:{port}")}  # fmt: skip
    with (folder / "proxy.log").open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
            env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        yield process, port, folder / "proxy.log"
    finally:
        process.terminate()
        process.wait(30)
    assert "Traceback" not in (folder / "proxy.log").read_text()


def client_credentials_exchange(port: int) -> float:
    """One token exchange on a connection of its own; how long it took."""
    form = f"grant_type=client_credentials&client_key={CLIENT_KEY}&client_secret={CLIENT_SECRET}"
    with connect(port) as sock, timer() as elapsed:
        sock.sendall(
            TOKEN_REQUEST.format(length=len(form), form=form)
            .encode()
            .replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        )
        ((code, _, body),) = split_answers(read_to_end(sock))
        assert code == 200 and body["access_token"].startswith("clt."), body
        return elapsed()


@pytest.mark.alone  # measures the proxy's memory
@pytest.mark.parametrize("path", ["/proxy/token", "/oidc/token"])
@pytest.mark.parametrize(
    "trailer", [b"a:b\r\n" * 13107, b"X-Endless: " + b"a" * 65525], ids=["short fields", "one endless field"]
)
def test_8_mib_of_trailer_fields_get_a_431_and_the_worker_stays_flat(
    own_process: tuple[subprocess.Popen[str], int, Path], path: str, trailer: bytes
) -> None:
    """Before, they went into the request's headers, uncounted: 8 MiB of short ones grew the worker by 195 MiB."""
    process, port, _ = own_process
    before = vm_hwm_kib(process.pid)
    with connect(port) as sock, timer() as elapsed:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na=b\r\n0\r\n".encode()
        )
        sent = 0
        while sent < EIGHT_MIB and not select.select([sock], [], [], 0)[0]:
            sock.sendall(trailer[: EIGHT_MIB - sent])  # 64 KiB of trailer fields at a time
            sent += len(trailer)
        assert select.select([sock], [], [], 2)[0], f"no answer after {sent} bytes of trailer fields"
        assert_refusal(read_to_end(sock), 431)
        assert elapsed() < 3
    assert vm_hwm_kib(process.pid) - before < 4 * 1024


@pytest.mark.alone  # measures the proxy's memory, and other connections' latency meanwhile
def test_a_pipelining_client_that_never_reads_is_cut_and_the_worker_stays_flat(
    own_process: tuple[subprocess.Popen[str], int, Path],
) -> None:
    """Tiny pipelined requests, sent as fast as the proxy reads them, their answers never read. Before, each one read
    became a request waiting in memory (8 MiB of them grew the worker by 611 MiB, as plain uvicorn's would), and
    the connection stayed open for as long as the client liked. Now at most PIPELINE_DEPTH wait parsed, what else was read
    waits unparsed and nothing more is read, and answers left unread for REQUEST_TIMEOUT (2 s) end the connection.
    Meanwhile other connections are served promptly."""
    process, port, log = own_process
    client_credentials_exchange(port)  # the first exchange opens the pool to TikTok: not counted as growth
    before = vm_hwm_kib(process.pid)
    flooder = socket.create_connection(("127.0.0.1", port))
    flooder.setblocking(False)
    requests, sent, cut_after, served = HEALTHZ * 2048, 0, 0.0, []
    with timer() as elapsed:
        checked = 0.0
        while elapsed() < 10:
            try:
                if sent < EIGHT_MIB:
                    sent += flooder.send(requests[sent % len(requests) :])
                elif flooder.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # all sent, and then reset
                    raise ConnectionResetError
                else:
                    time.sleep(0.01)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:  # reset: the proxy cut it
                cut_after = elapsed()
                break
            if elapsed() - checked > 0.25:  # meanwhile, on connections of their own
                checked = elapsed()
                with connect(port) as sock, timer() as healthz:
                    sock.sendall(HEALTHZ.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                    assert parse(read_to_end(sock))[0] == 200
                    served += [healthz(), client_credentials_exchange(port)]
    flooder.close()
    assert 2 <= cut_after < 8, f"sent {sent} bytes; cut after {cut_after:.1f} s"
    assert len(served) >= 8 and max(served) < 0.5, served
    assert vm_hwm_kib(process.pid) - before < 4 * 1024
    assert log.read_text().count("event=closed reason=not_reading request_timeout=2.0") == 1


def flood(port: int, seconds: float, flooders: int) -> dict[str, Any]:
    """tests/tools/flood.py, in a process of its own: its load would starve the stand-ins living in this one."""
    command = [sys.executable, str(REPO / "tests" / "tools" / "flood.py"), str(port), str(seconds), str(flooders)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout)  # type: ignore[no-any-return]


@pytest.mark.alone  # measures throughput under a flood
def test_a_flood_under_a_low_open_file_limit_never_exhausts_it(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path: Path
) -> None:
    """ulimit -n 256: the connections waiting to be accepted, those served, their connections to TikTok and the
    refused ones that linger stay within the limit, so no EMFILE: every connection gets its answer, a 503 or a
    prompt close, every exchange the proxy takes on reaches TikTok, and the proxy keeps accepting. (Past the
    limit, uvloop stops accepting for good: the listening socket fills and is never read again.) Connections the
    kernel holds back while the accept queue is full are retried by the client's TCP, as with any server."""
    tiktok, tiktok_server = stand_in_server
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "TIKTOK_TOKEN_URL": tiktok_server.url + TOKEN_PATH}
    log = tmp_path / "proxy.log"  # a file, not a pipe: a pipe nobody reads while the flood runs would block the proxy
    with log.open("w") as out:
        process = subprocess.Popen(
            ["sh", "-c", 'ulimit -n 256 && exec "$0" "$@"', sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        during = flood(port, seconds=3, flooders=300)
        after = flood(port, seconds=0.5, flooders=0)["clients"]  # the flood is over: service is back
    finally:
        process.terminate()
        process.wait(30)
    output = log.read_text()
    flooded, clients = during["flooded"], during["clients"]
    assert set(flooded) | set(clients) <= {"200", "503", "closed", "ConnectionResetError", "held back"}, during
    answered = flooded.get("200", 0) + clients.get("200", 0)
    held_back = flooded.get("held back", 0) + clients.get("held back", 0)
    assert answered > 1000 and held_back < (sum(flooded.values()) + sum(clients.values())) / 20, during
    assert set(after) == {"200"}, after
    served = [line for line in output.splitlines() if "event=token " in line]
    assert answered + after["200"] <= len(served)  # a 200 the client got is one the log has
    assert all("outcome=ok" in line for line in served), [line for line in served if "outcome=ok" not in line][:3]
    for trouble in ("EMFILE", "Too many open files", "out of system resource", "Traceback", "ERROR"):
        assert trouble not in output, output[-3000:]


def test_requests_still_arriving_at_sigterm_are_answered(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path: Path
) -> None:
    """The grace period covers REQUEST_TIMEOUT + TIKTOK_TIMEOUT: a request whose body, or even whose head, is still
    arriving when SIGTERM comes gets its answer, and then the connection closes; new connections are refused."""
    tiktok, tiktok_server = stand_in_server
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "TIKTOK_TOKEN_URL": tiktok_server.url + TOKEN_PATH}
    log = tmp_path / "proxy.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        in_body, in_head, idle = connect(port), connect(port), connect(port)
        first, second = token_request(tiktok), token_request(tiktok)
        in_body.sendall(first[: first.index(b"\r\n\r\n") + 20])  # the head and a little of the body
        in_head.sendall(second[:30])  # the start of the request line
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert idle.recv(1) == b""  # an idle connection is closed at once
        time.sleep(1)
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        in_body.sendall(first[first.index(b"\r\n\r\n") + 20 :])
        in_head.sendall(second[30:])
        for sock in (in_body, in_head):
            ((code, headers, body),) = split_answers(read_to_end(sock))
            assert code == 200 and body["access_token"].startswith("act.") and headers["connection"] == "close"
            sock.close()
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has finished
    finally:
        process.kill()
        idle.close()
    assert "Traceback" not in log.read_text()


def test_a_max_connections_too_close_to_the_open_file_limit_is_named(tmp_path: Path) -> None:
    command = 'ulimit -n 1024 && exec "$0" -c "import tiktok_proxy.serving as s; s.LimitedHttpToolsProtocol"'
    env = {"PATH": os.environ["PATH"], "MAX_CONNECTIONS": "1000"}
    result = subprocess.run(["sh", "-c", command, sys.executable], env=env, cwd=REPO, capture_output=True, text=True)
    assert "MAX_CONNECTIONS=1000 is not well below this process's open-file limit (1024)" in result.stderr


@pytest.mark.parametrize(
    ("limit", "backlog", "max_connections", "lingering"),
    [(1024, 240, 320, 80), (4096, 1008, 1000, 1000), (20000, 2048, 1000, 1000), (256, 48, 64, 16), (100, 16, 8, 4)],
)
def test_the_open_files_are_shared_within_the_limit(
    limit: int, backlog: int, max_connections: int, lingering: int
) -> None:
    files = OpenFiles.share(limit)
    assert (files.backlog, files.max_connections, files.lingering) == (backlog, max_connections, lingering)
    assert serving.SPARE_FILES + files.backlog + 2 * files.max_connections + files.lingering <= limit
    assert not files.too_tight
    assert OpenFiles.share(1024, max_connections=1000).too_tight  # set by hand too close: named at startup


@pytest.mark.alone  # measures latency under an attack
def test_the_attack_script_finds_the_proxy_serving_through_an_attack() -> None:
    """bench/attack.py --quick: slow drips and bloated heads well past MAX_CONNECTIONS, exchanges meanwhile."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "attack.py"), "--quick"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr  # no exchange failed; service back in time
    assert " 0 failed" in result.stdout and "0 tracebacks" in result.stdout
    assert "head (431) lines" in result.stdout and not re.search(r"\b0 deadline", result.stdout)

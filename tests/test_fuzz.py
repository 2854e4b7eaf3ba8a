"""Property-based fuzzing of every route with hostile input, over real sockets.

FUZZ_EXAMPLES sets the examples per test (default 400, about 10 seconds); try FUZZ_EXAMPLES=5000 for a
long run. The invariants: every answer is well-formed JSON with `error` and `error_description` (or a token,
or the authorize redirect), its status is one docs/client-answers.md documents, nothing secret is echoed or logged, log
lines cannot be forged, TikTok is never called for a request the proxy refused, and the server stays up.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiktok_proxy import serving
from tiktok_proxy.app import create_app
from tiktok_proxy.config import Settings

from conftest import ServerThread
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, TikTokStandIn

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
DOCUMENTED_STATUSES = {200, 302, 400, 401, 404, 405, 413, 429, 502, 503, 504}
SECRET_PARAMS = ("client_secret", "code", "code_verifier", "refresh_token", "token")
NAMES = st.sampled_from(
    ["grant_type", "client_id", "client_key", "client_secret", "code", "redirect_uri", "code_verifier",
     "refresh_token", "token", "scope", "state"]
) | st.text(max_size=12)  # fmt: skip
VALUES = (
    st.text(max_size=40)
    | st.sampled_from(
        ["authorization_code", "refresh_token", "client_credentials", "password", CLIENT_KEY, CLIENT_SECRET, ""]
    )
    | st.just("v" * 70_000)  # past the body limit
    | st.text(alphabet="\r\n\x00\t%&=+;", max_size=8)
)
# A secret value carries a marker that no fixed text of the proxy contains, so finding it in an answer or a
# log line can only mean it leaked (a bare value like "upstream_sta" also occurs in every log line).
MARKER = "SeCrEt"
SECRETS = st.text(max_size=30).map(lambda text: f"{MARKER}{text}{MARKER[::-1]}")
RANDOM_PAIRS = st.lists(st.tuples(NAMES, VALUES | SECRETS), max_size=8)  # repeats happen naturally


@st.composite
def plausible_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Mostly a real request, with some parameters dropped, changed or added: reaches the deep branches."""
    full = {
        "grant_type": draw(st.sampled_from(["authorization_code", "refresh_token", "client_credentials"]) | VALUES),
        "client_id": draw(st.sampled_from([CLIENT_KEY]) | VALUES),
        "client_secret": draw(st.sampled_from([CLIENT_SECRET]) | SECRETS),
        "code": draw(SECRETS),
        "redirect_uri": draw(st.sampled_from(["https://tenant.example.auth0.com/login/callback"]) | VALUES),
        "code_verifier": draw(SECRETS),
        "refresh_token": draw(SECRETS),
        "token": draw(SECRETS),
    }
    dropped = draw(st.lists(st.sampled_from(sorted(full)), unique=True, max_size=3))
    kept = [(name, value) for name, value in full.items() if name not in dropped]
    return draw(st.permutations(kept)) + draw(st.lists(st.tuples(NAMES, VALUES | SECRETS), max_size=2))


PAIRS = RANDOM_PAIRS | plausible_pairs()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


CONTENT_TYPES = st.sampled_from(
    [None, "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8", "application/json",
     "APPLICATION/JSON", "text/plain", "multipart/form-data; boundary=x", "application/xml", "", ";;;", "*/*"]
)  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]], str | None]:
    """A raw body, the pairs it was built from (for the secret checks), and a Content-Type (usually the matching one)."""
    pairs = draw(PAIRS)
    kind = draw(st.sampled_from(["form", "form", "json", "json", "json-any", "bytes", "broken-utf8"]))
    if kind == "form":
        raw, matching = (
            "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode(),
            "application/x-www-form-urlencoded",
        )
    elif kind == "json":
        raw, matching = json.dumps(dict(pairs)).encode(), "application/json"
    elif kind == "json-any":
        raw, matching, pairs = json.dumps(draw(JSON_VALUES)).encode(), "application/json", []
    elif kind == "broken-utf8":
        raw, matching = (
            b"grant_type=authorization_code&code=\xff\xfe%ff&client_id=" + draw(st.binary(max_size=20)),
            "application/x-www-form-urlencoded",
        )
        pairs = []
    else:
        raw, matching, pairs = draw(st.binary(max_size=200)), None, []
    content_type = draw(st.just(matching) | st.just(matching) | CONTENT_TYPES)
    return raw, pairs, content_type


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{quote(key)}:{quote(secret)}".encode()).decode()


AUTHORIZATIONS = (
    st.none()
    | st.none()
    | st.builds(basic, VALUES, VALUES)
    | st.builds(lambda raw: "Basic " + base64.b64encode(raw).decode(), st.binary(min_size=1, max_size=30))
    # Header values as HTTP allows them (visible ASCII); anything else is refused by uvicorn before the app.
    | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30).map(
        lambda t: "Basic " + t
    )
    | st.sampled_from(["Bearer abc", "Basic", "basic Og==", "Digest x"])
)


def check_answer(response: httpx.Response, secrets: list[str]) -> dict[str, object] | None:
    assert response.status_code in DOCUMENTED_STATUSES, (response.status_code, response.text)
    for value in secrets:
        assert value not in response.text
        assert value not in response.headers.get("location", "")
    if response.status_code == 302:
        assert urlsplit(response.headers["location"]).netloc == "www.tiktok.com"
        return None
    if response.request.method == "HEAD":
        return None
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    if response.status_code >= 400:
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["error_description"], str) and body["error_description"]
    return body


def sensitive(pairs: list[tuple[str, str]]) -> list[str]:
    """The marked values sent as secret parameters (and not also as a public one, such as client_id)."""
    public = {value for name, value in pairs if name not in SECRET_PARAMS}
    return [
        value for name, value in pairs if name in SECRET_PARAMS and value.startswith(MARKER) and value not in public
    ]


def check_logs(caplog: pytest.LogCaptureFixture, secrets: list[str]) -> None:
    assert any(record.name == "tiktok_proxy" for record in caplog.records)  # the proxy's own lines were captured
    for record in caplog.records:
        if record.name.split(".")[0] in ("httpx", "httpcore"):
            continue  # the test's own HTTP client (the proxy does not use httpx), which logs the URLs it calls
        line = record.getMessage()
        assert "\n" not in line and "\r" not in line, line  # one record, one line: nothing forged
        for value in secrets:
            assert value not in line


@FUZZ
@given(
    route=st.sampled_from(["/proxy/token", "/proxy/revoke"]),
    body=bodies(),
    authorization=AUTHORIZATIONS,
)
def test_hostile_posts(
    client: httpx.Client,
    tiktok: TikTokStandIn,
    caplog: pytest.LogCaptureFixture,
    route: str,
    body: tuple[bytes, list[tuple[str, str]], str | None],
    authorization: str | None,
) -> None:
    raw, pairs, content_type = body
    tiktok.seen.clear()
    caplog.clear()
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if authorization is not None:
        headers["Authorization"] = authorization
    # The proxy sets its own logger's level (LOG_LEVEL), so lower that one, not only the root.
    with caplog.at_level(logging.DEBUG, logger="tiktok_proxy"), caplog.at_level(logging.DEBUG):
        response = client.post(route, content=raw, headers=headers)
    secrets = sensitive(pairs)
    answer = check_answer(response, secrets)
    check_logs(caplog, secrets)
    assert answer is not None
    if response.status_code == 200 and route == "/proxy/token":
        assert isinstance(answer["access_token"], str) and answer["token_type"] == "Bearer"
    if response.status_code >= 400 and "log_id" not in answer:  # refused by the proxy itself
        assert tiktok.seen == [], "TikTok was called for a request the proxy refused"


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]),
    path=st.sampled_from(
        ["/proxy/token", "/proxy/revoke", "/proxy/authorize", "/healthz", "/", "/proxy/token/", "/PROXY/TOKEN"]
    )
    | st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#%"), max_size=20
    ).map(lambda p: "/" + p.lstrip("/")),  # "//x" would be an authority to httpx
    query=st.lists(st.tuples(NAMES, VALUES.filter(lambda v: len(v) < 1000)), max_size=6),
)
def test_any_method_path_and_query(
    client: httpx.Client, tiktok: TikTokStandIn, method: str, path: str, query: list[tuple[str, str]]
) -> None:
    tiktok.seen.clear()
    response = client.request(method, path, params=query)
    check_answer(response, [])
    assert response.status_code != 500


def test_the_server_is_still_up_after_the_fuzzing(client: httpx.Client, proxy_server: ServerThread) -> None:
    assert proxy_server.thread.is_alive()
    assert client.get("/healthz").status_code == 200


def test_crlf_in_a_logged_value_cannot_forge_a_log_line(
    client: httpx.Client, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "aw1\r\n2026-11-22 00:00:00,000 INFO tiktok_proxy event=token outcome=ok client_key=admin"
    with caplog.at_level(logging.DEBUG, logger="tiktok_proxy"):
        client.post(
            "/proxy/token", data={"grant_type": "client_credentials", "client_id": forged, "client_secret": "x" * 16}
        )
        client.get("/proxy/authorize", params={"client_id": forged})
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("tiktok_proxy")]
    assert len(lines) >= 2
    assert all("\n" not in line and "\r" not in line for line in lines)
    assert any('client_key="aw1\\r\\n2026-11-22' in line for line in lines)


def test_a_body_in_the_wrong_format_cannot_smuggle_a_secret_into_the_log(
    client: httpx.Client, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON sent as a form parses into one long parameter *name* that holds the secret: names are not safe to log."""
    secret = f"{MARKER}json-as-form{MARKER[::-1]}"
    # The "=" in the last value ends the would-be name after the secret, so the name is not dropped as empty.
    body = json.dumps({"grant_type": "client_credentials", "client_secret": secret, "client_id": "key=value"})
    with caplog.at_level(logging.DEBUG, logger="tiktok_proxy"), caplog.at_level(logging.DEBUG):
        client.post("/proxy/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert any("event=token_request" in record.getMessage() for record in caplog.records)
    check_logs(caplog, [secret])


def test_a_secret_in_a_query_string_is_not_logged(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    """Clients sometimes put credentials in the URL; uvicorn's access log would print them."""
    secret = f"{MARKER}in-the-url{MARKER[::-1]}"
    with caplog.at_level(logging.DEBUG):
        client.post(
            f"/proxy/token?client_secret={secret}", data={"grant_type": "client_credentials", "client_id": CLIENT_KEY}
        )
        client.get("/proxy/token", params={"client_secret": secret})
        client.get("/nowhere", params={"code": secret})
    check_logs(caplog, [secret])


# ------------------------------------------------------------------------ raw bytes, below any HTTP client

JSON_WITH_LONE_SURROGATES = st.sampled_from(
    [
        b'{"grant_type":"client_credentials","client_id":"aw1\\ud800","client_secret":"x"}',
        b'{"grant_type":"client_credentials","client_id":"aw1testclientkey","client_secret":"\\udfff' + MARKER.encode() + b'"}',
        b'{"\\ud83d":"half a pair in a name","grant_type":"client_credentials"}',
        b'{"grant_type":"client_credentials","client_id":"\\ud83d\\ude00","client_secret":"a whole pair is fine"}',
    ]
)  # fmt: skip
RAW_BODIES = (
    JSON_WITH_LONE_SURROGATES.map(lambda body: (body, b"application/json"))
    | st.sampled_from([b"client_id=%ED%A0%80&grant_type=client_credentials", b"client_secret=%C0%80&code=%FF"]).map(
        lambda body: (body, b"application/x-www-form-urlencoded")
    )
    | st.tuples(st.binary(max_size=120), st.binary(max_size=40))
)
HEADER_NAMES = st.sampled_from([b"X-Proxy-Secret", b"Authorization", b"Content-Type", b"X-Odd", b"Accept"]) | st.binary(
    min_size=1, max_size=12
)


@pytest.fixture(scope="module")
def served_as_users_serve_it(base_settings: Settings) -> Iterator[ServerThread]:
    """The proxy behind its own serving protocol (serving.py), as python proxy.py runs it."""
    with ServerThread(create_app(base_settings), http=serving.protocol_for(base_settings)) as server:
        yield server


@FUZZ
@given(
    headers=st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=60)), max_size=4),
    basic=st.none() | st.binary(max_size=40),
    body=RAW_BODIES,
)
def test_any_bytes_in_headers_credentials_and_bodies(
    served_as_users_serve_it: ServerThread,
    tiktok: TikTokStandIn,
    caplog: pytest.LogCaptureFixture,
    headers: list[tuple[bytes, bytes]],
    basic: bytes | None,
    body: tuple[bytes, bytes],
) -> None:
    """Odd bytes anywhere (header names and values, Basic credentials, lone surrogates in JSON or forms) get a 4xx
    JSON answer and a log line: never a 500, a traceback or a dropped connection."""
    raw_body, content_type = body
    head = b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: " + content_type + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    if basic is not None:
        head += b"Authorization: Basic " + basic + b"\r\n"
    request = head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(raw_body) + raw_body
    caplog.clear()
    with socket.create_connection(("127.0.0.1", served_as_users_serve_it.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    # The first answer (a CR or LF in the bytes sent may have made more than one request of them).
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    head_bytes, _, payload = rest.partition(b"\r\n\r\n")
    assert status in DOCUMENTED_STATUSES - {302} | {431}, answer
    assert b"content-type: application/json" in head_bytes.lower(), answer
    length = int(head_bytes.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    document = json.loads(payload[:length])
    if status >= 400:
        assert document["error"] and document["error_description"], document
    lines = [record for record in caplog.records if record.name.startswith("tiktok_proxy")]
    assert any(record.getMessage().startswith(("event=token ", "event=refused ")) for record in lines), answer
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert MARKER not in answer.decode("latin-1")

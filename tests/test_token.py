"""POST /proxy/token over real sockets: the proxy under uvicorn, TikTok's stand-in under uvicorn."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
import pytest

from tiktok_proxy import tiktok as tiktok_module

from conftest import PROXY_TIMEOUT, free_port, timer
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REDIRECT_URI, TikTokStandIn, drip, reply, silence

VERIFIER = "hex-or-base64url-verifier_" + "x" * 30


def code_grant(code: str, **extra: str) -> dict[str, str]:
    """What Auth0's generic OAuth2 client sends (client_secret_post)."""
    return {
        "grant_type": "authorization_code",
        "client_id": CLIENT_KEY,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "redirect_uri": REDIRECT_URI,
        **extra,
    }


def basic(key: str, secret: str) -> str:
    pair = f"{quote(key, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert CLIENT_SECRET not in response.text
    return body


# ------------------------------------------------------------------------------- successes


def test_authorization_code_exchange_returns_a_standard_token(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    code = tiktok.issue_code()
    response = client.post("/proxy/token", data=code_grant(code))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    token = response.json()
    assert token["access_token"].startswith("act.")
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 86400 and token["refresh_expires_in"] == 31536000
    assert token["refresh_token"].startswith("rft.")
    assert token["open_id"] == "afd97af1-b87b-48b9-ac98-410aghda5344"
    assert token["scope"] == "user.info.basic user.info.profile"  # RFC 6749 spaces, not TikTok's commas

    (seen,) = tiktok.seen
    assert seen.form == {
        "client_key": [CLIENT_KEY],
        "client_secret": [CLIENT_SECRET],
        "grant_type": ["authorization_code"],
        "code": [code],  # decoded once, '*' and '!' intact
        "redirect_uri": [REDIRECT_URI],
    }
    assert seen.header_values("content-type") == ["application/x-www-form-urlencoded"]


def test_code_verifier_is_passed_through_untouched(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    code = tiktok.issue_code(code_verifier=VERIFIER)
    response = client.post("/proxy/token", data=code_grant(code, code_verifier=VERIFIER))
    assert response.status_code == 200, response.text
    assert tiktok.seen[0].form["code_verifier"] == [VERIFIER]


def test_the_token_url_works_with_a_trailing_slash(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    response = client.post("/proxy/token/", data=code_grant(tiktok.issue_code()))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "how",
    ["form-body", "json-body", "client_key-synonym", "basic-auth", "basic-auth-with-client_id-in-body"],
)
def test_every_accepted_input_style_exchanges_the_code(client: httpx.Client, tiktok: TikTokStandIn, how: str) -> None:
    code = tiktok.issue_code()
    params = code_grant(code)
    if how == "form-body":
        response = client.post("/proxy/token", data=params)
    elif how == "json-body":
        response = client.post("/proxy/token", json=params)
    elif how == "client_key-synonym":
        params["client_key"] = params.pop("client_id")
        response = client.post("/proxy/token", data=params)
    else:
        del params["client_secret"]
        if how == "basic-auth":
            del params["client_id"]
        response = client.post("/proxy/token", data=params, headers={"Authorization": basic(CLIENT_KEY, CLIENT_SECRET)})
    assert response.status_code == 200, response.text
    assert tiktok.seen[0].form["client_key"] == [CLIENT_KEY]
    assert tiktok.seen[0].form["client_secret"] == [CLIENT_SECRET]


def test_basic_auth_credentials_are_form_decoded(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.clients["key with space"] = "p@ss:w+rd%"
    response = client.post(
        "/proxy/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic("key with space", "p@ss:w+rd%")},
    )
    assert response.status_code == 200, response.text
    assert tiktok.seen[0].form["client_secret"] == ["p@ss:w+rd%"]


def test_refresh_grant_returns_the_rotated_refresh_token(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    old = tiktok.issue_refresh_token()
    refresh = {"grant_type": "refresh_token", "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET}
    response = client.post("/proxy/token", data={**refresh, "refresh_token": old})
    assert response.status_code == 200, response.text
    new = response.json()["refresh_token"]
    assert new != old
    assert tiktok.seen[0].form == {
        "client_key": [CLIENT_KEY],
        "client_secret": [CLIENT_SECRET],
        "grant_type": ["refresh_token"],
        "refresh_token": [old],
    }
    # TikTok rotated it: the old one is now refused, as a real OAuth error.
    assert_oauth_error(client.post("/proxy/token", data={**refresh, "refresh_token": old}), 400, "invalid_grant")


def test_refresh_without_a_new_refresh_token_keeps_the_old_one(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.fault = reply(200, {"access_token": "act.new", "expires_in": 86400, "token_type": "Bearer"})
    data = {
        "grant_type": "refresh_token",
        "client_id": CLIENT_KEY,
        "client_secret": CLIENT_SECRET,
        "refresh_token": "rft.old",
    }
    response = client.post("/proxy/token", data=data)
    assert response.status_code == 200
    assert response.json()["refresh_token"] == "rft.old"


def test_client_credentials_grant(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    response = client.post(
        "/proxy/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "access_token": response.json()["access_token"],
        "token_type": "Bearer",
        "expires_in": 7200,
    }
    assert tiktok.seen[0].form["grant_type"] == ["client_credentials"]


def test_only_what_tiktok_needs_is_forwarded(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    code = tiktok.issue_code()
    response = client.post(
        "/proxy/token",
        data=code_grant(code, scope="user.info.basic", state="xyz", audience="ignored"),
        headers={
            "Cookie": "session=abc",
            "Authorization": "Bearer not-for-tiktok",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Host": "evil.example",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        },
    )
    assert response.status_code == 200, response.text
    (seen,) = tiktok.seen
    assert set(seen.form) == {"client_key", "client_secret", "grant_type", "code", "redirect_uri"}
    names = {name for name, _ in seen.headers}
    assert names.isdisjoint({"cookie", "authorization", "x-forwarded-for", "x-forwarded-host"})
    assert seen.header_values("content-type") == ["application/x-www-form-urlencoded"]


# ------------------------------------------------------------------- TikTok's errors, normalized


@pytest.mark.parametrize("tiktok_status", [200, 400, 401])  # quirk Q4: the HTTP status is no evidence
@pytest.mark.parametrize(
    ("breakage", "status", "error", "description"),
    [
        ("wrong-secret", 401, "invalid_client", "Client key or secret is incorrect."),
        # Redacted as a whole value only: the letter e stays in TikTok's words.
        ("one-letter-secret", 401, "invalid_client", "Client key or secret is incorrect."),
        ("reused-code", 400, "invalid_grant", "Authorization code is expired."),
        ("redirect-mismatch", 400, "invalid_request", "Redirect_uri is not matched with the uri when requesting code."),
        ("wrong-verifier", 400, "invalid_grant", "Code verifier or code challenge is invalid."),
    ],
)
def test_tiktok_refusals_become_oauth_errors(
    client: httpx.Client,
    tiktok: TikTokStandIn,
    tiktok_status: int,
    breakage: str,
    status: int,
    error: str,
    description: str,
) -> None:
    tiktok.error_status = tiktok_status
    code = tiktok.issue_code(code_verifier=VERIFIER)
    params = code_grant(code, code_verifier=VERIFIER)
    if breakage == "wrong-secret":
        params["client_secret"] = "not-the-secret"
    elif breakage == "one-letter-secret":
        params["client_secret"] = "e"
    elif breakage == "reused-code":
        assert client.post("/proxy/token", data=params).status_code == 200
    elif breakage == "redirect-mismatch":
        params["redirect_uri"] = "https://other.example/login/callback"
    elif breakage == "wrong-verifier":
        params["code_verifier"] = "another-verifier"

    body = assert_oauth_error(client.post("/proxy/token", data=params), status, error)
    assert body["error_description"] == description
    assert body["log_id"].startswith("2026112202")  # kept for TikTok support


@pytest.mark.parametrize(
    ("answer", "status", "error", "description"),
    [
        (
            {
                "data": {"captcha": "", "desc_url": "", "description": "Parameter error", "error_code": 10002},
                "message": "error",
            },
            400,
            "invalid_request",
            "TikTok error 10002: Parameter error",
        ),
        (
            {
                "data": {},
                "error": {
                    "code": "access_token_invalid",
                    "message": "Access token is invalid",
                    "log_id": "202611220218540000000000000000000001",
                },
            },
            400,
            "access_token_invalid",
            "Access token is invalid",
        ),
        (
            {
                "error": "server_error",
                "error_description": "Internal error.",
                "log_id": "202611220218540000000000000000000002",
            },
            502,
            "server_error",
            "Internal error.",
        ),
        ({"error": "temporarily_unavailable", "error_description": "Busy."}, 503, "temporarily_unavailable", "Busy."),
        ({"error": "bad code with spaces", "error_description": "odd"}, 400, "invalid_request", "odd"),
        ({"error": "invalid_grant"}, 400, "invalid_grant", "TikTok refused the request (invalid_grant)"),
    ],
    ids=[
        "v1-envelope",
        "resource-envelope",
        "server_error",
        "temporarily_unavailable",
        "malformed-code",
        "no-description",
    ],
)
def test_every_tiktok_error_shape_is_understood(
    client: httpx.Client, tiktok: TikTokStandIn, answer: object, status: int, error: str, description: str
) -> None:
    tiktok.fault = reply(200, answer)
    body = assert_oauth_error(client.post("/proxy/token", data=code_grant("any")), status, error)
    assert body["error_description"] == description


def test_v1_success_envelope_is_unwrapped(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.fault = reply(
        200,
        {
            "data": {
                "access_token": "act.v1", "captcha": "", "desc_url": "", "description": "", "error_code": 0,
                "expires_in": 86400, "log_id": "20220701091238010004004007735002017070F8D12",
                "open_id": "_000Hqnyyz5UYe39YWBZwFnaQGfyaoh3s4IY", "refresh_expires_in": 31536000,
                "refresh_token": "rft.v1", "scope": "user.info.basic,video.list",
            },
            "message": "success",
        },
    )  # fmt: skip
    response = client.post("/proxy/token", data=code_grant("any"))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "access_token": "act.v1",
        "token_type": "Bearer",
        "expires_in": 86400,
        "refresh_expires_in": 31536000,
        "refresh_token": "rft.v1",
        "open_id": "_000Hqnyyz5UYe39YWBZwFnaQGfyaoh3s4IY",
        "scope": "user.info.basic video.list",
    }


def test_rate_limiting_is_an_error_the_client_can_act_on(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.fault = reply(
        429,
        {
            "error": {
                "code": "rate_limit_exceeded",
                "message": "slow down",
                "log_id": "20261122021854000000000000000000ABC3",
            }
        },
        **{"Retry-After": "30"},
    )
    response = client.post("/proxy/token", data=code_grant("any"))
    body = assert_oauth_error(response, 429, "temporarily_unavailable")
    assert response.headers["retry-after"] == "30"
    assert "retry after 30 seconds" in body["error_description"]
    assert body["log_id"] == "20261122021854000000000000000000ABC3"


# ----------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        (
            reply(500, "<html><body><h1>500 Internal Server Error</h1></body></html>", "text/html"),
            "HTTP 500 with a body that is not JSON",
        ),
        (reply(503, "<html>Service Unavailable</html>", "text/html"), "HTTP 503"),
        (reply(200, "<html>maintenance</html>", "text/html"), "not JSON"),
        (reply(200, "{not json"), "not JSON"),
        (reply(200, {"hello": "world"}), "neither a token nor an error"),
        (reply(200, [1, 2, 3]), "neither a token nor an error"),
        (reply(200, {"access_token": ""}), "neither a token nor an error"),
        (reply(200, {"access_token": 123}), "neither a token nor an error"),
        (reply(200, {"access_token": "act.x", "expires_in": "86400"}), "expires_in that is not a whole number"),
        (reply(200, {"access_token": "act.x", "open_id": 5}), "open_id that is not a string"),
        (reply(200, {"access_token": "act.x", "token_type": "mac"}), "token_type other than Bearer"),
        (reply(302, "", Location="https://elsewhere.example/steal"), "redirect (HTTP 302)"),
        (reply(307, "", Location="/v2/oauth/token/again"), "redirect (HTTP 307)"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_unusable_answers_are_502_and_never_echoed(
    client: httpx.Client, tiktok: TikTokStandIn, fault: object, fragment: str
) -> None:
    tiktok.fault = fault  # type: ignore[assignment]
    body = assert_oauth_error(client.post("/proxy/token", data=code_grant("any")), 502, "server_error")
    assert fragment in body["error_description"]
    assert "<html" not in json.dumps(body)
    assert len(tiktok.seen) == 1  # no retry, no redirect followed


def test_missing_trailing_slash_gets_a_hint(proxy_with, tiktok: TikTokStandIn, base_settings) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(token_url=base_settings.token_url.rstrip("/"))
    body = assert_oauth_error(client.post("/proxy/token", data=code_grant("any")), 502, "server_error")
    assert "trailing slash" in body["error_description"]


@pytest.mark.parametrize(
    "fault", [drip(b'{"access_token":"act.slow","expires_in":86400}', 0.2), silence()], ids=["drip", "silence"]
)
def test_a_slow_tiktok_hits_the_total_deadline(client: httpx.Client, tiktok: TikTokStandIn, fault: object) -> None:
    tiktok.fault = fault  # type: ignore[assignment]
    with timer() as elapsed:
        response = client.post("/proxy/token", data=code_grant("any"))
    body = assert_oauth_error(response, 504, "temporarily_unavailable")
    assert f"within {PROXY_TIMEOUT:g} seconds" in body["error_description"]
    assert PROXY_TIMEOUT <= elapsed() < PROXY_TIMEOUT + 1.0
    assert len(tiktok.seen) == 1  # a code may have been used: never retried
    # The proxy is still up and serving.
    tiktok.fault = None
    assert client.post("/proxy/token", data=code_grant(tiktok.issue_code())).status_code == 200


def test_connection_refused_is_502(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(token_url=f"http://127.0.0.1:{free_port()}/v2/oauth/token/")
    body = assert_oauth_error(client.post("/proxy/token", data=code_grant("any")), 502, "server_error")
    assert body["error_description"] == "TikTok is unreachable: could not connect to 127.0.0.1 (Connection refused)"
    assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------- refused before TikTok is called


FULL = code_grant("the-code")


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error", "fragment"),
    [
        ({"data": {k: v for k, v in FULL.items() if k != "grant_type"}}, 400, "invalid_request", "grant_type"),
        ({"data": {k: v for k, v in FULL.items() if k != "code"}}, 400, "invalid_request", "parameter: code"),
        ({"data": {k: v for k, v in FULL.items() if k != "redirect_uri"}}, 400, "invalid_request", "redirect_uri"),
        ({"data": {k: v for k, v in FULL.items() if k != "client_id"}}, 400, "invalid_request", "client_id"),
        ({"data": {k: v for k, v in FULL.items() if k != "client_secret"}}, 400, "invalid_request", "client_secret"),
        ({"data": {**FULL, "code": ""}}, 400, "invalid_request", "parameter: code"),  # RFC 6749 §3.1
        ({"data": {**FULL, "grant_type": "refresh_token"}}, 400, "invalid_request", "refresh_token"),
        ({"data": {**FULL, "grant_type": "password"}}, 400, "unsupported_grant_type", "authorization_code"),
        ({"data": {**FULL, "client_key": "different"}}, 400, "invalid_request", "client_id and client_key differ"),
        ({"content": "&".join(f"{k}={quote(v)}" for k, v in FULL.items()) + "&code=again",
          "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 400, "invalid_request", "code is repeated"),
        ({"content": b'{"grant_type":"authorization_code","code":"a","code":"b"}',
          "headers": {"Content-Type": "application/json"}}, 400, "invalid_request", "code is repeated"),
        ({"content": b"grant_type=authorization_code&code=%ff%fe",
          "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 400, "invalid_request", "UTF-8"),
        ({"content": b"grant_type=\xff\xfe", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
         400, "invalid_request", "UTF-8"),
        ({"content": b"{broken", "headers": {"Content-Type": "application/json"}}, 400, "invalid_request", "not valid JSON"),
        ({"content": b"[1,2]", "headers": {"Content-Type": "application/json"}}, 400, "invalid_request", "must be an object"),
        ({"content": b"[" * 5000 + b"]" * 5000, "headers": {"Content-Type": "application/json"}},
         400, "invalid_request", "not valid JSON"),
        ({"json": {**FULL, "code": 12345}}, 400, "invalid_request", "code must be a string"),
        ({"content": b"grant_type=authorization_code", "headers": {"Content-Type": "text/plain"}},
         400, "invalid_request", "application/x-www-form-urlencoded"),
        ({"files": {"code": ("c", b"x")}}, 400, "invalid_request", "application/x-www-form-urlencoded"),
        ({}, 400, "invalid_request", "application/x-www-form-urlencoded"),
        ({"data": FULL, "headers": {"Authorization": basic(CLIENT_KEY, CLIENT_SECRET)}},
         400, "invalid_request", "not both"),
        ({"data": {k: v for k, v in FULL.items() if k != "client_secret"},
          "headers": {"Authorization": basic("other-key", CLIENT_SECRET)}}, 400, "invalid_request", "not both"),
        ({"data": FULL, "headers": [("Authorization", "Basic a"), ("Authorization", "Basic b")]},
         400, "invalid_request", "one Authorization header"),
        ({"data": {"grant_type": "client_credentials"}, "headers": {"Authorization": "Basic not-base64!"}},
         401, "invalid_client", "malformed"),
        ({"data": {"grant_type": "client_credentials"},
          "headers": {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}}, 401, "invalid_client", "malformed"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_before_tiktok(
    client: httpx.Client, tiktok: TikTokStandIn, request_kwargs: dict, status: int, error: str, fragment: str
) -> None:
    response = client.post("/proxy/token", **request_kwargs)
    body = assert_oauth_error(response, status, error)
    assert fragment in body["error_description"]
    assert tiktok.seen == []
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_413(client: httpx.Client, tiktok: TikTokStandIn, chunked: bool) -> None:
    body = b"grant_type=authorization_code&code=" + b"x" * (64 * 1024)
    content = iter([body[i : i + 4096] for i in range(0, len(body), 4096)]) if chunked else body
    response = client.post(
        "/proxy/token", content=content, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_oauth_error(response, 413, "invalid_request")
    assert tiktok.seen == []


def test_a_body_just_under_the_limit_is_read(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    code = tiktok.issue_code()
    padding = "p" * (64 * 1024 - 400)
    response = client.post("/proxy/token", data=code_grant(code, state=padding))
    assert response.status_code == 200, response.text


def test_the_allow_list_refuses_other_client_keys(proxy_with, tiktok: TikTokStandIn) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(allowed_client_keys=frozenset({CLIENT_KEY, "another"}))
    refused = client.post("/proxy/token", data={**code_grant("any"), "client_id": "stranger"})
    assert_oauth_error(refused, 401, "invalid_client")
    refused_basic = client.post(
        "/proxy/token", data={"grant_type": "client_credentials"}, headers={"Authorization": basic("stranger", "x")}
    )
    assert_oauth_error(refused_basic, 401, "invalid_client")
    assert tiktok.seen == []
    allowed = client.post("/proxy/token", data=code_grant(tiktok.issue_code()))
    assert allowed.status_code == 200, allowed.text


# ---------------------------------------------------------------------------------- the rest


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/proxy/token", 405),
        ("PUT", "/proxy/token", 405),
        ("HEAD", "/proxy/revoke/", 405),
        ("DELETE", "/proxy/revoke", 405),
        ("POST", "/healthz", 405),
        ("GET", "/nope", 404),
        ("GET", "/", 404),
        ("POST", "/proxy/token//", 404),
        ("GET", "/healthz/", 404),
    ],
)
def test_unknown_routes_and_methods_answer_json(client: httpx.Client, method: str, path: str, status: int) -> None:
    response = client.request(method, path)
    if method == "HEAD":  # no body to read: the status and the headers say it all
        assert response.status_code == status and response.headers["content-type"] == "application/json"
        assert response.headers["allow"] == "POST"
        return
    assert_oauth_error(response, status, "invalid_request")
    if status == 405:
        assert "POST" in response.headers["allow"] or "GET" in response.headers["allow"]


REFRESH = {"grant_type": "refresh_token", "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET}


def test_a_refresh_passes_the_new_refresh_token_and_its_lifetime_through(
    client: httpx.Client, tiktok: TikTokStandIn
) -> None:
    token = client.post("/proxy/token", data={**REFRESH, "refresh_token": tiktok.issue_refresh_token()}).json()
    assert token["refresh_expires_in"] == 31536000 and token["refresh_token"] in tiktok.refresh_tokens
    # TikTok's own values, whatever they are: the new one always replaces the old (quirk Q8).
    tiktok.fault = reply(200, {"access_token": "act.n", "token_type": "Bearer", "refresh_token": "rft.rotated",
                               "refresh_expires_in": 4321})  # fmt: skip
    answer = client.post("/proxy/token", data={**REFRESH, "refresh_token": "rft.old"}).json()
    assert (answer["refresh_token"], answer["refresh_expires_in"]) == ("rft.rotated", 4321)


@pytest.mark.parametrize(
    ("tiktok_error", "status", "error"),
    [
        ("invalid_request", 400, "invalid_grant"),  # e.g. an expired refresh token, reported as a bad request
        ("invalid_scope", 400, "invalid_grant"),
        ("invalid_grant", 400, "invalid_grant"),
        ("invalid_client", 401, "invalid_client"),  # the client, not the grant: stays
        ("server_error", 502, "server_error"),  # TikTok's trouble: retrying may help
        ("temporarily_unavailable", 503, "temporarily_unavailable"),
    ],
)
def test_tiktok_refusing_a_refresh_is_invalid_grant(
    client: httpx.Client, tiktok: TikTokStandIn, tiktok_error: str, status: int, error: str
) -> None:
    tiktok.fault = reply(
        200,
        {
            "error": tiktok_error,
            "error_description": "Refresh token is invalid.",
            "log_id": "20261201000100AB12CD34EF56",
        },
    )
    body = assert_oauth_error(client.post("/proxy/token", data={**REFRESH, "refresh_token": "rft.x"}), status, error)
    assert body["log_id"] == "20261201000100AB12CD34EF56"
    if error == "invalid_grant" and tiktok_error != "invalid_grant":
        assert body["error_description"] == f"Refresh token is invalid. (TikTok: {tiktok_error})"
    # A code exchange keeps TikTok's code: only a refresh token that stopped working is invalid_grant.
    code = assert_oauth_error(client.post("/proxy/token", data=code_grant("c")), status, tiktok_error)
    assert code["error_description"] == "Refresh token is invalid."


def test_a_rate_limited_refresh_stays_429(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.fault = reply(
        429, {"error": "rate_limit_exceeded", "error_description": "slow down"}, **{"Retry-After": "7"}
    )
    response = client.post("/proxy/token", data={**REFRESH, "refresh_token": "rft.x"})
    assert_oauth_error(response, 429, "temporarily_unavailable")
    assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("path", ["/proxy/token", "/proxy/revoke"])
def test_an_unexpected_exception_on_a_relayed_route_is_a_json_500(
    client: httpx.Client,
    tiktok: TikTokStandIn,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """The relayed routes bypass Starlette, so their last-resort answer is their own: JSON, never a bare 500 page,
    with the traceback in the log and no secret anywhere."""

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tiktok_module, "post_form", broken)
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_KEY,
        "client_secret": CLIENT_SECRET,
        "token": "act.x",
    }
    response = client.post(path, data=form)
    assert_oauth_error(response, 500, "server_error")
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert errors and errors[0].exc_info and "RuntimeError: a bug" in caplog.text
    assert CLIENT_SECRET not in caplog.text
    assert client.get("/healthz").status_code == 200  # and the proxy stays up

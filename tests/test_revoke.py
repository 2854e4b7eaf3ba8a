"""POST /proxy/revoke over real sockets: RFC 7009 in, TikTok's revoke endpoint out."""

from __future__ import annotations

import httpx
import pytest

from conftest import PROXY_TIMEOUT, free_port, timer
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REVOKE_PATH, TikTokStandIn, reply, silence
from test_token import assert_oauth_error, basic

CREDENTIALS = {"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET}


@pytest.mark.parametrize("tiktok_body", [b"", b"{}"], ids=["empty-body", "empty-object"])
@pytest.mark.parametrize("style", ["form", "json", "basic"])
def test_a_revoked_token_answers_200(
    client: httpx.Client, tiktok: TikTokStandIn, tiktok_body: bytes, style: str
) -> None:
    tiktok.revoke_body = tiktok_body
    token = tiktok.issue_access_token()
    if style == "form":
        response = client.post("/proxy/revoke", data={**CREDENTIALS, "token": token, "token_type_hint": "access_token"})
    elif style == "json":
        response = client.post("/proxy/revoke", json={**CREDENTIALS, "token": token})
    else:
        response = client.post(
            "/proxy/revoke", data={"token": token}, headers={"Authorization": basic(CLIENT_KEY, CLIENT_SECRET)}
        )

    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert response.headers["cache-control"] == "no-store"
    assert tiktok.revoked == [token]
    (seen,) = tiktok.seen
    assert seen.path == REVOKE_PATH
    assert seen.form == {"client_key": [CLIENT_KEY], "client_secret": [CLIENT_SECRET], "token": [token]}
    assert seen.header_values("content-type") == ["application/x-www-form-urlencoded"]


@pytest.mark.parametrize("tiktok_status", [200, 400])
def test_tiktok_refusals_become_oauth_errors(client: httpx.Client, tiktok: TikTokStandIn, tiktok_status: int) -> None:
    tiktok.error_status = tiktok_status
    body = assert_oauth_error(
        client.post("/proxy/revoke", data={**CREDENTIALS, "token": "act.unknown"}), 400, "invalid_request"
    )
    assert body["error_description"] == "Access token is invalid or expired."
    assert body["log_id"]
    wrong_secret = client.post(
        "/proxy/revoke", data={**CREDENTIALS, "client_secret": "nope", "token": tiktok.issue_access_token()}
    )
    assert_oauth_error(wrong_secret, 401, "invalid_client")


@pytest.mark.parametrize(
    ("fault", "status", "fragment"),
    [
        (reply(500, "<html>oops</html>", "text/html"), 502, "not JSON"),
        (reply(502, ""), 502, "HTTP 502 with an empty body"),
        (reply(200, "surprise", "text/plain"), 502, "not JSON"),
        (reply(200, [1]), 502, "not a revocation answer"),
        (reply(429, "", **{"Retry-After": "5"}), 429, "retry after 5 seconds"),
        (
            reply(200, {"data": {"error_code": 10002, "description": "Parameter error"}, "message": "error"}),
            400,
            "Parameter error",
        ),
    ],
    ids=["html-500", "empty-502", "text-200", "list-200", "429", "v1-error"],
)
def test_upstream_failures(
    client: httpx.Client, tiktok: TikTokStandIn, fault: object, status: int, fragment: str
) -> None:
    tiktok.fault = fault  # type: ignore[assignment]
    response = client.post("/proxy/revoke", data={**CREDENTIALS, "token": "act.x"})
    assert response.status_code == status
    assert fragment in response.json()["error_description"]
    assert "act.x" not in response.text
    assert len(tiktok.seen) == 1


def test_v1_revoke_success_envelope_is_success(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.fault = reply(
        200,
        {
            "data": {"captcha": "", "desc_url": "", "description": "", "error_code": 0, "log_id": "L"},
            "message": "success",
        },
    )
    assert client.post("/proxy/revoke", data={**CREDENTIALS, "token": "act.x"}).status_code == 200


def test_the_total_deadline_applies(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    tiktok.fault = silence()
    with timer() as elapsed:
        response = client.post("/proxy/revoke", data={**CREDENTIALS, "token": "act.x"})
    assert_oauth_error(response, 504, "temporarily_unavailable")
    assert elapsed() < PROXY_TIMEOUT + 1.0
    assert len(tiktok.seen) == 1


def test_connection_refused_is_502(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(revoke_url=f"http://127.0.0.1:{free_port()}/v2/oauth/revoke/")
    assert_oauth_error(client.post("/proxy/revoke", data={**CREDENTIALS, "token": "act.x"}), 502, "server_error")


@pytest.mark.parametrize(
    ("data", "status", "error", "fragment"),
    [
        (CREDENTIALS, 400, "invalid_request", "parameter: token"),
        ({"client_id": CLIENT_KEY, "token": "act.x"}, 400, "invalid_request", "client_secret"),
        ({**CREDENTIALS, "client_id": "stranger", "token": "act.x"}, 401, "invalid_client", "ALLOWED_CLIENT_KEYS"),
    ],
)
def test_refused_before_tiktok(
    proxy_with, tiktok: TikTokStandIn, data: dict[str, str], status: int, error: str, fragment: str
) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(allowed_client_keys=frozenset({CLIENT_KEY}))
    body = assert_oauth_error(client.post("/proxy/revoke", data=data), status, error)
    assert fragment in body["error_description"]
    assert tiktok.seen == []


def test_an_oversized_revoke_body_is_413(client: httpx.Client, tiktok: TikTokStandIn) -> None:
    response = client.post("/proxy/revoke", data={**CREDENTIALS, "token": "t" * 70_000})
    assert_oauth_error(response, 413, "invalid_request")
    assert tiktok.seen == []

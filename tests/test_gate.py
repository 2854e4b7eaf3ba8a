"""The gate: with PROXY_SECRET set, only callers sending X-Proxy-Secret (Auth0's customHeaders) reach TikTok."""

from __future__ import annotations

import logging

import pytest

from tiktok_proxy.config import ConfigError, load_settings

from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, TikTokStandIn
from test_token import assert_oauth_error, code_grant

OLD, NEW = "old-gate-secret-0123456789abcdef", "new-gate-secret-fedcba9876543210"
GATED = frozenset({OLD, NEW})  # two values: a rotation in progress


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "is missing"),
        ({"X-Proxy-Secret": "not-the-secret-but-long-enough"}, "does not match"),
        ({"X-Proxy-Secret": OLD[:-1]}, "does not match"),  # a prefix is not the secret
        ([("X-Proxy-Secret", OLD), ("X-Proxy-Secret", OLD)], "is repeated"),
    ],
)
def test_the_gate_refuses_before_anything_else(proxy_with, tiktok: TikTokStandIn, headers, problem: str) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(proxy_secrets=GATED)
    for path, body in (("/proxy/token", code_grant(tiktok.issue_code())), ("/proxy/revoke", {"token": "act.x"})):
        response = client.post(
            path, data={**body, "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET}, headers=headers
        )
        error = assert_oauth_error(response, 401, "invalid_client")
        assert error["error_description"] == (
            "this proxy requires the X-Proxy-Secret header from your Auth0 connection's customHeaders, "
            f"and it {problem} (PROXY_SECRET)"
        )
        assert response.headers["www-authenticate"]
    assert tiktok.seen == []  # TikTok was never called


@pytest.mark.parametrize("secret", [OLD, NEW], ids=["old", "new"])  # ids: no secret in the test names
def test_either_value_passes_during_a_rotation(proxy_with, tiktok: TikTokStandIn, secret: str) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(proxy_secrets=GATED)
    response = client.post("/proxy/token", data=code_grant(tiktok.issue_code()), headers={"X-Proxy-Secret": secret})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    revoked = client.post(
        "/proxy/revoke",
        data={"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "token": token},
        headers={"X-Proxy-Secret": secret},
    )
    assert revoked.status_code == 200, revoked.text
    # The gate's header is the proxy's business: it is not forwarded to TikTok.
    assert all(not seen.header_values("x-proxy-secret") for seen in tiktok.seen)


def test_the_browser_routes_stay_open(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(proxy_secrets=GATED)
    assert client.get("/healthz").status_code == 200
    redirect = client.get("/proxy/authorize", params={"client_id": CLIENT_KEY, "scope": "user.info.basic"})
    assert redirect.status_code == 302


def test_no_gate_secret_is_ever_logged(proxy_with, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(proxy_secrets=GATED, log_level="DEBUG")
    wrong = "a-wrong-gate-secret-someone-tried"
    with caplog.at_level(logging.DEBUG):
        client.post("/proxy/token", data=code_grant(tiktok.issue_code()), headers={"X-Proxy-Secret": wrong})
        client.post("/proxy/token", data=code_grant(tiktok.issue_code()), headers={"X-Proxy-Secret": OLD})
    assert "event=token outcome=invalid_client" in caplog.text and "event=token outcome=ok" in caplog.text
    for value in (OLD, NEW, wrong, CLIENT_SECRET):
        assert value not in caplog.text


def test_proxy_secret_configuration() -> None:
    assert load_settings({"PROXY_SECRET": f" {OLD} , {NEW} ,"}).proxy_secrets == GATED
    assert OLD not in repr(load_settings({"PROXY_SECRET": OLD}))  # never in a repr or a traceback
    with pytest.raises(ConfigError) as refused:
        load_settings({"PROXY_SECRET": f"{OLD},short-one"})
    assert str(refused.value) == "PROXY_SECRET values must be at least 16 printable ASCII characters"
    assert refused.value.variable == "PROXY_SECRET"

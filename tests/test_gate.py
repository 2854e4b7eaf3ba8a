"""The gate: with PROXY_SECRET set, only callers sending X-Proxy-Secret (Auth0's customHeaders) reach TikTok."""

from __future__ import annotations

import logging

import pytest

from tiktok_proxy.config import ConfigError, load_settings
from tiktok_proxy.inbound import ALLOW_LIST_REFUSAL, GATE_REFUSAL, OWN_SECRET_REFUSAL

from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REVOKE_PATH, TOKEN_PATH, TikTokStandIn
from test_token import assert_oauth_error, basic, code_grant

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


# ---------------------------------------------------------------- the proxy's own key (issue 17: Token Vault)

OTHER_KEY, OTHER_SECRET = "aw1anotherclientkey", "another-apps-client-secret"
OWN = {"tiktok_client_key": CLIENT_KEY, "tiktok_client_secret": CLIENT_SECRET}
WRONG_SECRET = "a-wrong-client-secret-for-the-own-key"


def own_key_refusal(response) -> None:  # type: ignore[no-untyped-def]
    error = assert_oauth_error(response, 401, "invalid_client")
    assert error["error_description"] == OWN_SECRET_REFUSAL
    assert WRONG_SECRET not in response.text


@pytest.mark.parametrize("header", [None, OLD], ids=["no-header", "right-header"])
@pytest.mark.parametrize("style", ["form", "basic"])
def test_a_wrong_secret_for_the_own_key_is_refused_before_tiktok(
    proxy_with, tiktok: TikTokStandIn, header: str | None, style: str
) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(**OWN, proxy_secrets=GATED)
    headers = {"X-Proxy-Secret": header} if header else {}
    for path, body in (("/proxy/token", code_grant(tiktok.issue_code())), ("/proxy/revoke", {"token": "act.x"})):
        body = {name: value for name, value in body.items() if name not in ("client_id", "client_secret")}
        if style == "form":
            response = client.post(
                path, data={**body, "client_id": CLIENT_KEY, "client_secret": WRONG_SECRET}, headers=headers
            )
        else:
            response = client.post(
                path, data=body, headers={**headers, "Authorization": basic(CLIENT_KEY, WRONG_SECRET)}
            )
        own_key_refusal(response)
    assert tiktok.seen == []  # at once: TikTok never heard of it, even with the right X-Proxy-Secret


def test_the_right_secret_for_the_own_key_needs_no_header(proxy_with, tiktok: TikTokStandIn) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(**OWN, proxy_secrets=GATED)  # PROXY_SECRET set, and still not needed for this key
    response = client.post("/proxy/token", data=code_grant(tiktok.issue_code()))
    assert response.status_code == 200, response.text
    revoked = client.post(
        "/proxy/revoke",
        data={"token": response.json()["access_token"]},
        headers={"Authorization": basic(CLIENT_KEY, CLIENT_SECRET)},
    )
    assert revoked.status_code == 200, revoked.text
    assert [seen.path for seen in tiktok.seen] == [TOKEN_PATH, REVOKE_PATH]


def test_other_keys_need_the_allow_list_and_the_header(proxy_with, tiktok: TikTokStandIn) -> None:  # type: ignore[no-untyped-def]
    tiktok.clients[OTHER_KEY] = OTHER_SECRET
    other = {"grant_type": "client_credentials", "client_id": OTHER_KEY, "client_secret": OTHER_SECRET}

    # Own key only (no ALLOWED_CLIENT_KEYS): no other key is served, header or not.
    only_own = proxy_with(**OWN, proxy_secrets=GATED)
    for headers in ({}, {"X-Proxy-Secret": OLD}):
        refused = assert_oauth_error(only_own.post("/proxy/token", data=other, headers=headers), 401, "invalid_client")
        assert refused["error_description"] == ALLOW_LIST_REFUSAL
    assert tiktok.seen == []

    # Several TikTok apps behind one proxy: the others need ALLOWED_CLIENT_KEYS and, with PROXY_SECRET, the header.
    several = proxy_with(**OWN, proxy_secrets=GATED, allowed_client_keys=frozenset({OTHER_KEY}))
    refused = assert_oauth_error(several.post("/proxy/token", data=other), 401, "invalid_client")
    assert refused["error_description"].startswith(GATE_REFUSAL)
    assert tiktok.seen == []
    assert several.post("/proxy/token", data=other, headers={"X-Proxy-Secret": NEW}).status_code == 200
    assert [seen.form["client_key"] for seen in tiktok.seen] == [[OTHER_KEY]]

    # Without PROXY_SECRET, the allow-list alone admits them (TikTok then checks their secret).
    listed = proxy_with(**OWN, allowed_client_keys=frozenset({OTHER_KEY}))
    assert listed.post("/proxy/token", data=other).status_code == 200


def test_the_own_key_gate_keeps_the_authorize_route_to_its_keys(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(**OWN)
    assert client.get("/proxy/authorize", params={"client_id": CLIENT_KEY}).status_code == 302
    refused = client.get("/proxy/authorize", params={"client_id": OTHER_KEY})
    assert assert_oauth_error(refused, 401, "invalid_client")["error_description"] == ALLOW_LIST_REFUSAL


def test_the_log_says_whether_the_header_came_never_its_value(
    proxy_with, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(**OWN, proxy_secrets=GATED, log_level="DEBUG")
    with caplog.at_level(logging.DEBUG):
        client.post("/proxy/token", data=code_grant(tiktok.issue_code()))
        client.post("/proxy/token", data=code_grant(tiktok.issue_code()), headers={"X-Proxy-Secret": OLD})
        client.post("/proxy/token", data=code_grant(tiktok.issue_code(), client_secret=WRONG_SECRET))
    lines = [line for line in caplog.text.splitlines() if "event=token " in line]
    assert len(lines) == 3, caplog.text
    assert lines[0].endswith("status=200 gate_header=absent")
    assert lines[1].endswith("status=200 gate_header=sent")
    assert "outcome=invalid_client" in lines[2] and lines[2].endswith("status=401 gate_header=absent")
    for value in (OLD, NEW, CLIENT_SECRET, WRONG_SECRET):
        assert value not in caplog.text


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({}, "open"),
        ({"proxy_secrets": GATED}, "header"),
        ({"allowed_client_keys": frozenset({OTHER_KEY})}, "allow_list"),
        (OWN, "own_key"),
        ({**OWN, "proxy_secrets": GATED}, "own_key+header"),
        ({**OWN, "proxy_secrets": GATED, "allowed_client_keys": frozenset({OTHER_KEY})}, "own_key+header+allow_list"),
    ],
)
def test_the_startup_line_names_the_gate_mode(
    proxy_with, caplog: pytest.LogCaptureFixture, changes: dict[str, object], mode: str
) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.INFO):
        proxy_with(**changes)
    (start,) = [line for line in caplog.text.splitlines() if "event=start " in line]
    assert f" gate={mode} " in start and start.endswith(" oidc=off oidc_gate=-")  # the facade is off
    assert ("the proxy has no gate" in caplog.text) == (mode == "open")
    # A header gate with no allow-list relays for anyone's client key that carries the header.
    assert ("ALLOWED_CLIENT_KEYS is empty" in caplog.text) == (mode == "header")


# ------------------------------------------------------------------------- fail closed (issue 15)


def test_a_gate_secret_with_no_value_in_it_is_a_configuration_error() -> None:
    for value in (" , ", ",", ",,  ,"):
        with pytest.raises(ConfigError) as refused:
            load_settings({"PROXY_SECRET": value})
        assert refused.value.variable == "PROXY_SECRET" and "holds no value" in str(refused.value)
    with pytest.raises(ConfigError, match="ALLOWED_CLIENT_KEYS is set but holds no value"):
        load_settings({"ALLOWED_CLIENT_KEYS": " , "})


def test_the_own_key_and_secret_go_together() -> None:
    with pytest.raises(ConfigError, match="^TIKTOK_CLIENT_SECRET is not set, but TIKTOK_CLIENT_KEY is"):
        load_settings({"TIKTOK_CLIENT_KEY": CLIENT_KEY})
    with pytest.raises(ConfigError, match="^TIKTOK_CLIENT_KEY is not set, but TIKTOK_CLIENT_SECRET is"):
        load_settings({"TIKTOK_CLIENT_SECRET": CLIENT_SECRET})
    settings = load_settings({"TIKTOK_CLIENT_KEY": CLIENT_KEY, "TIKTOK_CLIENT_SECRET": CLIENT_SECRET})
    assert (settings.tiktok_client_key, settings.tiktok_client_secret) == (CLIENT_KEY, CLIENT_SECRET)
    assert CLIENT_SECRET not in repr(settings)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "proxy.internal"])
def test_off_loopback_the_proxy_needs_a_gate(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"HOST": host})
    # One TikTok app's own key and secret first; the header secret for several apps behind one proxy.
    assert refused.value.variable == "TIKTOK_CLIENT_KEY"
    message = str(refused.value)
    assert message.index("TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET") < message.index("PROXY_SECRET")
    assert "openssl rand -hex 32" in message and "\n" not in message
    for gate in (
        {"PROXY_SECRET": OLD},
        {"TIKTOK_CLIENT_KEY": CLIENT_KEY, "TIKTOK_CLIENT_SECRET": CLIENT_SECRET},
        {"ALLOWED_CLIENT_KEYS": CLIENT_KEY},
        {"ALLOW_OPEN_RELAY": "true"},
    ):
        assert load_settings({"HOST": host, **gate}).host == host
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert load_settings({"HOST": loopback}).proxy_secrets == frozenset()  # a laptop needs no gate
    with pytest.raises(ConfigError, match="ALLOW_OPEN_RELAY must be true or false"):
        load_settings({"HOST": host, "ALLOW_OPEN_RELAY": "maybe"})


def test_refused_exchanges_log_the_grant_they_asked_for(
    proxy_with, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(**OWN)
    refresh = {"grant_type": "refresh_token", "refresh_token": "rft.x", "client_id": OTHER_KEY, "client_secret": "x"}
    with caplog.at_level(logging.INFO):
        own_key_refusal(client.post("/proxy/token", data=code_grant("c", client_secret=WRONG_SECRET)))
        assert_oauth_error(client.post("/proxy/token", data=refresh), 401, "invalid_client")  # not allowed
        assert_oauth_error(client.post("/proxy/token", data=code_grant("c", grant_type="password")), 400,
                           "unsupported_grant_type")  # fmt: skip
        forged = code_grant("c", grant_type="authorization_code\nINFO tiktok_proxy event=token outcome=ok")
        assert_oauth_error(client.post("/proxy/token", data=forged), 400, "unsupported_grant_type")
        no_grant = {name: value for name, value in code_grant("c").items() if name != "grant_type"}
        assert_oauth_error(client.post("/proxy/token", data=no_grant), 400, "invalid_request")
    lines = [line for line in caplog.text.splitlines() if "event=token " in line]
    # A known grant as it is; any other value as one fixed word, so nothing the caller sends lands in the line.
    grants = [line.split(" grant=")[1].split()[0] for line in lines]
    assert grants == ["authorization_code", "refresh_token", "other", "other", "-"], caplog.text
    assert all("upstream_status=-" in line for line in lines)  # all refused by the proxy itself
    assert tiktok.seen == []

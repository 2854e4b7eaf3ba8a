"""Auth0 Token Vault through the proxy (issue 17), played over loopback by the Auth0 stand-in.

The Auth0 stand-in (tests/stand_ins/auth0_login.py) reads the connection as setup-auth0 writes it and talks to the
Token URL as passport-oauth2 on node-oauth does: a login (with the connection's customHeaders), then Token Vault's
refreshes (form credentials, and no custom header at all: Auth0 does not document that it sends them there). The
proxy holds the TikTok app's secret (TIKTOK_CLIENT_KEY, TIKTOK_CLIENT_SECRET) and checks it itself.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tiktok_proxy.auth0.management import AdminSettings
from tiktok_proxy.auth0.setup import desired_options
from tiktok_proxy.inbound import OWN_SECRET_REFUSAL

from conftest import ServerThread
from stand_ins.auth0_login import Auth0LoginStandIn, LoginError
from stand_ins.auth0_management import Auth0StandIn
from stand_ins.tiktok import AUTHORIZE_PATH, CLIENT_KEY, CLIENT_SECRET, USER, TikTokStandIn

GATE_SECRET = "token-vault-gate-secret-0123456789"
APP = "app-one"  # the Auth0 application, first-party and confidential
USER_ID = f"oauth2|tiktok|{USER['open_id']}"


@dataclass
class Tenant:
    login: Auth0LoginStandIn
    url: str
    proxy_url: str
    options: dict[str, object]  # the connection's options, as setup-auth0 wrote them


@pytest.fixture
def tenant(
    stand_in_server: tuple[TikTokStandIn, ServerThread],
    tiktok: TikTokStandIn,
    proxy_with: Callable[..., httpx.Client],
) -> Iterator[Tenant]:
    if shutil.which("node") is None:
        pytest.fail("Node.js is missing: the Auth0 stand-in runs the profile script with it (scripts/setup-tests)")
    _, tiktok_http = stand_in_server
    proxy = proxy_with(
        tiktok_client_key=CLIENT_KEY,
        tiktok_client_secret=CLIENT_SECRET,
        proxy_secrets=frozenset({GATE_SECRET}),  # set, and written into customHeaders: logins send it
        authorize_url=tiktok_http.url + AUTHORIZE_PATH,
        log_level="DEBUG",
    )
    proxy_url = str(proxy.base_url).rstrip("/")
    management = Auth0StandIn()
    login = Auth0LoginStandIn(management, {"https://open.tiktokapis.com": tiktok_http.url}, ca_file="")
    with ServerThread(login.app()) as server:
        admin = AdminSettings(
            public_url=proxy_url,
            tiktok_client_key=CLIENT_KEY,
            tiktok_client_secret=CLIENT_SECRET,
            proxy_secret=GATE_SECRET,
        )
        options = desired_options(admin, use_proxy_authorize=True)  # exactly what setup-auth0 writes
        connection_id = management.add_connection("tiktok", options)
        management.enabled[connection_id] = {APP}
        tiktok.redirect_uris.add(f"{server.url}/login/callback")  # registered in TikTok's portal
        yield Tenant(login, server.url, proxy_url, options)


def connect_account(tenant: Tenant) -> tuple[dict[str, list[str]], dict[str, object]]:
    """Connected Accounts' login, redirect by redirect as a browser follows it: what TikTok's authorize page was
    asked for, and the profile the application got back."""
    with httpx.Client(timeout=10) as browser:
        query = {"connection": "tiktok", "client_id": APP, "redirect_uri": "https://app.example/callback",
                 "state": "s1", "purpose": "connected_accounts"}  # fmt: skip
        to_proxy = browser.get(f"{tenant.url}/authorize", params=query)
        assert to_proxy.headers["location"].startswith(f"{tenant.proxy_url}/proxy/authorize?")
        to_tiktok = browser.get(to_proxy.headers["location"])
        assert to_tiktok.status_code == 302, to_tiktok.text
        asked = parse_qs(urlsplit(to_tiktok.headers["location"]).query)
        consent_page = browser.get(to_tiktok.headers["location"])
        assert consent_page.status_code == 200, consent_page.text  # TikTok's page refuses scopes it does not know
        consent = re.search(r'name="consent" value="([^"]+)"', consent_page.text)
        assert consent, consent_page.text
        to_callback = browser.post(
            to_tiktok.headers["location"].split("?")[0], data={"consent": consent[1], "decision": "authorize"}
        )
        to_app = browser.get(to_callback.headers["location"])
        back = parse_qs(urlsplit(to_app.headers["location"]).query)
    assert "profile" in back, back
    return asked, json.loads(back["profile"][0])


def exchange_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "event=token " in line]


def test_token_vault_refreshes_without_the_header(
    tenant: Tenant, tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        asked, profile = connect_account(tenant)
        assert profile["user_id"] == USER_ID
        # TikTok was asked only for its own scopes: Connected Accounts' openid, profile, offline_access dropped.
        assert asked["scope"] == ["user.info.basic"] and asked["client_key"] == [CLIENT_KEY]

        stored = tenant.login.vault[USER_ID]
        seen: list[str] = [stored["refresh_token"]]
        for _ in range(3):  # Token Vault refreshes as the access token expires; TikTok rotates every time
            access_token = tenant.login.refresh(USER_ID)
            assert access_token in tiktok.access_tokens
            assert stored["refresh_token"] not in seen  # the new one replaced the old
            seen.append(stored["refresh_token"])
        assert list(tiktok.refresh_tokens) == [seen[-1]]  # only the newest still works at TikTok

        # A refresh token that was replaced is refused, as a grant that no longer works.
        with httpx.Client() as auth0:
            form = {"grant_type": "refresh_token", "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET,
                    "refresh_token": seen[0]}  # fmt: skip
            old = auth0.post(f"{tenant.proxy_url}/proxy/token", data=form)
        assert old.status_code == 400 and old.json()["error"] == "invalid_grant"

    # The refreshes reached TikTok with form credentials, and never with X-Proxy-Secret.
    refreshes = [seen for seen in tiktok.seen if seen.form.get("grant_type") == ["refresh_token"]]
    assert len(refreshes) == 4 and all(seen.form["client_key"] == [CLIENT_KEY] for seen in refreshes)
    lines = exchange_lines(caplog.text)
    assert [line.split(" status=")[1] for line in lines] == [
        "200 gate_header=sent",  # the login: Auth0 sends customHeaders on the code exchange
        "200 gate_header=absent",
        "200 gate_header=absent",
        "200 gate_header=absent",
        "400 gate_header=absent",
    ], caplog.text
    assert all("grant=refresh_token" in line for line in lines[1:])
    for value in (CLIENT_SECRET, GATE_SECRET, *seen):
        assert value not in caplog.text


def test_a_refresh_with_a_wrong_secret_never_reaches_tiktok(tenant: Tenant, tiktok: TikTokStandIn) -> None:
    connect_account(tenant)
    before = len(tiktok.seen)
    wrong = "a-client-secret-that-is-not-the-apps"
    tenant.options["client_secret"] = wrong
    with pytest.raises(LoginError) as refused:
        tenant.login.refresh(USER_ID)
    assert (refused.value.code, str(refused.value)) == ("invalid_client", OWN_SECRET_REFUSAL)
    # Nor does the right X-Proxy-Secret open the way for a wrong secret.
    form = {"grant_type": "refresh_token", "client_id": CLIENT_KEY, "client_secret": wrong,
            "refresh_token": tenant.login.vault[USER_ID]["refresh_token"]}  # fmt: skip
    with httpx.Client() as auth0:
        with_header = auth0.post(f"{tenant.proxy_url}/proxy/token", data=form, headers={"X-Proxy-Secret": GATE_SECRET})
    assert with_header.status_code == 401 and with_header.json()["error_description"] == OWN_SECRET_REFUSAL
    assert tiktok.seen[before:] == []  # TikTok never saw either

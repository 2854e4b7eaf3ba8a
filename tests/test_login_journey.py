"""A user's first login, in a real browser, from what `python proxy.py setup-auth0` wrote.

Everything runs on 127.0.0.1 over real sockets: a tiny application, the Auth0 tenant (the Management API
stand-in plus the login stand-in, tests/stand_ins/auth0_login.py), TikTok's authorize page, token and user-info
endpoints (tests/stand_ins/tiktok.py), and the real proxy over https. chromium drives it through Playwright.
Each journey starts from a clean tenant and a fresh `setup-auth0` run.

Screenshots go to $JOURNEY_ARTIFACTS (or pytest's tmp_path); with UPDATE_SCREENSHOTS=1, two of them also
to docs/screenshots/.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tiktok_proxy.app import create_app
from tiktok_proxy.config import load_settings

from conftest import ServerThread, screenshot
from stand_ins.app_page import page
from stand_ins.auth0_login import Auth0LoginStandIn
from stand_ins.auth0_management import MGMT_CLIENT_ID, MGMT_CLIENT_SECRET, Auth0StandIn
from stand_ins.tiktok import AUTHORIZE_PATH, CLIENT_KEY, CLIENT_SECRET, REVOKE_PATH, TOKEN_PATH, USER, TikTokStandIn
from test_admin import cli

APP_CLIENT_ID = "app-one"  # the Auth0 application the connection is enabled for
GATE_SECRET = "gate-secret-for-the-journeys-0123456789"
SIGNED_IN = f"Signed in as Ada on TikTok (oauth2|tiktok|{USER['open_id']})"

# ------------------------------------------------------------------------------------- the application


def application(tenant: str) -> Starlette:
    """An application that signs its users in with Auth0's tiktok connection."""
    states: set[str] = set()

    def home(request: Request) -> Response:
        state = secrets.token_urlsafe(12)
        states.add(state)
        query = urlencode(
            {
                "connection": "tiktok",
                "client_id": APP_CLIENT_ID,
                "response_type": "code",
                "redirect_uri": f"{request.base_url}callback",
                "state": state,
            }
        )
        return page(
            "Acme notes",
            "<h1>Acme notes</h1><p>Sign in to see your notes.</p>"
            f'<a class="tiktok" href="{escape(f"{tenant}/authorize?{query}")}">Continue with TikTok</a>',
        )

    def callback(request: Request) -> Response:
        query = request.query_params
        if query.get("state") not in states:
            return page("Sign-in failed", '<h1>Sign-in failed</h1><p class="error">The state does not match.</p>')
        states.discard(query["state"])
        if "error" in query:
            return page(
                "Sign-in failed",
                f'<h1>Sign-in failed</h1><p class="error" id="error"><code>{escape(query["error"])}</code>: '
                f'{escape(query.get("error_description", ""))}</p><p><a href="/">Try again</a></p>',
            )
        user = json.loads(query["profile"])
        username = f'<p id="username">@{escape(user["username"])} on TikTok</p>' if user.get("username") else ""
        return page(
            "Acme notes",
            f'<h1>Welcome to Acme notes</h1><p id="who">Signed in as <b>{escape(user["name"])}</b> '
            f'<span class="muted">({escape(user["user_id"])})</span></p>{username}',
        )

    return Starlette(routes=[Route("/", home), Route("/callback", callback)])


def old_v1_sample() -> Starlette:
    """The Express proxy Auth0's guide links (tylerkeesling/tiktok-access-token-proxy): it calls TikTok v1 and
    answers `data.data` with HTTP 200 whatever happened. Since v1's shutdown that is v1's error object, with no
    access_token (the description is illustrative: the exact text is not documented)."""

    async def token(request: Request) -> Response:
        return JSONResponse(
            {"captcha": "", "desc_url": "", "description": "API version is no longer supported", "error_code": 10002}
        )

    return Starlette(routes=[Route("/proxy/token", token, methods=["POST"])])


# ------------------------------------------------------------------------------------------ the world


@dataclass
class World:
    auth0: Auth0StandIn
    tenant: str
    app: str
    old_sample: str
    env: dict[str, str]  # what setup-auth0, doctor and the proxy read


@pytest.fixture(scope="module")
def world(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    _, tiktok = stand_in_server
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "proxy.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    auth0 = Auth0StandIn()
    # TikTok's real origins lead to the local stand-in, like /etc/hosts entries: the authorize URL way B
    # writes (https://www.tiktok.com/v2/auth/authorize/), and the user-info URL the profile script calls.
    hosts = {"https://www.tiktok.com": tiktok.url, "https://open.tiktokapis.com": tiktok.url}
    login = Auth0LoginStandIn(auth0, hosts, ca_file=str(folder / "ca.pem"))
    with ServerThread(login.app()) as tenant, ServerThread(old_v1_sample()) as old_sample:
        with ServerThread(application(tenant.url)) as app:
            env = {
                "PATH": os.environ["PATH"],
                "AUTH0_DOMAIN": tenant.url,
                "AUTH0_MGMT_CLIENT_ID": MGMT_CLIENT_ID,
                "AUTH0_MGMT_CLIENT_SECRET": MGMT_CLIENT_SECRET,
                "TIKTOK_CLIENT_KEY": CLIENT_KEY,
                "TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
                "ALLOWED_CLIENT_KEYS": CLIENT_KEY,
                "PROXY_SECRET": GATE_SECRET,
                "TIKTOK_TOKEN_URL": tiktok.url + TOKEN_PATH,
                "TIKTOK_REVOKE_URL": tiktok.url + REVOKE_PATH,
                "TIKTOK_AUTHORIZE_URL": tiktok.url + AUTHORIZE_PATH,  # way A: where /proxy/authorize sends
                "SSL_CERT_FILE": str(folder / "ca.pem"),  # for doctor's https check of PUBLIC_URL
            }
            # The real proxy, configured from the same variables, on https (setup-auth0 insists on it).
            proxy = ServerThread(create_app(load_settings(env)))
            proxy.server.config.ssl_certfile = str(folder / "proxy.pem")
            proxy.server.config.load()
            with proxy:
                env["PUBLIC_URL"] = f"https://localhost:{proxy.port}"
                yield World(auth0, tenant.url, app.url, f"{old_sample.url}/proxy/token", env)


# ------------------------------------------------------------------------------------------- journeys


def setup_auth0(world: World, tiktok: TikTokStandIn, *flags: str, scopes: str = "user.info.basic") -> dict[str, Any]:
    """A clean tenant, then `python proxy.py setup-auth0`; returns the connection's options as written."""
    world.auth0.__init__()  # type: ignore[misc]
    tiktok.redirect_uris.add(f"{world.tenant}/login/callback")  # registered in TikTok's portal
    result = cli({**world.env, "TIKTOK_SCOPES": scopes}, "setup-auth0", "--app", APP_CLIENT_ID, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    (connection,) = world.auth0.connections.values()
    return connection["options"]


def log_in(tab: Any, world: World, decision: str = "Authorize") -> dict[str, str]:
    """Click through the login; returns the query TikTok's authorize page was opened with."""
    tab.goto(world.app)
    tab.get_by_role("link", name="Continue with TikTok").click()
    tab.wait_for_url(lambda url: urlsplit(url).path == AUTHORIZE_PATH)
    asked = dict(parse_qsl(urlsplit(tab.url).query))
    if tab.get_by_role("button", name=decision).count():
        tab.get_by_role("button", name=decision).click()
        tab.wait_for_url(f"{world.app}/callback?**")
    return asked


@pytest.mark.parametrize(
    ("way", "scopes"),
    [
        ("A", "user.info.basic"),
        ("A", "user.info.basic user.info.profile"),  # setup-auth0 writes them comma-separated
        ("B", "user.info.basic"),
        ("B", "user.info.basic,user.info.profile"),
    ],
)
def test_first_login(world: World, tiktok: TikTokStandIn, tab: Any, artifacts: Path, way: str, scopes: str) -> None:
    setup_auth0(world, tiktok, *(["--use-proxy-authorize"] if way == "A" else []), scopes=scopes)
    asked = log_in(tab, world)
    with_profile = "profile" in scopes
    assert asked["client_key"] == CLIENT_KEY
    assert asked["scope"] == ("user.info.basic,user.info.profile" if with_profile else "user.info.basic")
    assert asked["redirect_uri"] == f"{world.tenant}/login/callback"
    assert ("client_id" in asked) == (way == "B")  # the proxy drops it; Auth0 always sends it
    assert tab.inner_text("#who") == SIGNED_IN
    # The profile follows the scopes: the username only with user.info.profile.
    assert tab.locator("#username").all_inner_texts() == (["@ada on TikTok"] if with_profile else [])
    assert cli(world.env, "doctor").returncode == 0  # and doctor agrees with the login that just worked
    name = f"signed-in-way-{way}-{'profile' if with_profile else 'basic'}"
    screenshot(tab, artifacts, name, "signed-in" if way == "B" and with_profile else "")


def test_cancel_on_tiktok_page(world: World, tiktok: TikTokStandIn, tab: Any, artifacts: Path) -> None:
    setup_auth0(world, tiktok)
    log_in(tab, world, decision="Cancel")
    assert tab.inner_text("#error") == "access_denied: The user denied the request."
    assert not any(seen.path == TOKEN_PATH for seen in tiktok.seen)
    screenshot(tab, artifacts, "cancelled")


def test_with_a_wrong_client_secret_the_proxy_refuses(
    world: World, tiktok: TikTokStandIn, tab: Any, artifacts: Path
) -> None:
    # The proxy holds TIKTOK_CLIENT_SECRET (world.env) and checks it itself, the right X-Proxy-Secret or not.
    options = setup_auth0(world, tiktok, "--use-proxy-authorize")
    assert options["customHeaders"] == {"X-Proxy-Secret": GATE_SECRET}
    options["client_secret"] = "a-client-secret-typed-wrong"
    log_in(tab, world)
    assert tab.inner_text("#error") == (
        "invalid_client: the client secret is not the one this proxy holds for its client key (TIKTOK_CLIENT_SECRET)"
    )
    assert not any(seen.path == TOKEN_PATH for seen in tiktok.seen)  # refused before TikTok
    screenshot(tab, artifacts, "gate-refused", "error")


def test_a_token_url_left_on_the_old_v1_sample(world: World, tiktok: TikTokStandIn, tab: Any, artifacts: Path) -> None:
    options = setup_auth0(world, tiktok)
    options["tokenURL"] = world.old_sample
    log_in(tab, world)
    assert tab.inner_text("#error") == "server_error: Failed to obtain access token"
    screenshot(tab, artifacts, "old-v1-sample")
    doctor = cli(world.env, "doctor")
    assert doctor.returncode == 1
    assert f"problem  the Token URL is {world.old_sample}\n" in doctor.stdout, doctor.stdout
    assert f"fix: set it to {world.env['PUBLIC_URL']}/proxy/token" in doctor.stdout


def test_way_b_without_upstream_params_stops_on_tiktok_page(world: World, tiktok: TikTokStandIn, tab: Any) -> None:
    options = setup_auth0(world, tiktok)
    del options["upstream_params"]
    asked = log_in(tab, world)
    assert "client_key" not in asked and asked["client_id"] == CLIENT_KEY
    assert "Please correct the following: client_key" in tab.inner_text("body")

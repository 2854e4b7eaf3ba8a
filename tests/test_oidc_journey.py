"""A user signs in to an application through the OpenID Connect facade, in a real browser.

The application is Authlib's Starlette client (tests/stand_ins/authlib_rp.py), the OpenID provider is the real
proxy with the facade on, and TikTok's authorize page, token and user-info endpoints are the stand-in; all on
127.0.0.1, driven by Debian's chromium through Playwright (the fixtures of the Auth0 journeys, in conftest.py).
With UPDATE_SCREENSHOTS=1 the screenshots also go to docs/screenshots/oidc-*.png.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from conftest import OIDCProxy, ServerThread, screenshot
from stand_ins.authlib_rp import AuthlibRelyingParty
from stand_ins.tiktok import AUTHORIZE_PATH, CLIENT_KEY, CLIENT_SECRET, TOKEN_PATH, USER, TikTokStandIn


@pytest.fixture
def application(start_oidc: Callable[..., OIDCProxy]) -> Iterator[tuple[AuthlibRelyingParty, str, OIDCProxy]]:
    rp = AuthlibRelyingParty(client_id=CLIENT_KEY, client_secret=CLIENT_SECRET)
    with ServerThread(rp.app()) as app:
        proxy = start_oidc(key="ec", OIDC_REDIRECT_URIS=f"{app.url}/callback")
        rp.issuer = proxy.url
        yield rp, app.url, proxy


def open_tiktok_page(tab: Any, app: str) -> dict[str, str]:
    """From the application's page to TikTok's authorize page; the query TikTok was opened with."""
    tab.goto(app)
    tab.get_by_role("link", name="Continue with TikTok").click()
    tab.wait_for_url(lambda url: urlsplit(url).path == AUTHORIZE_PATH)
    return dict(parse_qsl(urlsplit(tab.url).query))


def test_sign_in_through_the_facade(
    application: tuple[AuthlibRelyingParty, str, OIDCProxy], tab: Any, artifacts: Path
) -> None:
    rp, app, proxy = application
    asked = open_tiktok_page(tab, app)
    assert asked["client_key"] == CLIENT_KEY and asked["scope"] == "user.info.basic,user.info.profile"
    assert asked["redirect_uri"] == f"{proxy.url}/oidc/callback"  # the one URI registered at TikTok
    screenshot(tab, artifacts, "oidc-tiktok-consent", "oidc-tiktok-consent")
    tab.get_by_role("button", name="Authorize").click()
    tab.wait_for_url(f"{app}/callback?**")
    assert tab.inner_text("#who") == "Signed in as Ada on TikTok"
    assert tab.inner_text("#username") == "@ada on TikTok"
    assert tab.inner_text("#sub") == f"sub {USER['open_id']}, from {proxy.url}"
    (signed_in,) = rp.signed_in
    assert signed_in["claims"]["sub"] == signed_in["userinfo"]["sub"] == USER["open_id"]
    screenshot(tab, artifacts, "oidc-signed-in", "oidc-signed-in")


def test_cancel_on_tiktok_page(
    application: tuple[AuthlibRelyingParty, str, OIDCProxy], tiktok: TikTokStandIn, tab: Any, artifacts: Path
) -> None:
    rp, app, _ = application
    open_tiktok_page(tab, app)
    tab.get_by_role("button", name="Cancel").click()
    tab.wait_for_url(f"{app}/callback?**")
    assert tab.inner_text("#error") == "access_denied: The user denied the request."
    assert rp.signed_in == [] and not any(seen.path == TOKEN_PATH for seen in tiktok.seen)
    screenshot(tab, artifacts, "oidc-cancelled", "oidc-cancelled")


def test_an_application_whose_redirect_uri_is_not_configured(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, tab: Any, artifacts: Path
) -> None:
    rp = AuthlibRelyingParty(client_id=CLIENT_KEY, client_secret=CLIENT_SECRET)
    with ServerThread(rp.app()) as app:
        rp.issuer = start_oidc().url  # OIDC_REDIRECT_URIS does not list this application's callback
        tab.goto(app.url)
        tab.get_by_role("link", name="Continue with TikTok").click()
        tab.wait_for_url(f"{rp.issuer}/oidc/authorize?**")
        assert tab.inner_text("#error") == (
            "redirect_uri is missing or is not one of this provider's OIDC_REDIRECT_URIS"
        )
    assert tiktok.seen == []  # the browser never reached TikTok
    screenshot(tab, artifacts, "oidc-unknown-redirect-uri", "oidc-refused")

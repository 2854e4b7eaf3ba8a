"""A user signs in to an application through the OpenID Connect facade, in a real browser.

The application is Authlib's Starlette client (tests/stand_ins/authlib_rp.py), the OpenID provider is the real
proxy with the facade on, and TikTok's authorize page, token and user-info endpoints are the stand-in; all on
127.0.0.1, driven by Debian's chromium through Playwright (the fixtures of the Auth0 journeys, in conftest.py).
With UPDATE_SCREENSHOTS=1 the screenshots also go to docs/screenshots/oidc-*.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from conftest import LocalhostTLS, OIDCProxy, ServerThread, screenshot
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
    assert (
        tab.inner_text("#error") == "access_denied: the user cancelled on TikTok's page, or TikTok refused the sign-in"
    )
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


# ------------------------------------------------------------------- the sign-in bound to its browser


@pytest.fixture
def https_applications(
    start_oidc: Callable[..., OIDCProxy], localhost_tls: LocalhostTLS
) -> Iterator[tuple[list[tuple[AuthlibRelyingParty, str]], OIDCProxy]]:
    """Two applications and the facade, which is on https://localhost (its cookies then have the __Host- prefix
    and Secure), while the applications and TikTok are on http://127.0.0.1: TikTok's redirect back to the facade
    crosses sites, as in production."""
    trust = localhost_tls.context()
    rps = [
        AuthlibRelyingParty(client_id=CLIENT_KEY, client_secret=CLIENT_SECRET, verify=trust, session_cookie=cookie)
        for cookie in ("session-1", "session-2")
    ]
    with ServerThread(rps[0].app()) as first, ServerThread(rps[1].app()) as second:
        callbacks = f"{first.url}/callback,{second.url}/callback"
        proxy = start_oidc(key="ec", tls=True, OIDC_REDIRECT_URIS=callbacks)
        for rp in rps:
            rp.issuer = proxy.url
        yield [(rps[0], first.url), (rps[1], second.url)], proxy


def test_two_sign_ins_at_once_in_one_browser(
    https_applications: tuple[list[tuple[AuthlibRelyingParty, str]], OIDCProxy], tab: Any
) -> None:
    """Two tabs, each signing in to an application (Authlib keeps one sign-in per session, so two applications),
    both waiting on TikTok's page at once, then finished in the other order."""
    applications, proxy = https_applications
    tabs = [tab, tab.context.new_page()]
    for page, (_, app) in zip(tabs, applications, strict=True):
        open_tiktok_page(page, app)
    cookies = tab.context.cookies(proxy.url)
    assert len(cookies) == 2, cookies
    for cookie in cookies:
        assert cookie["name"].startswith("__Host-tiktok-oidc-") and cookie["path"] == "/"
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert 0 < cookie["expires"] - time.time() <= 600
    for page, (rp, app) in reversed(list(zip(tabs, applications, strict=True))):
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"{app}/callback?**")
        assert page.inner_text("#who") == "Signed in as Ada on TikTok"
        assert len(rp.signed_in) == 1
    assert tab.context.cookies(proxy.url) == []  # each callback expired its own


def test_a_state_brought_back_in_another_browser_gets_the_page(
    https_applications: tuple[list[tuple[AuthlibRelyingParty, str]], OIDCProxy],
    tiktok: TikTokStandIn,
    browser: Any,
    tab: Any,
    artifacts: Path,
) -> None:
    ((rp, app), _), proxy = https_applications
    state = open_tiktok_page(tab, app)["state"]  # the user's sign-in, pending on TikTok's page
    # Someone who got hold of that state brings it back, with a TikTok code of their own, in their browser.
    their_code = tiktok.issue_code(redirect_uri=f"{proxy.url}/oidc/callback")
    other = browser.new_context(ignore_https_errors=True, viewport={"width": 880, "height": 420})
    try:
        page = other.new_page()
        page.goto(f"{proxy.url}/oidc/callback?{urlencode({'code': their_code, 'state': state})}")
        assert page.url.startswith(f"{proxy.url}/oidc/callback?")  # no redirect to the application
        assert page.inner_text("#error") == (
            "the sign-in was not started in this browser, or is already finished: start again from the application"
        )
        screenshot(page, artifacts, "oidc-other-browser", "oidc-other-browser")
    finally:
        other.close()
    assert not any(seen.path == TOKEN_PATH for seen in tiktok.seen) and rp.signed_in == []
    # The user's own sign-in is untouched.
    tab.get_by_role("button", name="Authorize").click()
    tab.wait_for_url(f"{app}/callback?**")
    assert tab.inner_text("#who") == "Signed in as Ada on TikTok"


def test_the_refusal_page_cannot_be_framed(application: tuple[AuthlibRelyingParty, str, OIDCProxy], tab: Any) -> None:
    _, _, proxy = application
    refused = f"{proxy.url}/oidc/callback?state=not-a-sealed-state"
    tab.goto(refused)
    assert "Sign-in failed" in tab.content()  # on its own, the page shows
    tab.set_content(f'<iframe src="{refused}"></iframe>')
    frame = tab.frames[1]
    frame.wait_for_load_state()
    assert "Sign-in failed" not in frame.content()  # in a frame, chromium refuses to show it

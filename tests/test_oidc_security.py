"""The facade's defences (issue 21's review, and RFC 6749 §5.2's client authentication errors): the gate on the
token endpoint, the sign-in state bound to its browser, TikTok's callback errors never relayed as they came, PKCE
verifiers of RFC 7636's shape, https redirect URIs, and refusal pages no other site can frame.

The same real proxy and TikTok stand-in as test_oidc.py; each refusal checks what TikTok saw (nothing, where the
proxy can decide alone) and that the answer is the OAuth error it should be, never a 500. The browser's side of the
binding (two tabs, another browser, framing) is in test_oidc_journey.py, in chromium.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from tiktok_proxy.config import ConfigError, load_settings
from tiktok_proxy.inbound import OWN_SECRET_REFUSAL
from tiktok_proxy.oidc.binding import Binding

from conftest import OTHER_CLIENT_KEY, RP_REDIRECT, OIDCProxy, oidc_env
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, TikTokStandIn
from test_oidc import CHALLENGE, authorize_params, consent, query_of, redeem, sign_in, token_requests

OWN_KEY = {"TIKTOK_CLIENT_KEY": CLIENT_KEY, "TIKTOK_CLIENT_SECRET": CLIENT_SECRET}
NOT_STARTED_HERE = "the sign-in was not started in this browser, or is already finished"


def refusal_page(answer: httpx.Response) -> str:
    """The refusal page's message, once the answer is shown to be that page and not a redirect."""
    assert answer.status_code == 400 and "location" not in answer.headers, answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    found = re.search(r'<p id="error">([^<]*)</p>', answer.text)
    assert found, answer.text
    return found.group(1)


def pending_sign_in(proxy: OIDCProxy, browser: httpx.Client | None = None) -> tuple[str, httpx.Response]:
    """The facade's authorize step in `browser` (the proxy's own client by default): the sealed state sent to
    TikTok, and the answer that carried the cookie."""
    answer = (browser or proxy.http).get(proxy.url + "/oidc/authorize", params=authorize_params())
    return query_of(answer)["state"], answer


def callback(proxy: OIDCProxy, browser: httpx.Client, **params: str) -> httpx.Response:
    return browser.get(proxy.url + "/oidc/callback", params=params)


# ------------------------------------------------------------------------ the gate on POST /oidc/token


def test_with_its_own_key_the_proxy_refuses_a_wrong_secret_before_tiktok(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        proxy = start_oidc(**OWN_KEY)
    (start,) = [line for line in caplog.text.splitlines() if "event=start " in line]
    assert " gate=own_key+allow_list " in start and start.endswith(" oidc_gate=own_key+allow_list")
    code = sign_in(proxy)["code"]
    bogus = {"code": "not-a-sealed-code", "code_verifier": ""}
    refused = [
        redeem(proxy, code, client_secret="wrong-secret"),  # client_secret_post
        redeem(proxy, "not-a-sealed-code", client_secret="wrong-secret", code_verifier=""),  # before the code
        proxy.http.post(
            proxy.url + "/oidc/token",
            data={"grant_type": "authorization_code", "redirect_uri": RP_REDIRECT, **bogus},
            auth=(CLIENT_KEY, "wrong-secret"),  # client_secret_basic
        ),
        proxy.http.post(
            proxy.url + "/oidc/token",
            data={"grant_type": "refresh_token", "refresh_token": "rft.any"},
            auth=(CLIENT_KEY, "wrong-secret"),
        ),
    ]
    for answer in refused:
        assert answer.status_code == 401, answer.text
        assert answer.json() == {"error": "invalid_client", "error_description": OWN_SECRET_REFUSAL}
        assert answer.headers["www-authenticate"].startswith("Basic")
    assert token_requests(tiktok) == 0
    assert redeem(proxy, code).status_code == 200  # TikTok never saw the code: the right secret still redeems it
    assert "wrong-secret" not in caplog.text and CLIENT_SECRET not in caplog.text


def test_for_a_key_whose_secret_the_proxy_does_not_hold_tiktok_decides(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    proxy = start_oidc(**OWN_KEY, ALLOWED_CLIENT_KEYS=OTHER_CLIENT_KEY)
    code = sign_in(proxy, client_id=OTHER_CLIENT_KEY)["code"]
    answer = redeem(proxy, code, client_id=OTHER_CLIENT_KEY, client_secret="wrong-secret")
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    assert answer.json()["error_description"] != OWN_SECRET_REFUSAL  # TikTok's own refusal
    assert token_requests(tiktok) == 1


@pytest.mark.parametrize(
    ("form", "basic", "names"),
    [
        ({}, None, "client_id"),  # no client authentication at all
        ({"client_id": CLIENT_KEY}, None, "client_secret"),  # a public client: none is served
        ({"client_secret": CLIENT_SECRET}, None, "client_id"),
        (
            {
                "client_id": CLIENT_KEY,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
            },
            None,
            "client_assertion",
        ),  # private_key_jwt
        ({"client_assertion": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}, (CLIENT_KEY, CLIENT_SECRET), "client_assertion"),
    ],
)
def test_missing_or_unsupported_client_authentication_is_invalid_client(
    start_oidc: Callable[..., OIDCProxy],
    tiktok: TikTokStandIn,
    form: dict[str, str],
    basic: tuple[str, str] | None,
    names: str,
) -> None:
    """RFC 6749 §5.2: invalid_client, 401, with WWW-Authenticate (which a client that tried Basic must get)."""
    proxy = start_oidc()
    code = sign_in(proxy)["code"]
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": RP_REDIRECT}
    answer = proxy.http.post(proxy.url + "/oidc/token", data={**grant, **form}, auth=basic)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client", answer.text
    assert names in answer.json()["error_description"]
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert token_requests(tiktok) == 0


# ------------------------------------------------------------------------ the state bound to its browser


def test_authorize_sets_a_cookie_that_the_state_holds_only_a_digest_of(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()  # PUBLIC_URL is http://127.0.0.1 here: no Secure, no __Host- (see the https case below)
    state, answer = pending_sign_in(proxy)
    (set_cookie,) = answer.headers.get_list("set-cookie")
    name, value = set_cookie.split(";")[0].split("=", 1)
    assert re.fullmatch(r"tiktok-oidc-[A-Za-z0-9_-]{8}", name) and len(value) >= 22
    attributes = {part.strip().lower() for part in set_cookie.split(";")[1:]}
    assert attributes == {"httponly", "max-age=600", "path=/", "samesite=lax"}
    sealed = proxy.sealer("state").unseal(state)
    assert value not in state and value not in str(sealed)
    assert sealed["b"] == [name, base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).decode().rstrip("=")]


def test_on_an_https_issuer_the_cookie_is_host_prefixed_and_secure() -> None:
    binding = Binding.new(secure=True)
    response = Response()
    binding.set_on(Request({"type": "http", "headers": []}), response, 600)
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith(f"__Host-tiktok-oidc-{binding.name.removeprefix('__Host-tiktok-oidc-')}=")
    attributes = {part.strip().lower() for part in set_cookie.split(";")[1:]}
    # __Host-: Secure, Path=/ and no Domain, or browsers drop it (RFC 6265bis, the __Host- prefix).
    assert attributes == {"httponly", "max-age=600", "path=/", "samesite=lax", "secure"}


def test_a_state_without_its_cookie_gets_the_page(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = start_oidc()
    state, answer = pending_sign_in(proxy)
    binding_value = answer.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    code = tiktok.issue_code(redirect_uri=proxy.url + "/oidc/callback")  # a TikTok code of someone's choosing
    name = proxy.sealer("state").unseal(state)["b"][0]
    with httpx.Client(timeout=10) as elsewhere:
        for cookies in ({}, {name: "a-guess-at-the-value"}, {name: ""}):
            elsewhere.cookies.clear()
            for cookie, guess in cookies.items():
                elsewhere.cookies.set(cookie, guess, domain="127.0.0.1")
            assert NOT_STARTED_HERE in refusal_page(callback(proxy, elsewhere, code=code, state=state)), cookies
    assert tiktok.seen == []
    # In the browser that started it, the same state and code go through, once.
    to_rp = callback(proxy, proxy.http, code=code, state=state)
    assert to_rp.headers["location"].startswith(RP_REDIRECT + "?") and "code" in query_of(to_rp)
    assert f"{name}=" in to_rp.headers["set-cookie"] and "Max-Age=0" in to_rp.headers["set-cookie"]
    assert NOT_STARTED_HERE in refusal_page(callback(proxy, proxy.http, code=code, state=state))
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("tiktok_proxy", "uvicorn")))
    assert "event=oidc_callback outcome=invalid_request" in logged
    for secret in (binding_value, state, code):
        assert secret not in logged


def test_a_state_sealed_before_states_were_bound_gets_the_page(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    sealed = {"c": CLIENT_KEY, "r": RP_REDIRECT, "s": "x", "n": None, "pc": None, "sc": ["user.info.basic"]}
    answer = callback(proxy, proxy.http, code="code*abc", state=proxy.sealer("state").seal(sealed, 60))
    assert NOT_STARTED_HERE in refusal_page(answer)  # during an upgrade: start again, never a 500


def test_two_sign_ins_in_flight_in_one_browser(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    first, second = consent(proxy), consent(proxy)
    assert len(proxy.http.cookies) == 2
    for url in (second, first):
        code = query_of(proxy.http.get(url))["code"]
        assert redeem(proxy, code).status_code == 200
    assert len(proxy.http.cookies) == 0  # each callback expired its own cookie


def test_cookies_of_unfinished_sign_ins_stay_bounded(start_oidc: Callable[..., OIDCProxy]) -> None:
    """Sign-ins nobody finishes must not grow the request head: past 10 in flight, the older ones are dropped."""
    proxy = start_oidc()
    for _ in range(10):
        pending_sign_in(proxy)
    assert len(proxy.http.cookies) == 10
    state, answer = pending_sign_in(proxy)
    assert len(answer.headers.get_list("set-cookie")) == 11
    assert len(proxy.http.cookies) == 1
    sealed = proxy.sealer("state").unseal(state)
    assert list(proxy.http.cookies) == [sealed["b"][0]]  # the newest sign-in's


# -------------------------------------------------------------------------- TikTok's error on the callback


@pytest.mark.parametrize(
    ("tiktok_said", "error", "description"),
    [
        (
            {"error": "access_denied", "error_description": "The user denied the request."},
            "access_denied",
            "the user cancelled on TikTok's page, or TikTok refused the sign-in",
        ),
        (
            {
                "error": "access_denied",
                "error_description": "<img src=x onerror=alert(1)> Your account is locked: call +1 555 0100",
            },
            "access_denied",
            "the user cancelled on TikTok's page, or TikTok refused the sign-in",
        ),
        (
            {"error": "<script>alert(1)</script>", "error_description": "x" * 10_000},
            "access_denied",
            "the user cancelled on TikTok's page, or TikTok refused the sign-in",
        ),
        (
            {"error": "access_denied", "error_type": "scope_not_authorized"},
            "access_denied",
            "the user cancelled on TikTok's page, or TikTok refused the sign-in "
            "(TikTok's error_type: scope_not_authorized)",
        ),
        (
            {"error": "non_sandbox_target", "error_type": "Call us <now>"},
            "access_denied",
            "the user cancelled on TikTok's page, or TikTok refused the sign-in (TikTok's error: non_sandbox_target)",
        ),
        ({"error": "invalid_scope"}, "invalid_scope", "TikTok refused the requested scopes"),
        (
            {"error": "server_error", "error_description": "é" * 50},
            "server_error",
            "TikTok's authorization page failed",
        ),
    ],
)
def test_tiktoks_error_is_never_relayed_as_it_came(
    start_oidc: Callable[..., OIDCProxy], tiktok_said: dict[str, str], error: str, description: str
) -> None:
    proxy = start_oidc()
    state, _ = pending_sign_in(proxy)
    back = query_of(callback(proxy, proxy.http, **tiktok_said, state=state))
    assert back == {"error": error, "error_description": description, "state": "rp-state-1"}
    # RFC 6749 §4.1.2.1: error_description is %x20-21 / %x23-5B / %x5D-7E.
    assert re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,200}", back["error_description"])


# ------------------------------------------------------------------------------------- PKCE's verifier


@pytest.mark.parametrize(
    "verifier",
    ["x", "a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + "=", "a" * 42 + " ", "a" * 42 + "é"],
)
def test_a_code_verifier_of_the_wrong_shape_is_refused_before_tiktok(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, verifier: str
) -> None:
    """RFC 7636 §4.1: 43 to 128 unreserved characters; here the challenge is the verifier's own, so only the
    shape is wrong."""
    proxy = start_oidc()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    answer = redeem(proxy, sign_in(proxy, code_challenge=challenge)["code"], code_verifier=verifier)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    assert "43 to 128 characters" in answer.json()["error_description"]
    assert token_requests(tiktok) == 0


@pytest.mark.parametrize("verifier", ["a" * 43, "Az09-._~" * 16])
def test_code_verifiers_of_43_and_128_characters_pass(start_oidc: Callable[..., OIDCProxy], verifier: str) -> None:
    proxy = start_oidc()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert challenge != CHALLENGE
    answer = redeem(proxy, sign_in(proxy, code_challenge=challenge)["code"], code_verifier=verifier)
    assert answer.status_code == 200, answer.text


# --------------------------------------------------------------------------------- OIDC_REDIRECT_URIS


@pytest.mark.parametrize(
    "uri",
    ["http://app.example/callback", "http://10.0.0.5/cb", "http://127.0.0.1.nip.io/cb", "http://localhost.example/cb"],
)
def test_a_plain_http_redirect_uri_off_loopback_stops_startup(key_files: dict[str, str], uri: str) -> None:
    env = oidc_env("http://127.0.0.1:1", key_files["rsa"], PUBLIC_URL="https://idp.example.com")
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, "OIDC_REDIRECT_URIS": f"https://app.example/cb,{uri}"})
    message = str(caught.value)
    assert caught.value.variable == "OIDC_REDIRECT_URIS" and "\n" not in message
    assert message == (
        f"OIDC_REDIRECT_URIS must use https (http only on a loopback host: 127.0.0.1, [::1], localhost), got {uri!r}"
    )


def test_loopback_redirect_uris_may_be_plain_http(key_files: dict[str, str]) -> None:
    """RFC 8252 §7.3: native apps' loopback redirects."""
    uris = {"http://127.0.0.1:8080/cb", "http://[::1]:8080/cb", "http://localhost/cb", "https://app.example/cb"}
    env = oidc_env("http://127.0.0.1:1", key_files["rsa"], PUBLIC_URL="https://idp.example.com")
    assert load_settings({**env, "OIDC_REDIRECT_URIS": ",".join(uris)}).oidc_redirect_uris == uris


# ------------------------------------------------------------------------------------ the refusal page


def test_refusal_pages_forbid_framing(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    pages = [
        proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(client_id="unknown-key")),
        proxy.http.get(proxy.url + "/oidc/callback", params={"state": "not-a-sealed-state"}),
    ]
    for page in pages:
        refusal_page(page)
        policy = [directive.strip() for directive in page.headers["content-security-policy"].split(";")]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
    assert urlsplit(proxy.url).scheme == "http"

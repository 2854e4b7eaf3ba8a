"""The OpenID Connect facade (tiktok_proxy/oidc/): discovery, the sign-in steps, and every local refusal.

A real proxy under uvicorn, configured from environment variables as in production, and the TikTok stand-in,
over loopback. The flow is driven step by step here, so that each refusal can be aimed at one step; the real
relying parties (openid-client in tests/js/, Authlib) run the whole flow in test_oidc_relying_parties.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import string
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tiktok_proxy.config import ConfigError, load_settings
from tiktok_proxy.oidc.sealing import Sealer

from conftest import (
    OTHER_CLIENT_KEY,
    OTHER_CLIENT_SECRET,
    PROXY_TIMEOUT,
    RP_REDIRECT,
    OIDCProxy,
    ServerThread,
    free_port,
    oidc_env,
    timer,
)
from stand_ins.tiktok import (
    CLIENT_KEY,
    CLIENT_SECRET,
    TOKEN_PATH,
    USER,
    USER_INFO_PATH,
    TikTokStandIn,
    drip,
    envelope,
    reply,
)

REPO = Path(__file__).resolve().parent.parent
VERIFIER = "a-code-verifier-of-forty-three-characters-at-least-0123456789"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


def authorize_params(**changes: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": CLIENT_KEY,
        "redirect_uri": RP_REDIRECT,
        "scope": "openid profile",
        "state": "rp-state-1",
        "nonce": "rp-nonce-1",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        **changes,
    }
    return {name: value for name, value in params.items() if value != ""}


def query_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    return dict(parse_qsl(urlsplit(response.headers["location"]).query))


def sign_in(proxy: OIDCProxy, decision: str = "authorize", **changes: str) -> dict[str, str]:
    """Authorize → TikTok's consent page → its button → the proxy's callback; the query the RP gets back."""
    return come_back(proxy, consent(proxy, decision, **changes))


def consent(proxy: OIDCProxy, decision: str = "authorize", **changes: str) -> str:
    """The first steps: the URL of the proxy's callback that TikTok redirects the browser to."""
    http = proxy.http
    to_tiktok = http.get(proxy.url + "/oidc/authorize", params=authorize_params(**changes))
    assert to_tiktok.status_code == 302, to_tiktok.text
    page = http.get(to_tiktok.headers["location"])
    assert page.status_code == 200, page.text
    consent = re.search(r'name="consent" value="([^"]+)"', page.text)
    assert consent, page.text
    tiktok_url = to_tiktok.headers["location"].split("?")[0]
    back = http.post(tiktok_url, data={"consent": consent.group(1), "decision": decision})
    assert back.headers["location"].startswith(proxy.url + "/oidc/callback?")
    return back.headers["location"]


def come_back(proxy: OIDCProxy, callback: str) -> dict[str, str]:
    to_rp = proxy.http.get(callback)
    assert to_rp.headers["location"].startswith(RP_REDIRECT + "?"), to_rp.text
    return query_of(to_rp)


def redeem(proxy: OIDCProxy, code: str, **changes: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": RP_REDIRECT,
        "client_id": CLIENT_KEY,
        "client_secret": CLIENT_SECRET,
        "code_verifier": VERIFIER,
        **changes,
    }
    return proxy.http.post(proxy.url + "/oidc/token", data={k: v for k, v in form.items() if v != ""})


def claims_of(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def token_requests(tiktok: TikTokStandIn) -> int:
    return sum(seen.path == TOKEN_PATH for seen in tiktok.seen)


def refresh(proxy: OIDCProxy, refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return proxy.http.post(proxy.url + "/oidc/token", data=form, auth=(CLIENT_KEY, CLIENT_SECRET))


METRICS_TOKEN = "metrics-token-0123456789"


def refresh_id_tokens(proxy: OIDCProxy) -> dict[str, float]:
    """tiktok_proxy_oidc_refresh_id_tokens_total, by id_token (issued, omitted)."""
    text = proxy.http.get(proxy.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    found = re.findall(r'^tiktok_proxy_oidc_refresh_id_tokens_total\{id_token="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(count) for outcome, count in found}


# --------------------------------------------------------------------------------------------- discovery


def test_discovery_names_the_issuer_exactly_and_the_endpoints(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(key="ec")
    answer = proxy.http.get(proxy.url + "/.well-known/openid-configuration")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document["issuer"] == proxy.url and not proxy.url.endswith("/")
    assert document["authorization_endpoint"] == proxy.url + "/oidc/authorize"
    assert document["token_endpoint"] == proxy.url + "/oidc/token"
    assert document["userinfo_endpoint"] == proxy.url + "/oidc/userinfo"
    assert document["jwks_uri"] == proxy.url + "/oidc/jwks"
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["token_endpoint_auth_methods_supported"] == ["client_secret_post", "client_secret_basic"]
    assert "email" not in document["scopes_supported"]  # TikTok has no email
    assert "email" not in document["claims_supported"] and "auth_time" in document["claims_supported"]
    keys = proxy.http.get(document["jwks_uri"])
    assert keys.headers["content-type"] == "application/json"
    (jwk,) = keys.json()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in jwk  # the public half only


def test_a_trailing_slash_on_public_url_is_not_part_of_the_issuer(key_files: dict[str, str]) -> None:
    env = oidc_env("http://127.0.0.1:1", key_files["rsa"], PUBLIC_URL="https://idp.example.com/tiktok/")
    assert load_settings(env).public_url == "https://idp.example.com/tiktok"
    env["PUBLIC_URL"] = "http://localhost:8080/"  # http only for loopback hosts
    assert load_settings(env).public_url == "http://localhost:8080"


def test_the_kid_is_the_rfc_7638_thumbprint(start_oidc: Callable[..., OIDCProxy], key_files: dict[str, str]) -> None:
    from joserfc.jwk import ECKey, RSAKey  # an independent implementation

    for name, kind in (("rsa", RSAKey), ("ec", ECKey)):
        proxy = start_oidc(key=name)
        (jwk,) = proxy.http.get(proxy.url + "/oidc/jwks").json()["keys"]
        assert jwk["kid"] == kind.import_key(Path(key_files[name]).read_bytes()).thumbprint()


def test_without_a_signing_key_the_facade_is_a_plain_404(client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/oidc/jwks"),
        ("GET", "/oidc/authorize"),
        ("GET", "/oidc/callback"),
        ("POST", "/oidc/token"),
        ("GET", "/oidc/userinfo"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 404 and answer.json()["error"] == "invalid_request", path


# ------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"ALLOWED_CLIENT_KEYS": ""}, "ALLOWED_CLIENT_KEYS"),
        ({"OIDC_REDIRECT_URIS": ""}, "OIDC_REDIRECT_URIS"),
        ({"OIDC_REDIRECT_URIS": "/relative"}, "OIDC_REDIRECT_URIS"),
        ({"PUBLIC_URL": ""}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "http://idp.example.com"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://idp.example.com/?x=1"}, "PUBLIC_URL"),
        ({"OIDC_SUBJECT": "email"}, "OIDC_SUBJECT"),
        ({"OIDC_SIGNING_KEY_FILE": "/nonexistent/key.pem"}, "OIDC_SIGNING_KEY_FILE"),
        ({"OIDC_PREVIOUS_KEY_FILES": "/nonexistent/old.pem"}, "OIDC_PREVIOUS_KEY_FILES"),
        ({"OIDC_EMAIL_DOMAIN": "tiktok.com"}, "OIDC_EMAIL_DOMAIN"),  # someone else's real domain
        ({"OIDC_EMAIL_DOMAIN": "TikTok.com."}, "OIDC_EMAIL_DOMAIN"),
        ({"OIDC_EMAIL_DOMAIN": "users.tiktok.com"}, "OIDC_EMAIL_DOMAIN"),
        ({"OIDC_EMAIL_DOMAIN": "invalid"}, "OIDC_EMAIL_DOMAIN"),  # one label: not an address's domain
        ({"OIDC_EMAIL_DOMAIN": "users example.com"}, "OIDC_EMAIL_DOMAIN"),
        ({"OIDC_EMAIL_DOMAIN": "@example.com"}, "OIDC_EMAIL_DOMAIN"),
        ({"OIDC_EMAIL_DOMAIN": "-users.example.com"}, "OIDC_EMAIL_DOMAIN"),
        ({"OIDC_EMAIL_DOMAIN": "users..example.com"}, "OIDC_EMAIL_DOMAIN"),
        ({"OIDC_EMAIL_DOMAIN": "b\u00fccher.example"}, "OIDC_EMAIL_DOMAIN"),  # IDNs as xn-- labels
        ({"OIDC_NEXT_KEY_FILES": "/nonexistent/new.pem"}, "OIDC_NEXT_KEY_FILES"),
    ],
)
def test_a_bad_setting_names_its_variable(key_files: dict[str, str], changes: dict[str, str], variable: str) -> None:
    env = oidc_env("http://127.0.0.1:1", key_files["rsa"], **{"PUBLIC_URL": "https://idp.example.com", **changes})
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.variable == variable and variable in str(caught.value)


def test_the_email_domain_is_read_as_a_dns_name(key_files: dict[str, str]) -> None:
    env = oidc_env("http://127.0.0.1:1", key_files["rsa"], PUBLIC_URL="https://idp.example.com")
    assert load_settings(env).oidc_email_domain == ""  # off by default
    for value, domain in [
        ("tiktok-users.invalid", "tiktok-users.invalid"),
        ("Users.Example.COM.", "users.example.com"),
        ("nottiktok.com", "nottiktok.com"),  # only TikTok's own domain is refused
        ("tiktok.com.example.net", "tiktok.com.example.net"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ]:
        assert load_settings({**env, "OIDC_EMAIL_DOMAIN": value}).oidc_email_domain == domain, value
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, "OIDC_EMAIL_DOMAIN": "tiktok.com"})
    assert "a domain you own, or one under .invalid" in str(caught.value) and "\n" not in str(caught.value)


def test_a_key_that_cannot_sign_is_refused_without_showing_it(tmp_path: Path, key_files: dict[str, str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    plain = serialization.NoEncryption()
    pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
    weak = {
        "rsa-1024": rsa.generate_private_key(65537, 1024).private_bytes(pem, pkcs8, plain),
        "ec-p384": ec.generate_private_key(ec.SECP384R1()).private_bytes(pem, pkcs8, plain),
        "encrypted": ec.generate_private_key(ec.SECP256R1()).private_bytes(
            pem, pkcs8, serialization.BestAvailableEncryption(b"passphrase")
        ),
        "public-only": Path(key_files["rsa"]).read_bytes().replace(b"PRIVATE", b"PUBLIC"),
        "garbage": b"-----BEGIN PRIVATE KEY-----\nMIIBsecretmaterial\n-----END PRIVATE KEY-----\n",
    }
    for name, content in weak.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(content)
        env = oidc_env("http://127.0.0.1:1", str(path), PUBLIC_URL="https://idp.example.com")
        with pytest.raises(ConfigError) as caught:
            load_settings(env)
        message = str(caught.value)
        assert caught.value.variable == "OIDC_SIGNING_KEY_FILE" and "\n" not in message, name
        assert "secretmaterial" not in message and "BEGIN" not in message, name


def test_oidc_keygen_prints_a_key_the_proxy_accepts(tmp_path: Path) -> None:
    for kind, alg in (("rsa", "RS256"), ("ec", "ES256")):
        result = subprocess.run(
            [sys.executable, "proxy.py", "oidc-keygen", "--type", kind], cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.startswith("-----BEGIN PRIVATE KEY-----"), result.stderr
        (tmp_path / f"{kind}.pem").write_text(result.stdout)
        env = oidc_env("http://127.0.0.1:1", str(tmp_path / f"{kind}.pem"), PUBLIC_URL="https://idp.example.com")
        from tiktok_proxy.oidc.jose import Signer

        key = load_settings(env).oidc_key
        assert key is not None and Signer.of(key).alg == alg


def test_one_key_in_two_roles_is_refused_whatever_the_file_holding_it(
    tmp_path: Path, key_files: dict[str, str]
) -> None:
    from cryptography.hazmat.primitives import serialization

    # The same RSA key in another file and another encoding (PKCS #1, not PKCS #8): compared as keys, not paths.
    key = serialization.load_pem_private_key(Path(key_files["rsa"]).read_bytes(), password=None)
    copy = tmp_path / "copy-of-rsa.pem"
    encoding, pkcs1 = serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL
    copy.write_bytes(key.private_bytes(encoding, pkcs1, serialization.NoEncryption()))
    for changes, variable, first in [
        ({"OIDC_NEXT_KEY_FILES": str(copy)}, "OIDC_NEXT_KEY_FILES", "OIDC_SIGNING_KEY_FILE"),
        ({"OIDC_PREVIOUS_KEY_FILES": str(copy)}, "OIDC_PREVIOUS_KEY_FILES", "OIDC_SIGNING_KEY_FILE"),
        ({"OIDC_SIGNING_KEY_FILE": key_files["ec"], "OIDC_NEXT_KEY_FILES": key_files["rsa"],
          "OIDC_PREVIOUS_KEY_FILES": f"{key_files['ec-next']},{copy}"}, "OIDC_PREVIOUS_KEY_FILES", "OIDC_NEXT_KEY_FILES"),
    ]:  # fmt: skip
        env = oidc_env("http://127.0.0.1:1", key_files["rsa"], PUBLIC_URL="https://idp.example.com", **changes)
        with pytest.raises(ConfigError) as caught:
            load_settings(env)
        message = str(caught.value)
        assert caught.value.variable == variable and "\n" not in message, message
        assert message.startswith(f"{variable}: {str(copy)!r} holds the same key as {first} ("), message
    env = oidc_env("http://127.0.0.1:1", key_files["rsa"], PUBLIC_URL="https://idp.example.com")
    settings = load_settings(
        {**env, "OIDC_NEXT_KEY_FILES": key_files["ec-next"], "OIDC_PREVIOUS_KEY_FILES": key_files["ec"]}
    )
    assert len(settings.oidc_next_keys) == len(settings.oidc_previous_keys) == 1  # three keys, three roles: fine


def test_the_startup_line_names_the_kids_of_each_role(
    start_oidc: Callable[..., OIDCProxy], key_files: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from joserfc.jwk import ECKey, RSAKey  # an independent implementation

    kid = {
        name: (RSAKey if name.startswith("rsa") else ECKey).import_key(Path(path).read_bytes()).thumbprint()
        for name, path in key_files.items()
    }
    with caplog.at_level(logging.INFO):
        proxy = start_oidc(key="rsa", next=("ec-next",), previous=("ec", "rsa-next"))
        (start,) = [line for line in caplog.text.splitlines() if "event=start " in line]
        assert (
            f" oidc={proxy.url} signing_kid={kid['rsa']} next_kids={kid['ec-next']} "
            f"previous_kids={kid['ec']},{kid['rsa-next']} oidc_gate="
        ) in start, start
        caplog.clear()
        start_oidc(key="ec")
        assert f" signing_kid={kid['ec']} next_kids=- previous_kids=-" in caplog.text, caplog.text


# ------------------------------------------------------------------------------------------------ authorize


def test_authorize_sends_tiktok_its_own_parameters(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    answer = proxy.http.get(
        proxy.url + "/oidc/authorize", params=authorize_params(scope="openid profile email offline_access video.list")
    )
    sent = query_of(answer)
    assert answer.headers["location"].startswith(proxy.settings.authorize_url + "?")
    assert sent.keys() == {"client_key", "scope", "response_type", "redirect_uri", "state"}
    assert sent["client_key"] == CLIENT_KEY
    assert sent["scope"] == "user.info.basic,user.info.profile,video.list"  # commas (Q2); email, offline: nothing
    assert sent["redirect_uri"] == proxy.url + "/oidc/callback"
    # The RP's state, nonce and challenge are sealed, not readable.
    for value in ("rp-state-1", "rp-nonce-1", CHALLENGE, RP_REDIRECT):
        assert value not in answer.headers["location"]


@pytest.mark.parametrize(
    "changes",
    [
        {"client_id": "unknown-client-key"},
        {"client_id": ""},
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": RP_REDIRECT + "/"},  # exact match only
        {"redirect_uri": ""},
    ],
)
def test_an_unknown_client_or_redirect_uri_gets_a_page_never_a_redirect(
    start_oidc: Callable[..., OIDCProxy], changes: dict[str, str]
) -> None:
    proxy = start_oidc()
    answer = proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(**changes))
    assert answer.status_code == 400 and "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    assert "Sign-in failed" in answer.text


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": ""}, "invalid_request"),  # missing (RFC 6749 §4.1.2.1)
        ({"request_uri": "https://app.example/request.jwt"}, "request_uri_not_supported"),
        ({"request_uri": "urn:x", "response_type": ""}, "request_uri_not_supported"),  # it may hold the rest
        ({"prompt": "none login"}, "invalid_request"),
        ({"max_age": "soon"}, "invalid_request"),
        ({"max_age": "-1"}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),  # a challenge without a method is plain
        ({"code_challenge": ""}, "invalid_request"),
        ({"response_mode": "form_post"}, "invalid_request"),
        ({"request": "eyJ..."}, "request_not_supported"),
    ],
)
def test_other_authorize_errors_go_back_to_the_client_with_its_state(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, changes: dict[str, str], error: str
) -> None:
    proxy = start_oidc()
    answer = proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(**changes))
    assert answer.headers["location"].startswith(RP_REDIRECT + "?")
    back = query_of(answer)
    assert back["error"] == error and back["state"] == "rp-state-1" and back["error_description"]
    assert tiktok.seen == []


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "none"},
        {"prompt": "none", "id_token_hint": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},  # a hint changes nothing
        {"prompt": "none", "max_age": "0"},
    ],
)
def test_prompt_none_answers_login_required_without_sending_the_browser_to_tiktok(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, changes: dict[str, str]
) -> None:
    """OIDC Core §3.1.2.1: no page at all. The facade cannot know a TikTok session without TikTok's page."""
    proxy = start_oidc()
    answer = proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(**changes))
    assert answer.headers["location"].startswith(RP_REDIRECT + "?")  # straight back, never to TikTok
    back = query_of(answer)
    assert back["error"] == "login_required" and back["state"] == "rp-state-1"
    assert "prompt=none" in back["error_description"]
    assert tiktok.seen == []


@pytest.mark.parametrize(
    ("changes", "always_show_page"),
    [
        ({}, False),
        ({"prompt": "login"}, True),
        ({"prompt": "consent"}, True),
        ({"prompt": "select_account login"}, True),
        ({"max_age": "0"}, True),  # the facade cannot know when the user last signed in to TikTok
        ({"max_age": "3600"}, True),
        ({"prompt": "create"}, False),  # a value the facade does not know changes nothing
        ({"id_token_hint": "not.even.a-jwt", "login_hint": "ada"}, False),  # ignored, never a page
    ],
)
def test_prompt_login_consent_and_max_age_make_tiktok_show_its_page(
    start_oidc: Callable[..., OIDCProxy], changes: dict[str, str], always_show_page: bool
) -> None:
    proxy = start_oidc()
    answer = proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(**changes))
    assert answer.headers["location"].startswith(proxy.settings.authorize_url + "?")
    sent = query_of(answer)
    assert ("disable_auto_auth" in sent) is always_show_page
    if always_show_page:
        assert sent["disable_auto_auth"] == "1"  # TikTok's page even for a session that consented before
    assert not {"prompt", "max_age", "id_token_hint", "login_hint"} & sent.keys()  # the relying party's, not TikTok's


def test_scopes_that_are_neither_openid_nor_tiktok_are_ignored(start_oidc: Callable[..., OIDCProxy]) -> None:
    """OIDC Core §3.1.2.1: unknown scopes SHOULD be ignored; TikTok would refuse the whole sign-in (invalid_scope)."""
    proxy = start_oidc()
    scope = "openid profile groups roles User.Info.Stats user.info.stats video.list"
    sent = query_of(proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(scope=scope)))
    assert sent["scope"] == "user.info.basic,user.info.profile,user.info.stats,video.list"
    # Through TikTok's page (which refuses a scope it does not know), and what the answer says was granted.
    tokens = redeem(proxy, sign_in(proxy, scope="openid profile groups")["code"]).json()
    assert tokens["scope"] == "openid profile"


# ------------------------------------------------------------------------------------------------- callback


def test_cancel_on_tiktok_page_comes_back_as_access_denied(start_oidc: Callable[..., OIDCProxy]) -> None:
    back = sign_in(start_oidc(), decision="cancel")
    assert back == {
        "error": "access_denied",
        "error_description": "the user cancelled on TikTok's page, or TikTok refused the sign-in",
        "state": "rp-state-1",
    }


def test_a_forged_or_expired_state_gets_a_page(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    sealed = {"c": CLIENT_KEY, "r": RP_REDIRECT, "s": "x", "n": None, "pc": None, "sc": ["user.info.basic"]}
    states = {
        "missing": "",
        "garbage": "not-a-sealed-state",
        "expired": proxy.sealer("state").seal(sealed, lifetime=-1),
        "a code, not a state": proxy.sealer("code").seal(sealed, lifetime=60),
        "another key": Sealer("state", [b"another key"]).seal(sealed, lifetime=60),
    }
    for name, state in states.items():
        answer = proxy.http.get(proxy.url + "/oidc/callback", params={"code": "code*abc", "state": state})
        assert answer.status_code == 400 and "location" not in answer.headers, name
        assert answer.headers["content-type"].startswith("text/html"), name
        expected = "has expired" if name == "expired" else "is missing" if name == "missing" else "is not valid"
        assert f"the sign-in state {expected}" in answer.text, name


BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def test_a_tampered_state_gets_a_page(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    state = query_of(proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params()))["state"]
    for position in (0, len(state) // 2, len(state) - 1):
        # The character's top bit: the last character's low bits may be padding, which decoding ignores.
        sextet = BASE64URL.index(state[position]) ^ 0b100000
        flipped = state[:position] + BASE64URL[sextet] + state[position + 1 :]
        answer = proxy.http.get(proxy.url + "/oidc/callback", params={"code": "code*abc", "state": flipped})
        assert answer.status_code == 400 and "location" not in answer.headers


# ---------------------------------------------------------------------------------------------------- token


def test_the_code_flow_gives_tiktok_tokens_and_an_id_token(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    proxy = start_oidc()
    back = sign_in(proxy)
    assert back.keys() == {"code", "state"} and back["state"] == "rp-state-1"
    answer = redeem(proxy, back["code"])
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer" and tokens["access_token"].startswith("act.")
    assert tokens["scope"] == "openid profile"  # TikTok's user.info.basic,user.info.profile, in OIDC's words
    assert tokens["refresh_token"].startswith("rft.")
    claims = claims_of(tokens["id_token"])
    assert claims["iss"] == proxy.url and claims["aud"] == CLIENT_KEY and claims["nonce"] == "rp-nonce-1"
    assert claims["sub"] == USER["open_id"]
    assert claims["exp"] - claims["iat"] == 3600
    assert "email" not in claims  # TikTok has none, and OIDC_EMAIL_DOMAIN is off
    assert claims["name"] == USER["display_name"] and claims["picture"] == USER["avatar_url"]
    assert claims["preferred_username"] == USER["username"] and claims["profile"] == USER["profile_deep_link"]
    # TikTok got the callback URL as redirect_uri, and the user info call had the token in a header only.
    (exchange,) = [seen for seen in tiktok.seen if seen.path == TOKEN_PATH]
    assert exchange.form["redirect_uri"] == [proxy.url + "/oidc/callback"]
    assert "code_verifier" not in exchange.form  # PKCE is the facade's; TikTok's web flow gets none


def test_the_id_token_carries_auth_time_when_tiktok_sent_the_user_back(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    """OIDC Core §2, §3.1.2.1: with max_age, auth_time is a MUST (openid-client refuses the ID token without it)."""
    proxy = start_oidc()
    callback = consent(proxy, max_age="600")
    before = int(time.time())
    code = come_back(proxy, callback)["code"]
    after = int(time.time())
    time.sleep(1.1)  # auth_time is the callback's time, not the token request's
    first = redeem(proxy, code).json()
    claims = claims_of(first["id_token"])
    assert before <= claims["auth_time"] <= after < claims["iat"]
    plain = claims_of(redeem(proxy, sign_in(proxy)["code"]).json()["id_token"])
    assert isinstance(plain["auth_time"], int)  # every ID token from the code grant, max_age or not
    # A refresh cannot know when the user signed in (the refresh token is TikTok's), and says nothing rather than
    # the refresh's time (OIDC Core §12.2).
    refreshed = refresh(proxy, first["refresh_token"]).json()
    assert "auth_time" not in claims_of(refreshed["id_token"])


def test_basic_scope_only_gives_no_profile_claims(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    tokens = redeem(proxy, sign_in(proxy, scope="openid")["code"]).json()
    claims = claims_of(tokens["id_token"])
    assert "preferred_username" not in claims and "profile" not in claims
    assert claims["name"] == USER["display_name"]


def test_the_made_up_email_with_oidc_email_domain(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(OIDC_EMAIL_DOMAIN="TikTok-Users.invalid")
    document = proxy.http.get(proxy.url + "/.well-known/openid-configuration").json()
    assert "email" in document["scopes_supported"]
    assert {"email", "email_verified"} <= set(document["claims_supported"])
    address = f"{USER['open_id']}@tiktok-users.invalid"
    tokens = redeem(proxy, sign_in(proxy, scope="openid email profile")["code"]).json()
    claims = claims_of(tokens["id_token"])
    assert claims["email"] == address and claims["email_verified"] is False
    assert tokens["scope"] == "openid profile email"
    # Only when the relying party asks for it, in the ID token of the code grant.
    unasked = redeem(proxy, sign_in(proxy)["code"]).json()
    assert "email" not in claims_of(unasked["id_token"]) and unasked["scope"] == "openid profile"
    # Userinfo and a refresh get only TikTok's access or refresh token, which carries no OpenID scope: with
    # OIDC_EMAIL_DOMAIN set, they give the address (nothing more than sub, which they give anyway).
    headers = {"Authorization": f"Bearer {unasked['access_token']}"}
    info = proxy.http.get(proxy.url + "/oidc/userinfo", headers=headers).json()
    assert info["email"] == address and info["email_verified"] is False and info["sub"] == USER["open_id"]
    refreshed = refresh(proxy, unasked["refresh_token"]).json()
    assert claims_of(refreshed["id_token"])["email"] == address and refreshed["scope"] == "openid profile email"


def test_no_email_without_oidc_email_domain(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    tokens = redeem(proxy, sign_in(proxy, scope="openid profile email")["code"]).json()
    assert "email" not in claims_of(tokens["id_token"]) and tokens["scope"] == "openid profile"
    info = proxy.http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert "email" not in info.json()
    assert "email" not in claims_of(refresh(proxy, tokens["refresh_token"]).json()["id_token"])


def test_union_id_as_the_subject(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(OIDC_SUBJECT="union_id")
    tokens = redeem(proxy, sign_in(proxy)["code"]).json()
    assert claims_of(tokens["id_token"])["sub"] == USER["union_id"]
    info = proxy.http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.json()["sub"] == USER["union_id"]


def test_refresh_gives_a_new_id_token_for_the_same_subject(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    first = redeem(proxy, sign_in(proxy)["code"]).json()
    answer = proxy.http.post(
        proxy.url + "/oidc/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=(CLIENT_KEY, CLIENT_SECRET),  # client_secret_basic
    )
    assert answer.status_code == 200, answer.text
    claims = claims_of(answer.json()["id_token"])
    assert claims["sub"] == claims_of(first["id_token"])["sub"] and "nonce" not in claims


@pytest.mark.parametrize(
    "failure",
    ["refused", "rate_limited", "tiktok_5xx", "not_json", "unreachable"],
)
def test_a_refresh_keeps_tiktoks_new_tokens_when_the_user_info_fails(
    start_oidc: Callable[..., OIDCProxy],
    tiktok: TikTokStandIn,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    """TikTok rotates refresh tokens: once it has answered, the one the relying party sent is dead. OIDC Core §12.2
    makes the ID token optional on a refresh, so a failing user info leaves it out and nothing else."""
    caplog.set_level(logging.INFO, logger="tiktok_proxy")
    proxy = start_oidc(METRICS_TOKEN=METRICS_TOKEN)
    first = redeem(proxy, sign_in(proxy)["code"]).json()
    refresher = proxy
    if failure == "unreachable":
        refresher = start_oidc(TIKTOK_USERINFO_URL=f"http://127.0.0.1:{free_port()}/v2/user/info/")
    else:
        tiktok.user_info_fault = {
            "refused": lambda: envelope(401, "access_token_invalid", "The access token is invalid."),
            "rate_limited": reply(429, {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}),
            "tiktok_5xx": reply(503, "<h1>Service Unavailable</h1>", "text/html"),
            "not_json": reply(200, "not json at all", "text/plain"),
        }[failure]
    before = refresh_id_tokens(proxy)
    tiktok.seen.clear()
    answer = refresh(refresher, first["refresh_token"])
    assert answer.status_code == 200, answer.text
    refreshed = answer.json()
    assert "id_token" not in refreshed
    assert refreshed["access_token"] in tiktok.access_tokens and refreshed["refresh_token"] in tiktok.refresh_tokens
    assert refreshed["token_type"] == "Bearer" and refreshed["expires_in"] and refreshed["refresh_expires_in"]
    assert refreshed["scope"] == "openid profile"
    assert [seen.path for seen in tiktok.seen] == [TOKEN_PATH] + ([USER_INFO_PATH] if failure != "unreachable" else [])
    (line,) = [
        r.getMessage() for r in caplog.records if "event=oidc_token" in r.getMessage() and "refresh" in r.getMessage()
    ]
    assert "outcome=ok" in line and re.search(r" status=200 id_token=omitted:[a-z_]+$", line), line
    assert refreshed["refresh_token"] not in line and refreshed["access_token"] not in line
    if failure != "unreachable":  # the other proxy counts apart (one process, one registry: it would count too)
        assert refresh_id_tokens(proxy) == {"issued": before["issued"], "omitted": before["omitted"] + 1}
    # Nothing was lost: the new refresh token works, and with TikTok's user info back, the ID token is back.
    tiktok.user_info_fault = None
    again = refresh(proxy, refreshed["refresh_token"])
    assert again.status_code == 200 and claims_of(again.json()["id_token"])["sub"] == USER["open_id"]
    assert refresh_id_tokens(proxy)["issued"] == before["issued"] + 1
    assert last_proxy_line(caplog).endswith(" status=200 id_token=issued")


@pytest.mark.parametrize("grant", ["refresh_token", "authorization_code"])
def test_tiktok_timeout_bounds_every_tiktok_call_of_a_token_request(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture, grant: str
) -> None:
    """TIKTOK_TIMEOUT bounds the whole exchange with TikTok: after a slow token call, the user info gets only the
    rest of it. So the drain on SIGTERM covers the facade's requests, and a relying party that waits that long
    still gets a refresh's new tokens (without an ID token); a code grant without its ID token is a 504."""
    caplog.set_level(logging.INFO, logger="tiktok_proxy")
    proxy = start_oidc()  # TIKTOK_TIMEOUT is PROXY_TIMEOUT, 1.5 s
    first = redeem(proxy, sign_in(proxy)["code"]).json()
    code = sign_in(proxy)["code"]
    tiktok.token_delay = 1.0
    # About 1.2 s: within TIKTOK_TIMEOUT on its own, past it after the token call's second.
    tiktok.user_info_fault = drip(json.dumps(envelope_of_user()).encode()[:12], 0.1)
    with timer() as elapsed:
        answer = refresh(proxy, first["refresh_token"]) if grant == "refresh_token" else redeem(proxy, code)
    assert elapsed() < PROXY_TIMEOUT + 0.4
    if grant == "refresh_token":
        assert answer.status_code == 200, answer.text
        refreshed = answer.json()
        assert "id_token" not in refreshed and refreshed["refresh_token"] in tiktok.refresh_tokens
        assert last_proxy_line(caplog).endswith(" status=200 id_token=omitted:temporarily_unavailable")
    else:
        assert answer.status_code == 504, answer.text
        assert answer.json()["error_description"] == f"TikTok did not answer within {PROXY_TIMEOUT:g} seconds"


def last_proxy_line(caplog: pytest.LogCaptureFixture) -> str:
    """The proxy's last log line: other loggers (httpx's, at a lower log level) may have written since."""
    return [record.getMessage() for record in caplog.records if record.name == "tiktok_proxy"][-1]


def envelope_of_user() -> dict[str, Any]:
    return {"data": {"user": USER}, "error": {"code": "ok", "message": "", "log_id": ""}}


def test_the_code_grant_without_tiktoks_user_info_is_a_502(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    """The ID token is the point of an OpenID Connect code grant: without it, the grant fails, and says why."""
    proxy = start_oidc()
    code = sign_in(proxy)["code"]
    tiktok.user_info_fault = reply(429, {"error": {"code": "rate_limit_exceeded", "message": "slow down"}})
    answer = redeem(proxy, code)
    assert answer.status_code == 429 and answer.json()["error"] == "temporarily_unavailable"
    tiktok.user_info_fault = lambda: envelope(401, "access_token_invalid", "The access token is invalid.")
    answer = redeem(proxy, sign_in(proxy)["code"])
    assert answer.status_code == 502 and answer.json()["error"] == "server_error"
    assert "access_token_invalid" in answer.json()["error_description"] and "id_token" not in answer.json()


@pytest.mark.parametrize(
    ("changes", "description"),
    [
        ({"redirect_uri": "https://app.example/other-callback"}, "redirect_uri differs"),
        ({"redirect_uri": ""}, "redirect_uri differs"),
        ({"client_id": OTHER_CLIENT_KEY, "client_secret": OTHER_CLIENT_SECRET}, "issued to another client"),
        ({"code_verifier": VERIFIER[:-1] + "X"}, "code_verifier does not match"),
        ({"code_verifier": ""}, "code_verifier does not match"),
    ],
)
def test_a_mismatch_is_refused_without_calling_tiktok(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, changes: dict[str, str], description: str
) -> None:
    proxy = start_oidc()
    answer = redeem(proxy, sign_in(proxy)["code"], **changes)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    assert description in answer.json()["error_description"]
    assert token_requests(tiktok) == 0


def test_a_verifier_without_a_challenge_is_refused(start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn) -> None:
    proxy = start_oidc()
    code = sign_in(proxy, code_challenge="", code_challenge_method="")["code"]
    answer = redeem(proxy, code)  # sends a code_verifier: a downgrade attempt
    assert answer.json()["error"] == "invalid_grant" and token_requests(tiktok) == 0
    assert redeem(proxy, code, code_verifier="").status_code == 200  # without PKCE on both sides it works


def test_tampered_expired_and_cross_purpose_codes_are_refused_locally(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    proxy = start_oidc()
    code = sign_in(proxy)["code"]
    sealed = {"c": CLIENT_KEY, "r": RP_REDIRECT, "n": None, "pc": None, "t": "code*x", "g": ["user.info.basic"]}
    refused = {
        "tampered": code[:20] + ("A" if code[20] != "A" else "B") + code[21:],
        "truncated": code[:-4],
        "expired": proxy.sealer("code").seal(sealed, lifetime=-1),
        "a state, not a code": proxy.sealer("state").seal(sealed, lifetime=60),
    }
    for name, forged in refused.items():
        answer = redeem(proxy, forged, code_verifier="")
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", name
        expected = "has expired" if name == "expired" else "is not valid"
        assert answer.json()["error_description"] == f"the authorization code {expected}", name
    assert token_requests(tiktok) == 0


def test_a_replayed_code_fails_at_tiktok(start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn) -> None:
    proxy = start_oidc()
    code = sign_in(proxy)["code"]
    assert redeem(proxy, code).status_code == 200
    again = redeem(proxy, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert token_requests(tiktok) == 2  # TikTok's codes are single-use: it refused the second


def test_a_wrong_client_secret_is_tiktoks_invalid_client(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    proxy = start_oidc()
    answer = redeem(proxy, sign_in(proxy)["code"], client_secret="wrong-secret")
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "invalid_request"),  # no code
    ],
)
def test_bad_token_requests_get_oauth_errors(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, form: dict[str, str], error: str
) -> None:
    proxy = start_oidc()
    answer = proxy.http.post(
        proxy.url + "/oidc/token", data={**form, "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET}
    )
    assert answer.status_code == 400 and answer.json()["error"] == error
    assert token_requests(tiktok) == 0


def test_an_unknown_client_is_refused_at_the_token_endpoint(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn
) -> None:
    proxy = start_oidc()
    answer = redeem(proxy, sign_in(proxy)["code"], client_id="unknown-key")
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    assert token_requests(tiktok) == 0


def test_a_key_rotation_keeps_logins_in_flight(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(key="rsa")
    (old,) = proxy.http.get(proxy.url + "/oidc/jwks").json()["keys"]
    in_flight = [consent(proxy), consent(proxy)]  # at TikTok when the key changes
    proxy.rotate("ec-next", previous=("rsa",))
    new, previous = proxy.http.get(proxy.url + "/oidc/jwks").json()["keys"]
    assert previous == old and new["alg"] == "ES256"  # the new key first; the old one still published
    code = come_back(proxy, in_flight[0])["code"]
    id_token = redeem(proxy, code).json()["id_token"]
    header = json.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))
    assert (header["alg"], header["kid"]) == ("ES256", new["kid"])  # the new key signs
    # Once the old key is dropped, what it sealed no longer opens.
    proxy.rotate("ec-next")
    answer = proxy.http.get(in_flight[1])
    assert answer.status_code == 400 and "the sign-in state is not valid" in answer.text


# What each instance runs through a rotation's three rollouts (docs/oidc.md, Key rotation): before, 1. publish the
# new key as next, 2. promote it, 3. drop the old one. Each rollout leaves, for a while, a fleet of two of these.
ROTATION = [
    {"key": "rsa"},
    {"key": "rsa", "next": ("ec-next",)},
    {"key": "ec-next", "previous": ("rsa",)},
    {"key": "ec-next"},
]


def jwks_kids(proxy: OIDCProxy) -> list[str]:
    return [key["kid"] for key in proxy.http.get(proxy.url + "/oidc/jwks").json()["keys"]]


def kid_of(jwt: str) -> str:
    kid: str = json.loads(base64.urlsafe_b64decode(jwt.split(".")[0] + "=="))["kid"]
    return kid


def test_a_next_key_is_published_and_opens_but_never_signs_or_seals(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(**ROTATION[1])
    current, upcoming = jwks_kids(proxy)
    callback = consent(proxy)
    code = sign_in(proxy)["code"]
    proxy.rotate(**ROTATION[0])  # an instance that has never heard of the next key
    assert jwks_kids(proxy) == [current]
    assert come_back(proxy, callback)["code"]  # opens the state: it was sealed with the current key
    answer = redeem(proxy, code)  # ... and the code
    assert answer.status_code == 200, answer.text
    proxy.rotate(**ROTATION[1])
    assert kid_of(redeem(proxy, sign_in(proxy)["code"]).json()["id_token"]) == current  # the next key never signs
    proxy.rotate(**ROTATION[2])  # the next key promoted: what it seals, an instance still at step 1 opens
    callback, code = consent(proxy), sign_in(proxy)["code"]
    proxy.rotate(**ROTATION[1])
    assert come_back(proxy, callback)["code"] and redeem(proxy, code).status_code == 200


@pytest.mark.parametrize("rollout", [1, 2, 3], ids=["1 publish", "2 promote", "3 drop"])
def test_in_each_rollout_old_and_new_instances_serve_each_others_steps(
    start_oidc: Callable[..., OIDCProxy], rollout: int
) -> None:
    old, new = ROTATION[rollout - 1], ROTATION[rollout]
    proxy = start_oidc(**old)
    for first, second in ((old, new), (new, old)):
        proxy.rotate(**first)
        callback = consent(proxy)  # `first` seals the state
        proxy.rotate(**second)
        code = come_back(proxy, callback)["code"]  # `second` opens it and seals the code
        proxy.rotate(**first)
        answer = redeem(proxy, code)  # `first` opens the code and signs the ID token
        assert answer.status_code == 200, answer.text
        for either in (old, new):  # wherever a relying party fetched the JWKS, it lists the signing key
            proxy.rotate(**either)
            assert kid_of(answer.json()["id_token"]) in jwks_kids(proxy), (first, either)


def test_control_the_old_two_step_rotation_loses_sign_ins_across_old_and_new_instances(
    start_oidc: Callable[..., OIDCProxy],
) -> None:
    # What the next key is for: promoted at once, the new key seals and signs what old instances cannot open or list.
    old, new = ROTATION[0], {"key": "ec-next", "previous": ("rsa",)}
    proxy = start_oidc(**new)
    callback, code = consent(proxy), sign_in(proxy)["code"]
    id_token = redeem(proxy, sign_in(proxy)["code"]).json()["id_token"]
    proxy.rotate(**old)
    answer = proxy.http.get(callback)
    assert answer.status_code == 400 and "the sign-in state is not valid" in answer.text
    answer = redeem(proxy, code)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert kid_of(id_token) not in jwks_kids(proxy)


# ------------------------------------------------------------------------------------------------- userinfo


def test_userinfo_with_every_scope_and_with_basic_only(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    for scope, has_username in (("openid profile", True), ("openid", False)):
        tokens = redeem(proxy, sign_in(proxy, scope=scope)["code"]).json()
        for method in ("GET", "POST"):
            answer = proxy.http.request(
                method, proxy.url + "/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
            assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
            info = answer.json()
            assert info["sub"] == USER["open_id"] and info["name"] == USER["display_name"]
            # Basic only: TikTok says scope_permission_missed to every field, and the facade asks again.
            assert ("preferred_username" in info) is has_username, scope


def test_userinfo_refuses_a_token_tiktok_does_not_know(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc()
    answer = proxy.http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": "Bearer act.unknown"})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    assert answer.headers["www-authenticate"] == 'Bearer realm="tiktok-oidc", error="invalid_token"'
    missing = proxy.http.get(proxy.url + "/oidc/userinfo")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")


# ---------------------------------------------------------------------------------------------------- logs


def test_no_code_token_state_or_secret_in_any_log_line(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = start_oidc()
    http = proxy.http
    callback_url = consent(proxy)
    callback = dict(parse_qsl(urlsplit(callback_url).query))
    code = come_back(proxy, callback_url)["code"]
    tokens = redeem(proxy, code).json()
    refreshed = http.post(
        proxy.url + "/oidc/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(CLIENT_KEY, CLIENT_SECRET),
    ).json()
    http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    redeem(proxy, code)  # the replay: TikTok's error line too
    # What the proxy and its server log (this test's own client, httpx, logs the URLs it calls).
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("tiktok_proxy", "uvicorn")))
    assert "event=oidc_callback outcome=ok" in text and "event=oidc_token outcome=ok" in text
    assert "event=oidc_userinfo outcome=ok" in text and "event=oidc_authorize outcome=redirect" in text
    secrets = [
        CLIENT_SECRET, VERIFIER, callback["code"], callback["state"], code, tokens["access_token"],
        tokens["refresh_token"], tokens["id_token"], refreshed["access_token"], refreshed["refresh_token"],
        "rp-state-1", "rp-nonce-1",
    ]  # fmt: skip
    for secret in secrets:
        assert secret not in text


def test_refused_token_requests_log_the_grant_they_asked_for(
    start_oidc: Callable[..., OIDCProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    proxy = start_oidc()
    assert redeem(proxy, "not-a-sealed-code", client_id="aw1notallowedkey").status_code == 401
    assert redeem(proxy, "not-a-sealed-code").status_code == 400  # invalid_grant, found before TikTok
    assert redeem(proxy, "x", grant_type="urn:ietf:params:oauth:grant-type:" + "x" * 300).status_code == 400
    assert redeem(proxy, "x", grant_type="").status_code == 400  # none sent
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=oidc_token ")]
    grants = [line.split(" grant=")[1].split()[0] for line in lines]
    assert grants == ["authorization_code", "authorization_code", "other", "-"], lines


def test_each_step_is_counted_in_the_metrics(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(METRICS_TOKEN="metrics-token-0123456789")
    tokens = redeem(proxy, sign_in(proxy)["code"]).json()
    proxy.http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    sign_in(proxy, decision="cancel")
    assert query_of(proxy.http.get(proxy.url + "/oidc/authorize", params=authorize_params(prompt="none")))
    text = proxy.http.get(proxy.url + "/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}).text

    def count(route: str, grant: str, outcome: str, status: int) -> float:
        labels = f'grant="{grant}",outcome="{outcome}",route="{route}",status="{status}"'
        found = re.search(r"^tiktok_proxy_exchanges_total\{" + re.escape(labels) + r"\} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    assert count("oidc_authorize", "none", "redirect", 302) >= 2
    assert count("oidc_callback", "none", "ok", 302) >= 1
    assert count("oidc_callback", "none", "access_denied", 302) >= 1
    assert count("oidc_authorize", "none", "login_required", 302) >= 1
    assert count("oidc_token", "authorization_code", "ok", 200) >= 1
    assert count("oidc_userinfo", "none", "ok", 200) >= 1


# ------------------------------------------------------------------------------- bad input, failing TikTok


def test_malformed_requests_get_clear_answers(start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn) -> None:
    proxy = start_oidc()
    http, url = proxy.http, proxy.url
    too_big = http.post(
        url + "/oidc/token",
        content=b"a=" + b"x" * 70_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert too_big.status_code == 413 and too_big.json()["error"] == "invalid_request"
    not_a_form = http.post(url + "/oidc/token", content=b"<xml/>", headers={"Content-Type": "text/xml"})
    assert not_a_form.status_code == 400 and not_a_form.json()["error"] == "invalid_request"
    no_client = http.post(url + "/oidc/token", data={"grant_type": "refresh_token", "refresh_token": "rft.x"})
    assert no_client.status_code == 401 and no_client.json()["error"] == "invalid_client"  # RFC 6749 §5.2
    bad_basic = http.post(
        url + "/oidc/token", data={"grant_type": "refresh_token"}, headers={"Authorization": "Basic !!"}
    )
    assert bad_basic.status_code == 401 and bad_basic.json()["error"] == "invalid_client"
    for path in (
        "/oidc/authorize?client_id=%ff",
        "/oidc/callback?state=%ff",
        "/oidc/authorize?" + "&".join(f"a{i}=1" for i in range(70)),
    ):
        page = http.get(url + path)
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html"), path
    repeated = http.get(url + "/oidc/authorize", params=[("client_id", CLIENT_KEY), ("client_id", CLIENT_KEY)])
    assert repeated.status_code == 400 and "location" not in repeated.headers
    assert token_requests(tiktok) == 0


def test_tiktoks_user_info_failing_is_a_502_that_says_so(
    start_oidc: Callable[..., OIDCProxy], stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> None:
    _, tiktok_server = stand_in_server
    proxy = start_oidc(TIKTOK_USERINFO_URL=tiktok_server.url + "/v2/user/info")  # no trailing slash: Janus 404
    answer = redeem(proxy, sign_in(proxy)["code"])
    assert answer.status_code == 502 and answer.json()["error"] == "server_error"
    assert "HTTP 404" in answer.json()["error_description"] and "trailing slash" in answer.json()["error_description"]
    info = proxy.http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": "Bearer act.x"})
    assert info.status_code == 502


def test_tiktok_unreachable_for_user_info(start_oidc: Callable[..., OIDCProxy]) -> None:
    proxy = start_oidc(TIKTOK_USERINFO_URL=f"http://127.0.0.1:{free_port()}/v2/user/info/")
    info = proxy.http.get(proxy.url + "/oidc/userinfo", headers={"Authorization": "Bearer act.x"})
    assert info.status_code == 502 and info.json()["error_description"].startswith("TikTok is unreachable")

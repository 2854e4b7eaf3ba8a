"""Real relying parties against the OpenID Connect facade: openid-client under Node, and Authlib.

Each runs the whole flow over loopback against a real proxy (configured as in production) and the TikTok
stand-in: discovery, the authorization URL with PKCE, nonce and state, TikTok's consent page, the callback,
the code grant with the ID token's signature and claims checked, userinfo and a refresh.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tiktok_proxy.oidc.jose import Signer

from conftest import RP_REDIRECT, OIDCProxy, ServerThread
from stand_ins.authlib_rp import AuthlibRelyingParty
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, USER

REPO = Path(__file__).resolve().parent.parent
RELYING_PARTY = "tests/js/oidc-relying-party.mjs"


def openid_client(proxy: OIDCProxy, auth: str, alg: str, passes: bool = True, **more: str) -> str:
    """Run openid-client's flow (tests/js/oidc-relying-party.mjs) under node --test; its TAP output."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is missing: run scripts/setup-tests")
    if not (REPO / "tests/js/node_modules/openid-client").is_dir():
        pytest.fail("openid-client is missing: run scripts/setup-tests (npm ci in tests/js)")
    rp = {
        "issuer": proxy.url,
        "clientId": CLIENT_KEY,
        "clientSecret": CLIENT_SECRET,
        "redirectUri": RP_REDIRECT,
        "auth": auth,
        "alg": alg,
        **more,
    }
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", RELYING_PARTY],
        cwd=REPO,
        env={"PATH": "", "OIDC_RP": json.dumps(rp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode == 0 and "# fail 0" in result.stdout) is passes, result.stdout + result.stderr
    return result.stdout


def broken_signature(sign: Callable[[Signer, dict[str, Any]], str]) -> Callable[[Signer, dict[str, Any]], str]:
    """Signer.sign with one bit of the signature flipped, to prove a relying party checks it."""

    def broken(self: Signer, claims: dict[str, Any]) -> str:
        head, body, signature = sign(self, claims).split(".")
        flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
        flipped[0] ^= 1
        return f"{head}.{body}.{base64.urlsafe_b64encode(flipped).rstrip(b'=').decode()}"

    return broken


@pytest.mark.parametrize(("key", "alg"), [("rsa", "RS256"), ("ec", "ES256")])
@pytest.mark.parametrize("auth", ["post", "basic"])
def test_openid_client(start_oidc: Callable[..., OIDCProxy], key: str, alg: str, auth: str) -> None:
    output = openid_client(start_oidc(key=key), auth, alg)
    assert re.search(r"^# pass 3$", output, re.M), output  # the rotation case is skipped here
    assert "# skipped 1" in output


def test_openid_client_across_a_key_rotation(start_oidc: Callable[..., OIDCProxy], tmp_path: Path) -> None:
    proxy = start_oidc(key="rsa")
    result = tmp_path / "before.json"
    openid_client(proxy, "post", "RS256", resultFile=str(result))
    before = json.loads(result.read_text())
    proxy.rotate("rsa-next", previous=("rsa",))
    output = openid_client(proxy, "basic", "RS256", oldIdToken=before["idToken"])
    assert re.search(r"^# pass 4$", output, re.M), output


def test_openid_client_does_check_the_signature(
    start_oidc: Callable[..., OIDCProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the tests above: with a signature that does not verify, openid-client refuses the ID token."""
    monkeypatch.setattr(Signer, "sign", broken_signature(Signer.sign))  # the proxy runs in this process
    output = openid_client(start_oidc(key="ec"), "post", "ES256", passes=False)
    assert "JWT signature verification failed" in output, output


@pytest.mark.parametrize(("key", "alg"), [("rsa", "RS256"), ("ec", "ES256")])
@pytest.mark.parametrize("auth_method", ["client_secret_post", "client_secret_basic"])
def test_authlib(start_oidc: Callable[..., OIDCProxy], key: str, alg: str, auth_method: str) -> None:
    rp = AuthlibRelyingParty(client_id=CLIENT_KEY, client_secret=CLIENT_SECRET, auth_method=auth_method)
    last_page = authlib_sign_in(start_oidc, rp, "authorize", key=key)
    assert "Signed in as <b>Ada on TikTok</b>" in last_page, last_page
    (signed_in,) = rp.signed_in
    claims = signed_in["claims"]
    assert claims["iss"] == rp.issuer and claims["aud"] == CLIENT_KEY and claims["sub"] == USER["open_id"]
    assert claims["preferred_username"] == "ada" and "nonce" in claims
    assert signed_in["userinfo"]["sub"] == claims["sub"] and signed_in["userinfo"]["name"] == "Ada on TikTok"
    assert signed_in["refreshed"]["sub"] == claims["sub"] and "nonce" not in signed_in["refreshed"]
    header = json.loads(base64.urlsafe_b64decode(signed_in["token"]["id_token"].split(".")[0] + "=="))
    assert header["alg"] == alg


def authlib_sign_in(start_oidc: Callable[..., OIDCProxy], rp: AuthlibRelyingParty, decision: str, **env: str) -> str:
    """A sign-in through Authlib's app by a browser (cookies kept, redirects followed); the last page."""
    with ServerThread(rp.app()) as app:
        rp.issuer = start_oidc(OIDC_REDIRECT_URIS=f"{app.url}/callback", **env).url
        with httpx.Client(base_url=app.url, follow_redirects=True, timeout=10) as browser:
            consent_page = browser.get("/login")
            consent = re.search(r'name="consent" value="([^"]+)"', consent_page.text)
            assert consent, consent_page.text
            tiktok_page = str(consent_page.url).split("?")[0]
            return browser.post(tiktok_page, data={"consent": consent.group(1), "decision": decision}).text


def test_authlib_after_cancel(start_oidc: Callable[..., OIDCProxy]) -> None:
    rp = AuthlibRelyingParty(client_id=CLIENT_KEY, client_secret=CLIENT_SECRET)
    last_page = authlib_sign_in(start_oidc, rp, "cancel")
    assert "<b>access_denied</b>: the user cancelled on TikTok&#x27;s page" in last_page, last_page
    assert rp.signed_in == []


def test_authlib_does_check_the_signature(
    start_oidc: Callable[..., OIDCProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Signer, "sign", broken_signature(Signer.sign))
    rp = AuthlibRelyingParty(client_id=CLIENT_KEY, client_secret=CLIENT_SECRET)
    last_page = authlib_sign_in(start_oidc, rp, "authorize", key="rsa")
    assert "<b>BadSignatureError</b>" in last_page, last_page
    assert rp.signed_in == []

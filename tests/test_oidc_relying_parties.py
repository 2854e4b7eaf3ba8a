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

import pytest

from tiktok_proxy.jose import Signer

from conftest import RP_REDIRECT, OIDCProxy
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET

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
    sign = Signer.sign

    def broken(self: Signer, claims: dict[str, Any]) -> str:
        head, body, signature = sign(self, claims).split(".")
        flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
        flipped[0] ^= 1
        return f"{head}.{body}.{base64.urlsafe_b64encode(flipped).rstrip(b'=').decode()}"

    monkeypatch.setattr(Signer, "sign", broken)  # the proxy runs in this process
    output = openid_client(start_oidc(key="ec"), "post", "ES256", passes=False)
    assert "JWT signature verification failed" in output, output

"""Real relying parties against the OpenID Connect facade: openid-client under Node, Authlib, and Apache's
mod_auth_openidc (Debian's apache2, started by the test as its own process).

Each runs the whole flow over loopback against a real proxy (configured as in production) and the TikTok
stand-in: discovery, the authorization URL with PKCE, nonce and state, TikTok's consent page, the callback,
the code grant with the ID token's signature and claims checked, userinfo and a refresh.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tiktok_proxy.oidc.jose import Signer

from conftest import (
    RP_REDIRECT,
    OIDCProxy,
    ServerThread,
    answer_consent,
    broken_signature,
    debian_command,
    free_port,
    jwt_part,
    wait_until_listening,
)
from stand_ins.authlib_rp import AuthlibRelyingParty
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, USER, TikTokStandIn, reply
from test_oidc import come_back, consent, redeem

REPO = Path(__file__).resolve().parent.parent
RELYING_PARTY = "tests/js/oidc-relying-party.mjs"


def openid_client(
    proxy: OIDCProxy, auth: str, alg: str, passes: bool = True, only: str | None = None, **more: str
) -> str:
    """Run openid-client's flow (tests/js/oidc-relying-party.mjs) under node --test, or `only` the tests whose name
    has that text; its TAP output."""
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
        [node, "--test", "--test-reporter=tap", *([f"--test-name-pattern={only}"] if only else []), RELYING_PARTY],
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
    assert re.search(r"^# pass 5$", output, re.M), output  # the rotation and refresh-alone cases are skipped here
    assert "# skipped 2" in output
    assert re.search(r"^ok \d+ - max_age: the ID token carries auth_time", output, re.M), output


def test_openid_client_across_a_key_rotation(start_oidc: Callable[..., OIDCProxy], tmp_path: Path) -> None:
    proxy = start_oidc(key="rsa")
    result = tmp_path / "before.json"
    openid_client(proxy, "post", "RS256", resultFile=str(result))
    before = json.loads(result.read_text())
    proxy.rotate("rsa-next", previous=("rsa",))
    output = openid_client(proxy, "basic", "RS256", oldIdToken=before["idToken"])
    assert re.search(r"^# pass 6$", output, re.M), output


def test_openid_client_takes_a_refresh_without_an_id_token(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, tmp_path: Path
) -> None:
    """TikTok's user info failing after a refresh: the answer has TikTok's new tokens and no ID token (OIDC Core
    §12.2), which openid-client accepts; the new refresh token then works."""
    proxy = start_oidc()
    code = come_back(proxy, consent(proxy))["code"]
    first = redeem(proxy, code).json()
    tiktok.user_info_fault = reply(503, "<h1>Service Unavailable</h1>", "text/html")
    result = tmp_path / "refreshed.json"
    output = openid_client(
        proxy, "post", "RS256", only="without an ID token", refreshToken=first["refresh_token"], resultFile=str(result)
    )
    assert re.search(r"^ok \d+ - a refresh answered without an ID token", output, re.M), output
    assert re.search(r"^# pass 1$", output, re.M), output
    tiktok.user_info_fault = None
    again = proxy.http.post(
        proxy.url + "/oidc/token",
        data={"grant_type": "refresh_token", "refresh_token": json.loads(result.read_text())["refreshToken"]},
        auth=(CLIENT_KEY, CLIENT_SECRET),
    )
    assert again.status_code == 200 and "id_token" in again.json()


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
    assert jwt_part(signed_in["token"]["id_token"], 0)["alg"] == alg


def authlib_sign_in(start_oidc: Callable[..., OIDCProxy], rp: AuthlibRelyingParty, decision: str, **env: str) -> str:
    """A sign-in through Authlib's app by a browser (cookies kept, redirects followed); the last page."""
    with ServerThread(rp.app()) as app:
        rp.issuer = start_oidc(OIDC_REDIRECT_URIS=f"{app.url}/callback", **env).url
        with httpx.Client(base_url=app.url, follow_redirects=True, timeout=10) as browser:
            return answer_consent(browser, browser.get("/login"), decision).text


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


# ------------------------------------------------------------------------ Apache with mod_auth_openidc

MODULES = Path("/usr/lib/apache2/modules")  # Debian's, libapache2-mod-auth-openidc's among them
PROTECTED = "/private/"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")

# Debian's own /etc/apache2/apache2.conf takes its paths from /etc/apache2/envvars (APACHE_RUN_DIR, APACHE_LOG_DIR,
# APACHE_RUN_USER...), which apache2ctl and the system service read first: apache2 started with that file alone
# stops at ${APACHE_RUN_DIR}. None of it is used here: every path this Apache writes to is set, in {dir}.
APACHE_CONF = """\
ServerRoot {dir}
ServerName 127.0.0.1
DefaultRuntimeDir {dir}
PidFile {dir}/apache2.pid
ErrorLog {dir}/error.log
# mod_auth_openidc says there why it refused a sign-in.
LogLevel warn auth_openidc:info
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule auth_openidc_module {modules}/mod_auth_openidc.so

# Over plain http on loopback 2.4.12 needs nothing more: it only warns at startup that OIDCProviderMetadataURL and
# OIDCRedirectURI SHOULD be https. (OIDCSSLValidateServer concerns https URLs only, its cookies get Secure only
# on an https request, and OIDCXForwardedHeaders matters only behind a front door.)
OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {client_id}
OIDCClientSecret {client_secret}
# Encrypts the state cookie and the session: a new one for each run.
OIDCCryptoPassphrase {passphrase}
OIDCScope "openid profile"
OIDCPKCEMethod S256
# The claims reach the application as OIDC_CLAIM_* request headers (mod_auth_openidc removes any the browser
# sent); the ID token as it came (to see its header), and userinfo's answer apart from the ID token's claims.
OIDCPassClaimsAs headers
OIDCPassIDTokenAs claims serialized
OIDCPassUserInfoAs claims json
{hosts}"""

# OIDCProviderTokenEndpointAuth is set per server, so each client authentication method has its own virtual host.
# mod_auth_openidc answers at OIDCRedirectURI itself (it must point at nothing the application serves).
APACHE_HOST = """
Listen 127.0.0.1:{port}
<VirtualHost 127.0.0.1:{port}>
    OIDCRedirectURI http://127.0.0.1:{port}{protected}redirect_uri
    OIDCProviderTokenEndpointAuth {auth_method}
    <Location {protected}>
        AuthType openid-connect
        Require valid-user
        ProxyPass {app_url}/
    </Location>
    <Location {protected}redirect_uri>
        ProxyPass "!"
    </Location>
</VirtualHost>
"""


@dataclass
class Apache:
    """Debian's apache2 with mod_auth_openidc, run as the test's own process, and the application it protects."""

    dir: Path
    ports: dict[str, int]  # client authentication method -> the port of its virtual host
    seen: list[dict[str, str]] = field(default_factory=list)  # the OIDC_* headers of each request the app got

    def url(self, auth_method: str) -> str:
        return f"http://127.0.0.1:{self.ports[auth_method]}"

    def redirect_uri(self, auth_method: str) -> str:
        return f"{self.url(auth_method)}{PROTECTED}redirect_uri"

    def error_log(self) -> str:
        return (self.dir / "error.log").read_text()

    def app(self) -> Starlette:
        """The protected application: it shows what mod_auth_openidc passed it."""

        async def show(request: Request) -> Response:
            passed = {name: value for name, value in request.headers.items() if name.startswith("oidc_")}
            self.seen.append(passed)
            return JSONResponse(passed)

        return Starlette(routes=[Route("/{path:path}", show)])

    def write_conf(self, issuer: str, app_url: str) -> Path:
        hosts = "".join(
            APACHE_HOST.format(port=port, auth_method=method, protected=PROTECTED, app_url=app_url)
            for method, port in self.ports.items()
        )
        # Started as root, Apache serves as User (never as root); started as anyone else, it stays that user.
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        conf = self.dir / "apache2.conf"
        conf.write_text(
            APACHE_CONF.format(
                dir=self.dir,
                user=user,
                modules=MODULES,
                issuer=issuer,
                client_id=CLIENT_KEY,
                client_secret=CLIENT_SECRET,
                passphrase=secrets.token_urlsafe(32),
                hosts=hosts,
            )
        )
        return conf


@contextmanager
def mod_auth_openidc(
    start_oidc: Callable[..., OIDCProxy], folder: Path, key: str
) -> Iterator[tuple[OIDCProxy, Apache]]:
    """The facade signing with `key`, and one Apache in front of an application, with both virtual hosts."""
    command = debian_command("apache2", "apache2")
    if not (MODULES / "mod_auth_openidc.so").is_file():
        package = "libapache2-mod-auth-openidc"
        pytest.fail(f"mod_auth_openidc is not installed: scripts/setup-tests installs it (Debian package {package})")
    apache = Apache(folder, {method: free_port() for method in AUTH_METHODS})
    proxy = start_oidc(key=key, OIDC_REDIRECT_URIS=",".join(apache.redirect_uri(method) for method in AUTH_METHODS))
    with ServerThread(apache.app()) as app:
        conf = apache.write_conf(proxy.url, app.url)
        # -X: one process in the foreground, never a daemon; it reads no file but conf.
        process = subprocess.Popen(
            [command, "-X", "-f", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for port in apache.ports.values():
                wait_until_listening(port, process, "apache2")
            yield proxy, apache
        finally:
            process.terminate()
            process.communicate(timeout=10)


def basic_auth_at_token_endpoint(proxy: OIDCProxy) -> list[bool]:
    """Whether each request to the facade's token endpoint from now on carries HTTP Basic credentials."""
    seen: list[bool] = []
    app = proxy.late.app

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/oidc/token":
            seen.append(
                any(name == b"authorization" and value.startswith(b"Basic ") for name, value in scope["headers"])
            )
        await app(scope, receive, send)

    proxy.late.app = recording
    return seen


@pytest.mark.parametrize(("key", "alg"), [("rsa", "RS256"), ("ec", "ES256")])
def test_mod_auth_openidc(
    start_oidc: Callable[..., OIDCProxy], tiktok: TikTokStandIn, tmp_path: Path, key: str, alg: str
) -> None:
    """Sign-ins through Apache's mod_auth_openidc, one per client authentication method: the protected page gets
    the claims, the session cookie keeps the user signed in, and mod_auth_openidc's refresh gets new tokens."""
    with mod_auth_openidc(start_oidc, tmp_path, key) as (proxy, apache):
        basic = basic_auth_at_token_endpoint(proxy)
        for method in AUTH_METHODS:
            page_url = apache.url(method) + PROTECTED
            with httpx.Client(follow_redirects=True, timeout=10) as browser:  # a new browser: no session yet
                page = answer_consent(browser, browser.get(page_url))
                assert page.status_code == 200 and str(page.url) == page_url, (method, page.text, apache.error_log())
                passed = page.json()
                again = browser.get(page_url)  # the session cookie: no new sign-in
                refreshed = browser.get(  # mod_auth_openidc's own refresh, then back to the page
                    apache.redirect_uri(method),
                    params={"refresh": page_url, "access_token": passed["oidc_access_token"]},
                )
            id_token = passed["oidc_id_token"]
            assert jwt_part(id_token, 0)["alg"] == alg
            claims = jwt_part(id_token, 1)
            assert claims["iss"] == proxy.url and claims["aud"] == CLIENT_KEY and "nonce" in claims
            assert claims["sub"] == passed["oidc_claim_sub"] == USER["open_id"]
            assert passed["oidc_claim_name"] == "Ada on TikTok" and passed["oidc_claim_preferred_username"] == "ada"
            assert json.loads(passed["oidc_userinfo_json"])["sub"] == USER["open_id"]
            assert passed["oidc_access_token"] in tiktok.access_tokens  # TikTok's own, as issued
            assert again.history == [] and again.json()["oidc_claim_sub"] == USER["open_id"]
            assert refreshed.status_code == 200, (method, refreshed.text, apache.error_log())
            new_token = refreshed.json()["oidc_access_token"]
            assert new_token != passed["oidc_access_token"] and new_token in tiktok.access_tokens
            # The code grant and the refresh, each authenticated as this virtual host is configured to.
            assert basic == [method == "client_secret_basic"] * 2, method
            basic.clear()


@pytest.mark.parametrize("key", ["rsa", "ec"])
def test_mod_auth_openidc_does_check_the_signature(
    start_oidc: Callable[..., OIDCProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Guards the test above: with a signature that does not verify, the application never sees a request."""
    monkeypatch.setattr(Signer, "sign", broken_signature(Signer.sign))
    with mod_auth_openidc(start_oidc, tmp_path, key) as (proxy, apache):
        basic = basic_auth_at_token_endpoint(proxy)
        page_url = apache.url("client_secret_post") + PROTECTED
        with httpx.Client(follow_redirects=True, timeout=10) as browser:
            refused = answer_consent(browser, browser.get(page_url))
            still_out = browser.get(page_url, follow_redirects=False)
    assert basic == [False]  # the code was redeemed: what mod_auth_openidc refused is the ID token
    # mod_auth_openidc 2.4.12 sends its error page with status 200; it says what failed in its log.
    assert "Error in handling response type." in refused.text, refused.text
    assert "JWT signature verification failed" in apache.error_log(), apache.error_log()
    assert apache.seen == []
    assert still_out.status_code == 302 and still_out.headers["location"].startswith(proxy.url + "/oidc/authorize?")

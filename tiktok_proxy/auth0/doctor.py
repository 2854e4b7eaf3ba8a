"""`doctor`: one line per check, each problem with its fix, before a real login fails."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import (
    DEFAULT_AUTHORIZE_URL,
    ConfigError,
    Settings,
    configuration_warnings,
    dotenv_file,
    is_loopback,
    load_dotenv_from_working_directory,
    load_settings,
)
from ..inbound import ALLOW_LIST_REFUSAL, GATE_HEADER, GATE_REFUSAL, OWN_SECRET_REFUSAL, gate_mode
from ..logs import redact
from .management import AdminError, AdminSettings, management
from .setup import PROFILE_SCRIPT


@dataclass
class Finding:
    level: str  # ok, warning or problem
    what: str
    fix: str = ""


def doctor(settings: AdminSettings, out: Callable[[str], None], environ: Mapping[str, str] | None = None) -> bool:
    """Print one line per check; True when nothing is a problem. `environ`: these variables in place of the
    process environment and `.env`."""
    if environ is None:
        load_dotenv_from_working_directory()
        dotenv = dotenv_file()
        out(
            f"settings: the environment, then {dotenv}"
            if dotenv
            else f"settings: the environment only (no .env in {os.getcwd()})"
        )
        environ = os.environ
    # A misspelt name first: it may be why a setting below is missing.
    findings = [Finding("warning", warning) for warning in configuration_warnings(environ)]
    proxy_settings: Settings | None
    try:
        proxy_settings = load_settings(environ)
        findings += check_proxy_configuration(proxy_settings)
    except ConfigError as err:
        proxy_settings = None
        findings.append(Finding("problem", f"the proxy's configuration does not load: {err}", err.fix))
    findings += check_public_url(settings)
    findings += check_credentials(settings)
    findings += check_redirect_uri(settings)
    findings += check_connection(settings, proxy_settings)
    for finding in findings:
        line = f"{finding.level:<8} {finding.what}"
        out(line + (f"\n         fix: {finding.fix}" if finding.fix else ""))
    problems = sum(f.level == "problem" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    out(f"{problems} problem(s), {warnings} warning(s)")
    return problems == 0


def check_proxy_configuration(settings: Settings) -> Iterable[Finding]:
    yield Finding("ok", "the proxy's configuration loads")
    for name, url in (("TIKTOK_TOKEN_URL", settings.token_url), ("TIKTOK_REVOKE_URL", settings.revoke_url)):
        parts = urlsplit(url)
        if parts.scheme != "https":
            yield Finding("warning", f"{name} is {url}: plain http, fine for a local stand-in only")
        elif not parts.path.endswith("/"):
            yield Finding(
                "problem", f"{name} has no trailing slash", 'TikTok answers 404 "Unsupported path(Janus)" without it'
            )
        else:
            yield Finding("ok", f"{name} is https with its trailing slash")
    mode = gate_mode(settings)
    if mode == "open":
        yield Finding(
            "warning",
            "the proxy has no gate: anyone who finds the Token URL can relay token requests through it",
            "set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET (the proxy then checks the secret itself), or PROXY_SECRET",
        )
    else:
        yield Finding("ok", f"the proxy's gate is {mode}")
    if settings.proxy_secrets and settings.tiktok_client_secret and not settings.allowed_client_keys:
        yield Finding(
            "ok",
            f"{GATE_HEADER} is not needed by TIKTOK_CLIENT_KEY (its secret is checked); PROXY_SECRET matters only "
            "for other client keys in ALLOWED_CLIENT_KEYS, and none is",
        )
    if not settings.allowed_client_keys and not settings.tiktok_client_key:
        # No TikTok app named at all: nothing below can be checked against one, and any client key is relayed.
        yield Finding(
            "problem",
            "TIKTOK_CLIENT_KEY is not set (nor ALLOWED_CLIENT_KEYS): no TikTok app to check, and the proxy relays "
            "for any client key",
            "set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET to your TikTok app's Client key and Client secret",
        )


def check_public_url(settings: AdminSettings) -> Iterable[Finding]:
    if not settings.public_url:
        yield Finding(
            "warning",
            "PUBLIC_URL is not set: cannot check that Auth0 can reach the proxy",
            "set it to the https address (e.g. ngrok's)",
        )
        return
    if not settings.public_url.startswith("https://"):
        yield Finding(
            "problem",
            f"PUBLIC_URL {settings.public_url} is not https",
            "Auth0 calls the Token URL over the internet: use https",
        )
    try:
        response = httpx.get(f"{settings.public_url}/healthz", timeout=10, follow_redirects=False)
        healthy = response.status_code == 200 and response.json().get("status") == "ok"
    except (httpx.HTTPError, ValueError, AttributeError):
        healthy = False
    if healthy:
        yield Finding("ok", f"the proxy answers at {settings.public_url}/healthz")
    else:
        yield Finding(
            "problem",
            f"nothing healthy answers at {settings.public_url}/healthz",
            "start the proxy and the tunnel (ngrok http 3333)",
        )


PROBE_CODE = "doctor-made-up-code"  # no such code exists: TikTok can only refuse it, so the probe changes nothing


def check_credentials(settings: AdminSettings) -> Iterable[Finding]:
    """One harmless exchange through the whole path (PUBLIC_URL, the gate, the proxy, TikTok) with the real
    client key and secret and a made-up code: TikTok's answer tells whether it accepts the credentials."""
    if not (settings.public_url and settings.tiktok_client_key and settings.tiktok_client_secret):
        yield Finding(
            "warning",
            "the TikTok credentials were not tried",
            "set PUBLIC_URL, TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET",
        )
        return
    parts = urlsplit(settings.public_url)
    if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        yield Finding(
            "warning",
            f"the TikTok credentials were not tried: PUBLIC_URL {settings.public_url} is plain http, and the probe "
            "would send the client secret and the gate secret in the clear",
            "use the proxy's https address as PUBLIC_URL",
        )
        return
    url = f"{settings.public_url}/proxy/token"
    form = {
        "grant_type": "authorization_code",
        "client_id": settings.tiktok_client_key,
        "client_secret": settings.tiktok_client_secret,
        "code": PROBE_CODE,
        "redirect_uri": settings.redirect_uri or "https://example.invalid/login/callback",
    }
    headers = {GATE_HEADER: settings.proxy_secret} if settings.proxy_secret else {}
    try:
        response = httpx.post(url, data=form, headers=headers, timeout=20, follow_redirects=False)
    except httpx.TimeoutException:
        yield Finding(
            "problem", f"the probe exchange at {url} timed out", "check the tunnel or host in front of the proxy"
        )
        return
    except httpx.HTTPError as exc:
        yield Finding(
            "problem",
            f"the probe exchange could not reach {url} ({type(exc).__name__})",
            "start the proxy and the tunnel",
        )
        return
    yield probe_finding(response, settings)


def probe_finding(response: httpx.Response, settings: AdminSettings) -> Finding:
    """Which hop answered, and what that means, from the probe's answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not (body.get("error") or body.get("access_token")):
        # Not the proxy's JSON: something in front of it answered (a tunnel that is down, a host's error page).
        return Finding(
            "problem",
            f"the probe exchange got HTTP {response.status_code} that is not the proxy's answer",
            "check the tunnel or host between PUBLIC_URL and the proxy",
        )
    if body.get("access_token"):
        return Finding("ok", "TikTok accepts the client key and secret (the probe was answered with a token)")
    error = str(body["error"])
    description = redact(str(body.get("error_description", "")), settings.secrets())[:200]
    if response.status_code == 401 and description.startswith(GATE_REFUSAL):
        return Finding(
            "problem",
            "the proxy's gate refused the probe: PROXY_SECRET here is none of the proxy's values",
            "use the same PROXY_SECRET here as on the proxy",
        )
    if response.status_code == 401 and description == OWN_SECRET_REFUSAL:
        return Finding(
            "problem",
            "the proxy refused TIKTOK_CLIENT_SECRET: it holds another secret for TIKTOK_CLIENT_KEY",
            "use the same TIKTOK_CLIENT_SECRET here, on the proxy and in the connection (setup-auth0)",
        )
    if response.status_code == 401 and description == ALLOW_LIST_REFUSAL:
        return Finding(
            "problem",
            "the proxy refused TIKTOK_CLIENT_KEY: it is not in the proxy's ALLOWED_CLIENT_KEYS",
            "add it there",
        )
    if error == "invalid_client":
        return Finding(
            "problem",
            f"TikTok refused the client key or secret ({description})",
            "copy the Client key and Client secret from TikTok's developer portal into TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET, then run setup-auth0",
        )
    if response.status_code in (502, 503, 504):
        return Finding(
            "problem",
            f"the proxy could not complete the exchange with TikTok: {response.status_code} {description}",
            "check the proxy's log and its egress to open.tiktokapis.com",
        )
    if response.status_code == 429:
        return Finding(
            "warning", "TikTok is rate-limiting the app: the credentials were not checked", "run doctor again later"
        )
    return Finding("ok", f"TikTok accepts the client key and secret (it refused only the made-up code: {error})")


def check_redirect_uri(settings: AdminSettings) -> Iterable[Finding]:
    uri = settings.redirect_uri
    if not uri:
        yield Finding("warning", "AUTH0_DOMAIN is not set: cannot check the TikTok redirect URI")
        return
    parts = urlsplit(uri)
    broken = [
        rule for rule, bad in [
            ("https", parts.scheme != "https"), ("under 512 characters", len(uri) >= 512),
            ("no query", bool(parts.query)), ("no fragment", bool(parts.fragment)),
        ] if bad
    ]  # fmt: skip
    if broken:
        yield Finding("problem", f"the TikTok redirect URI {uri} breaks TikTok's rules: {', '.join(broken)}")
    else:
        yield Finding("ok", f"register this redirect URI in TikTok's portal: {uri}")


def check_connection(settings: AdminSettings, proxy_settings: Settings | None) -> Iterable[Finding]:
    if not settings.auth0_base or not (settings.mgmt_token or settings.mgmt_client_id):
        yield Finding("warning", "no Auth0 Management API credentials: the connection was not checked")
        return
    api, http = management(settings)
    with http:
        try:
            connection = api.connection_named(settings.connection_name)
            if connection is None:
                yield Finding(
                    "problem",
                    f"Auth0 has no connection named {settings.connection_name}",
                    "run: python proxy.py setup-auth0",
                )
                return
            enabled = api.enabled_clients(connection["id"])
        except AdminError as err:
            yield Finding("problem", str(err))
            return
    yield from check_connection_options(settings, connection.get("options") or {}, proxy_settings or Settings())
    if enabled:
        yield Finding("ok", f"the connection is enabled for {len(enabled)} application(s)")
    else:
        yield Finding(
            "problem",
            "the connection is enabled for no application",
            "enable it under the connection's Applications tab, or setup-auth0 --app",
        )


def check_connection_options(settings: AdminSettings, options: Mapping[str, Any], proxy: Settings) -> Iterable[Finding]:
    token_url = str(options.get("tokenURL", ""))
    authorize_url = str(options.get("authorizationURL", ""))
    expected = f"{settings.public_url}/proxy/token" if settings.public_url else None
    if expected and token_url.rstrip("/") == expected:
        yield Finding("ok", "the Token URL points at this proxy")
    elif not expected and token_url.rstrip("/").endswith("/proxy/token"):
        # The old v1 sample proxy serves the same path, so the path alone proves nothing.
        yield Finding(
            "warning",
            f"the Token URL {token_url} ends in /proxy/token, as this proxy's and the retired v1 sample's both do",
            "set PUBLIC_URL so doctor can tell which",
        )
    else:
        yield Finding(
            "problem",
            f"the Token URL is {token_url or '(unset)'}",
            f"set it to {expected or 'https://<proxy>/proxy/token'}",
        )

    via_proxy = authorize_url.rstrip("/").endswith("/proxy/authorize")
    if "tiktok.com/auth/authorize" in authorize_url or "open-api.tiktok.com" in authorize_url:
        yield Finding(
            "problem", f"the Authorization URL {authorize_url} is TikTok's retired v1", f"use {DEFAULT_AUTHORIZE_URL}"
        )
    elif via_proxy or "/v2/auth/authorize" in authorize_url:
        yield Finding("ok", "the Authorization URL is v2" + (" (through the proxy)" if via_proxy else ""))
    else:
        yield Finding(
            "problem",
            f"the Authorization URL {authorize_url or '(unset)'} is not TikTok's v2 one",
            f"use {DEFAULT_AUTHORIZE_URL}",
        )

    client_key = ((options.get("upstream_params") or {}).get("client_key") or {}).get("value")
    if client_key or via_proxy:
        yield Finding(
            "ok",
            "TikTok gets client_key on the authorize page"
            + (" (upstream_params)" if client_key else " (the proxy adds it)"),
        )
    else:
        yield Finding(
            "problem",
            "nothing adds client_key to the authorize request",
            "run setup-auth0, or use the proxy's /proxy/authorize",
        )

    scope = options.get("scope")
    if isinstance(scope, str) and " " in scope.strip() and not options.get("useOauthSpecScope"):
        yield Finding(
            "problem",
            f"the scopes {scope!r} are space-separated",
            "TikTok wants commas: user.info.basic,user.info.profile",
        )
    else:
        yield Finding("ok", f"the scopes are {scope!r}")

    script = str((options.get("scripts") or {}).get("fetchUserProfile", ""))
    if " ".join(script.split()) == " ".join(PROFILE_SCRIPT.read_text().split()):
        yield Finding("ok", "the Fetch User Profile script is the shipped one")
    elif "res.data.user" in script:
        yield Finding(
            "problem",
            "the Fetch User Profile script is the one from Auth0's guide, which always fails",
            "run setup-auth0",
        )
    else:
        yield Finding(
            "warning",
            "the Fetch User Profile script is not the shipped one",
            "compare with tiktok_proxy/auth0/fetch-user-profile.js",
        )

    client_id = options.get("client_id")
    own_key = bool(proxy.tiktok_client_secret) and client_id == proxy.tiktok_client_key
    if (
        (proxy.allowed_client_keys or proxy.tiktok_client_key)
        and not own_key
        and client_id not in proxy.allowed_client_keys
    ):
        yield Finding(
            "problem",
            "the connection's Client ID is neither TIKTOK_CLIENT_KEY nor in ALLOWED_CLIENT_KEYS: the proxy would "
            "refuse every login",
            "add it to ALLOWED_CLIENT_KEYS, or run setup-auth0 with this TIKTOK_CLIENT_KEY",
        )

    if own_key:
        yield from check_own_secret(options, proxy)
    else:
        yield from check_gate_header(settings, options, proxy.proxy_secrets)


def check_own_secret(options: Mapping[str, Any], proxy: Settings) -> Iterable[Finding]:
    """The proxy checks the connection's client secret itself: X-Proxy-Secret is not needed. Never printed."""
    secret = options.get("client_secret")
    if isinstance(secret, str) and not hmac.compare_digest(secret.encode(), proxy.tiktok_client_secret.encode()):
        yield Finding(
            "problem",
            "the connection's Client Secret is not the proxy's TIKTOK_CLIENT_SECRET: the proxy would refuse every login",
            "run setup-auth0 with the proxy's TIKTOK_CLIENT_SECRET",
        )
    else:
        yield Finding(
            "ok",
            f"the proxy checks the connection's client secret itself: logins and Token Vault's refreshes pass "
            f"without {GATE_HEADER}",
        )


def check_gate_header(
    settings: AdminSettings, options: Mapping[str, Any], proxy_secrets: frozenset[str]
) -> Iterable[Finding]:
    """Does the header Auth0 sends (customHeaders) open the proxy's gate (PROXY_SECRET)? Values are never printed.

    Only for a connection whose client key is not the proxy's own (TIKTOK_CLIENT_KEY): several TikTok apps behind
    one proxy, or a proxy that holds no TikTok secret."""
    headers = options.get("customHeaders") or {}
    sent = next((value for name, value in headers.items() if name.lower() == GATE_HEADER.lower()), None)
    if not proxy_secrets:
        if sent:
            yield Finding(
                "warning",
                f"the connection sends {GATE_HEADER}, but PROXY_SECRET is not set: the gate is off",
                "set PROXY_SECRET",
            )
        else:
            yield Finding(
                "warning",
                "PROXY_SECRET is not set: anyone who finds the Token URL can use the proxy",
                "set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET on the proxy (it then checks the secret itself), "
                "or PROXY_SECRET and run setup-auth0",
            )
    elif sent is None:
        yield Finding(
            "problem",
            f"the connection sends no {GATE_HEADER}: the proxy's gate would refuse every login",
            "run setup-auth0 (it writes customHeaders)",
        )
    elif sent not in proxy_secrets:
        yield Finding(
            "problem",
            f"the connection's {GATE_HEADER} is not one of PROXY_SECRET's values: every login would be refused",
            "run setup-auth0",
        )
    elif settings.proxy_secret and sent != settings.proxy_secret:
        yield Finding(
            "warning",
            f"the connection sends an older {GATE_HEADER} value, still accepted",
            "run setup-auth0 to finish the rotation",
        )
    else:
        yield Finding("ok", f"the connection's {GATE_HEADER} opens the proxy's gate")

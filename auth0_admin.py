"""The Auth0 side of the TikTok connection, from the command line (see `python proxy.py --help`):

- `setup-auth0` creates or updates the custom social connection through the Management API;
- `doctor` says what is wrong before a login fails;
- `revoke-user` revokes a user's TikTok grant and, if asked, deletes the Auth0 user.

Every failure ends in an AdminError: one clear line, never a traceback, and never a secret or a token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from dotenv import find_dotenv, load_dotenv

import proxy

PROFILE_SCRIPT = Path(__file__).resolve().parent / "auth0" / "fetch-user-profile.js"
MANAGEMENT_SCOPES = "read:connections create:connections update:connections read:users read:user_idp_tokens delete:users"


class AdminError(Exception):
    """A failure the command reports in one line and exits non-zero for."""


# ----------------------------------------------------------------------------------- configuration


@dataclass
class AdminSettings:
    auth0_base: str = ""  # https://tenant.eu.auth0.com, or a full base URL such as http://127.0.0.1:8123
    mgmt_client_id: str = ""
    mgmt_client_secret: str = ""
    mgmt_token: str = ""
    tiktok_client_key: str = ""
    tiktok_client_secret: str = ""
    public_url: str = ""
    scopes: str = "user.info.basic"
    connection_name: str = "tiktok"
    app_client_ids: list[str] = field(default_factory=list)
    redirect_uri: str = ""  # what is registered at TikTok; defaults to https://<AUTH0_DOMAIN>/login/callback

    def secrets(self) -> list[str]:
        return [s for s in (self.mgmt_client_secret, self.mgmt_token, self.tiktok_client_secret) if s]


def load_admin_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> AdminSettings:
    """From the environment and `.env`; command-line flags (`overrides`) win."""
    if environ is None:
        load_dotenv(find_dotenv(usecwd=True))
        environ = os.environ
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "", [])}

    def get(name: str, default: str = "") -> str:
        return environ.get(name, "").strip() or default

    domain = overrides.get("domain") or get("AUTH0_DOMAIN")
    settings = AdminSettings(
        auth0_base=auth0_base_url(domain) if domain else "",
        mgmt_client_id=get("AUTH0_MGMT_CLIENT_ID"),
        mgmt_client_secret=get("AUTH0_MGMT_CLIENT_SECRET"),
        mgmt_token=get("AUTH0_MGMT_TOKEN"),
        tiktok_client_key=get("TIKTOK_CLIENT_KEY"),
        tiktok_client_secret=get("TIKTOK_CLIENT_SECRET"),
        public_url=(overrides.get("public_url") or get("PUBLIC_URL")).rstrip("/"),
        scopes=",".join(proxy.split_scopes(get("TIKTOK_SCOPES", "user.info.basic"))),
        connection_name=overrides.get("connection") or get("AUTH0_CONNECTION_NAME", "tiktok"),
        app_client_ids=overrides.get("app") or [a.strip() for a in get("AUTH0_APP_CLIENT_IDS").split(",") if a.strip()],
        redirect_uri=get("TIKTOK_REDIRECT_URI"),
    )
    if not settings.redirect_uri and settings.auth0_base:
        settings.redirect_uri = f"https://{urlsplit(settings.auth0_base).hostname}/login/callback"
    return settings


def auth0_base_url(domain: str) -> str:
    """A bare domain means https; a full base URL (how the tests reach a stand-in) is used as it is."""
    base = domain.strip().rstrip("/")
    return base if "://" in base else f"https://{base}"


def require(settings: AdminSettings, *names: str) -> None:
    variables = {
        "auth0_base": "AUTH0_DOMAIN", "tiktok_client_key": "TIKTOK_CLIENT_KEY",
        "tiktok_client_secret": "TIKTOK_CLIENT_SECRET", "public_url": "PUBLIC_URL",
    }  # fmt: skip
    for name in names:
        if not getattr(settings, name):
            raise AdminError(f"{variables[name]} is not set (environment, .env or flag)")
    if not settings.mgmt_token and not (settings.mgmt_client_id and settings.mgmt_client_secret):
        raise AdminError("set AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET (a machine-to-machine app), or AUTH0_MGMT_TOKEN")


# ---------------------------------------------------------------------------- the Management API


class ManagementAPI:
    """A thin client: gets its own token (client-credentials grant) and turns every failure into an AdminError."""

    def __init__(self, settings: AdminSettings, http: httpx.Client) -> None:
        self.settings, self.http = settings, http
        self.token = settings.mgmt_token

    def call(self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        if not self.token:
            self.token = self._client_credentials_token()
        response = self._send(method, path, json=body, params=params, headers={"Authorization": f"Bearer {self.token}"})
        return response.json() if response.content else None

    def _client_credentials_token(self) -> str:
        body = {
            "grant_type": "client_credentials",
            "client_id": self.settings.mgmt_client_id,
            "client_secret": self.settings.mgmt_client_secret,
            "audience": f"{self.settings.auth0_base}/api/v2/",
        }
        token = self._send("POST", "/oauth/token", json=body).json().get("access_token")
        if not isinstance(token, str) or not token:
            raise AdminError("Auth0's token endpoint answered without an access_token")
        return token

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.settings.auth0_base + path
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise AdminError(f"could not reach Auth0 at {self.settings.auth0_base} ({type(exc).__name__})") from None
        if response.status_code < 400:
            return response
        raise AdminError(self._explain(method, path, response))

    def _explain(self, method: str, path: str, response: httpx.Response) -> str:
        try:
            detail = response.json()
        except ValueError:
            detail = {}
        message = str(detail.get("message") or detail.get("error_description") or detail.get("error") or "").strip()
        message = proxy.redact(message, self.settings.secrets())[:300]
        where = f"Auth0 refused {method} {path.split('?')[0]}"
        if response.status_code == 401:
            return f"{where} (401 {message}): check AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET, or AUTH0_MGMT_TOKEN"
        if response.status_code == 403:
            return f"{where} (403 {message}): grant the Management API app these scopes: {MANAGEMENT_SCOPES}"
        if response.status_code == 409:
            return f"{where} (409 {message}): a connection with that name exists; set AUTH0_CONNECTION_NAME or remove it"
        if response.status_code == 429:
            wait = response.headers.get("retry-after", "")
            return f"{where} (429 rate limit): retry in {wait if wait.isdigit() else 'a few'} seconds"
        return f"{where} ({response.status_code} {message})"

    # ---- the calls the commands need

    def connection_named(self, name: str) -> dict[str, Any] | None:
        found = self.call("GET", "/api/v2/connections", params={"name": name})
        connections = found.get("connections", []) if isinstance(found, dict) else found or []
        return next((c for c in connections if c.get("name") == name), None)

    def enabled_clients(self, connection_id: str) -> list[str]:
        found = self.call("GET", f"/api/v2/connections/{connection_id}/clients")
        return [c["client_id"] for c in (found or {}).get("clients", []) if c.get("client_id")]


def management(settings: AdminSettings, timeout: float = 15) -> tuple[ManagementAPI, httpx.Client]:
    # A command run from a laptop honors HTTPS_PROXY and SSL_CERT_FILE, as other command-line tools do.
    http = httpx.Client(timeout=timeout, follow_redirects=False)
    return ManagementAPI(settings, http), http


# --------------------------------------------------------------------------------- setup-auth0

SECRET_OPTIONS = {"client_secret"}


def desired_options(settings: AdminSettings, use_proxy_authorize: bool) -> dict[str, Any]:
    authorize = f"{settings.public_url}/proxy/authorize" if use_proxy_authorize else proxy.DEFAULT_AUTHORIZE_URL
    return {
        "authorizationURL": authorize,
        "tokenURL": f"{settings.public_url}/proxy/token",
        "scope": settings.scopes,  # comma-separated: TikTok's separator (quirk Q2)
        "client_id": settings.tiktok_client_key,
        "client_secret": settings.tiktok_client_secret,
        # Auth0 adds this to the authorize request; harmless when /proxy/authorize renames client_id anyway.
        "upstream_params": {"client_key": {"value": settings.tiktok_client_key}},
        "scripts": {"fetchUserProfile": PROFILE_SCRIPT.read_text()},
    }


def merge_options(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A PATCH replaces `options` wholesale, so keep every option and sub-option we do not set."""
    merged = dict(existing)
    for key, value in desired.items():
        if isinstance(value, dict) and isinstance(existing.get(key), dict):
            merged[key] = {**existing[key], **value}
        else:
            merged[key] = value
    return merged


def describe_changes(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            lines += describe_changes(old, new, prefix=f"{name}.")
        elif key in SECRET_OPTIONS:
            lines.append(f"  {name}: {'set' if old is None else 'changed'} (hidden)")
        elif name == "scripts.fetchUserProfile":
            lines.append(f"  {name}: {'installed' if old is None else 'replaced with'} the shipped auth0/fetch-user-profile.js")
        else:
            lines.append(f"  {name}: {json.dumps(old) if old is not None else '(unset)'} -> {json.dumps(new)}")
    return lines


def setup_auth0(settings: AdminSettings, *, dry_run: bool, use_proxy_authorize: bool, out: Callable[[str], None]) -> None:
    require(settings, "auth0_base", "tiktok_client_key", "tiktok_client_secret", "public_url")
    if not settings.public_url.startswith("https://"):
        raise AdminError(f"PUBLIC_URL must be https (Auth0 calls the Token URL over the internet), got {settings.public_url!r}")
    api, http = management(settings)
    with http:
        desired = desired_options(settings, use_proxy_authorize)
        existing = api.connection_named(settings.connection_name)
        verb = "would be" if dry_run else "was"
        # Each change is reported once it is written (or, in a dry run, as what would be written).
        if existing is None:
            if not dry_run:
                body = {"name": settings.connection_name, "display_name": "TikTok", "strategy": "oauth2", "options": desired}
                existing = api.call("POST", "/api/v2/connections", body=body)
            out(f"connection {settings.connection_name}: {verb} created (strategy oauth2)")
            out("\n".join(describe_changes({}, desired)))
        else:
            if existing.get("strategy") != "oauth2":
                raise AdminError(f"connection {settings.connection_name} exists with strategy {existing.get('strategy')!r}, not oauth2")
            options = existing.get("options") or {}
            merged = merge_options(options, desired)
            if merged == options:
                out(f"connection {settings.connection_name} ({existing['id']}): already up to date")
            else:
                if not dry_run:
                    api.call("PATCH", f"/api/v2/connections/{existing['id']}", body={"options": merged})
                out(f"connection {settings.connection_name} ({existing['id']}): {verb} updated")
                out("\n".join(describe_changes(options, merged)))
        if settings.app_client_ids and existing is None:  # a dry run of a connection not created yet
            out(f"enable for applications {', '.join(settings.app_client_ids)}: would be done")
        elif settings.app_client_ids:
            enabled = set(api.enabled_clients(existing["id"]))
            missing = [client for client in settings.app_client_ids if client not in enabled]
            if missing:
                if not dry_run:
                    changes = [{"client_id": client, "status": True} for client in missing]
                    api.call("PATCH", f"/api/v2/connections/{existing['id']}/clients", body=changes)
                out(f"enable for applications {', '.join(missing)}: {'would be done' if dry_run else 'done'}")
            else:
                out(f"already enabled for applications {', '.join(settings.app_client_ids)}")
        if dry_run:
            out("dry run: nothing was written")


# -------------------------------------------------------------------------------------- doctor


@dataclass
class Finding:
    level: str  # ok, warning or problem
    what: str
    fix: str = ""


def doctor(settings: AdminSettings, out: Callable[[str], None], environ: Mapping[str, str] | None = None) -> bool:
    """Print one line per check; True when nothing is a problem."""
    try:
        proxy_settings: proxy.Settings | None = proxy.load_settings(environ)
        findings = list(check_proxy_configuration(proxy_settings))
    except proxy.ConfigError as err:
        proxy_settings = None
        findings = [Finding("problem", f"the proxy's configuration does not load: {err}", "fix the variable named")]
    findings += check_public_url(settings)
    findings += check_redirect_uri(settings)
    findings += check_connection(settings, proxy_settings)
    for finding in findings:
        line = f"{finding.level:<8} {finding.what}"
        out(line + (f"\n         fix: {finding.fix}" if finding.fix else ""))
    problems = sum(f.level == "problem" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    out(f"{problems} problem(s), {warnings} warning(s)")
    return problems == 0


def check_proxy_configuration(settings: proxy.Settings) -> Iterable[Finding]:
    yield Finding("ok", "the proxy's configuration loads")
    for name, url in (("TIKTOK_TOKEN_URL", settings.token_url), ("TIKTOK_REVOKE_URL", settings.revoke_url)):
        parts = urlsplit(url)
        if parts.scheme != "https":
            yield Finding("warning", f"{name} is {url}: plain http, fine for a local stand-in only")
        elif not parts.path.endswith("/"):
            yield Finding("problem", f"{name} has no trailing slash", "TikTok answers 404 \"Unsupported path(Janus)\" without it")
        else:
            yield Finding("ok", f"{name} is https with its trailing slash")
    if not settings.allowed_client_keys:
        yield Finding("warning", "ALLOWED_CLIENT_KEYS is empty: the proxy relays for any client key", "set it to your TikTok client key")


def check_public_url(settings: AdminSettings) -> Iterable[Finding]:
    if not settings.public_url:
        yield Finding("warning", "PUBLIC_URL is not set: cannot check that Auth0 can reach the proxy", "set it to the https address (e.g. ngrok's)")
        return
    if not settings.public_url.startswith("https://"):
        yield Finding("problem", f"PUBLIC_URL {settings.public_url} is not https", "Auth0 calls the Token URL over the internet: use https")
    try:
        response = httpx.get(f"{settings.public_url}/healthz", timeout=10, follow_redirects=False)
        healthy = response.status_code == 200 and response.json().get("status") == "ok"
    except (httpx.HTTPError, ValueError, AttributeError):
        healthy = False
    if healthy:
        yield Finding("ok", f"the proxy answers at {settings.public_url}/healthz")
    else:
        yield Finding("problem", f"nothing healthy answers at {settings.public_url}/healthz", "start the proxy and the tunnel (ngrok http 3333)")


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


def check_connection(settings: AdminSettings, proxy_settings: proxy.Settings | None) -> Iterable[Finding]:
    if not settings.auth0_base or not (settings.mgmt_token or settings.mgmt_client_id):
        yield Finding("warning", "no Auth0 Management API credentials: the connection was not checked")
        return
    api, http = management(settings)
    with http:
        try:
            connection = api.connection_named(settings.connection_name)
            if connection is None:
                yield Finding("problem", f"Auth0 has no connection named {settings.connection_name}", "run: python proxy.py setup-auth0")
                return
            enabled = api.enabled_clients(connection["id"])
        except AdminError as err:
            yield Finding("problem", str(err))
            return
    allowed = proxy_settings.allowed_client_keys if proxy_settings else frozenset()
    yield from check_connection_options(settings, connection.get("options") or {}, allowed)
    if enabled:
        yield Finding("ok", f"the connection is enabled for {len(enabled)} application(s)")
    else:
        yield Finding("problem", "the connection is enabled for no application", "enable it under the connection's Applications tab, or setup-auth0 --app")


def check_connection_options(settings: AdminSettings, options: Mapping[str, Any], allowed: frozenset[str]) -> Iterable[Finding]:
    token_url = str(options.get("tokenURL", ""))
    authorize_url = str(options.get("authorizationURL", ""))
    expected = f"{settings.public_url}/proxy/token" if settings.public_url else None
    if expected and token_url.rstrip("/") == expected:
        yield Finding("ok", "the Token URL points at this proxy")
    elif not expected and token_url.rstrip("/").endswith("/proxy/token"):
        yield Finding("ok", f"the Token URL is a proxy's: {token_url}")
    else:
        yield Finding("problem", f"the Token URL is {token_url or '(unset)'}", f"set it to {expected or 'https://<proxy>/proxy/token'}")

    via_proxy = authorize_url.rstrip("/").endswith("/proxy/authorize")
    if "tiktok.com/auth/authorize" in authorize_url or "open-api.tiktok.com" in authorize_url:
        yield Finding("problem", f"the Authorization URL {authorize_url} is TikTok's retired v1", f"use {proxy.DEFAULT_AUTHORIZE_URL}")
    elif via_proxy or "/v2/auth/authorize" in authorize_url:
        yield Finding("ok", "the Authorization URL is v2" + (" (through the proxy)" if via_proxy else ""))
    else:
        yield Finding("problem", f"the Authorization URL {authorize_url or '(unset)'} is not TikTok's v2 one", f"use {proxy.DEFAULT_AUTHORIZE_URL}")

    client_key = ((options.get("upstream_params") or {}).get("client_key") or {}).get("value")
    if client_key or via_proxy:
        yield Finding("ok", "TikTok gets client_key on the authorize page" + (" (upstream_params)" if client_key else " (the proxy adds it)"))
    else:
        yield Finding("problem", "nothing adds client_key to the authorize request", "run setup-auth0, or use the proxy's /proxy/authorize")

    scope = options.get("scope")
    if isinstance(scope, str) and " " in scope.strip() and not options.get("useOauthSpecScope"):
        yield Finding("problem", f"the scopes {scope!r} are space-separated", "TikTok wants commas: user.info.basic,user.info.profile")
    else:
        yield Finding("ok", f"the scopes are {scope!r}")

    script = str((options.get("scripts") or {}).get("fetchUserProfile", ""))
    if " ".join(script.split()) == " ".join(PROFILE_SCRIPT.read_text().split()):
        yield Finding("ok", "the Fetch User Profile script is the shipped one")
    elif "res.data.user" in script:
        yield Finding("problem", "the Fetch User Profile script is the one from Auth0's guide, which always fails", "run setup-auth0")
    else:
        yield Finding("warning", "the Fetch User Profile script is not the shipped one", "compare with auth0/fetch-user-profile.js")

    if allowed and options.get("client_id") not in allowed:
        yield Finding("problem", "the connection's Client ID is not in ALLOWED_CLIENT_KEYS: the proxy would refuse every login", "add it")


# ------------------------------------------------------------------------------------- the CLI


def run_command(args: argparse.Namespace) -> int:
    """Run `setup-auth0`, `doctor` or `revoke-user`; the exit status."""
    settings = None
    try:
        settings = load_admin_settings(vars(args))
        if args.command == "setup-auth0":
            setup_auth0(settings, dry_run=args.dry_run, use_proxy_authorize=args.use_proxy_authorize, out=print)
        elif args.command == "doctor":
            return 0 if doctor(settings, print) else 1
        elif args.command == "revoke-user":
            revoke_user(settings, args.user_id, delete_user=args.delete_user, force=args.force, out=print)
    except (AdminError, proxy.ConfigError) as err:
        print(f"tiktok-token-proxy: {proxy.redact(str(err), settings.secrets() if settings else [])}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------- revoke-user


def revoke_user(settings: AdminSettings, user_id: str, *, delete_user: bool, force: bool, out: Callable[[str], None]) -> None:
    require(settings, "auth0_base", "tiktok_client_key", "tiktok_client_secret")
    proxy_settings = proxy.load_settings()
    api, http = management(settings)
    with http:
        path = f"/api/v2/users/{quote(user_id, safe='')}"
        user = api.call("GET", path)
        identity = next(
            (i for i in (user or {}).get("identities", []) if i.get("connection") == settings.connection_name), None
        )
        if identity is None:
            raise AdminError(f"user {user_id} has no identity from the {settings.connection_name} connection")
        out(f"user {user_id}: TikTok identity {identity.get('user_id', '?')}")
        access_token, refresh_token = identity.get("access_token"), identity.get("refresh_token")
        if not access_token and not refresh_token:
            raise AdminError("Auth0 returned no TikTok token for this user: grant the Management API app read:user_idp_tokens")
        failure = asyncio.run(revoke_at_tiktok(settings, proxy_settings, access_token, refresh_token, out))
        if failure is None:
            out("revoked: the app no longer appears in the user's TikTok app permissions")
        elif not (delete_user and force):
            raise AdminError(f"the revoke failed: {failure}" + (" (the Auth0 user was not deleted; --force deletes anyway)" if delete_user else ""))
        else:
            out(f"the revoke failed: {failure}; deleting anyway (--force)")
        if delete_user:
            api.call("DELETE", path)
            out(f"deleted Auth0 user {user_id}")


async def revoke_at_tiktok(
    settings: AdminSettings,
    proxy_settings: proxy.Settings,
    access_token: str | None,
    refresh_token: str | None,
    out: Callable[[str], None],
) -> str | None:
    """Revoke through the same code the proxy's routes use. None on success, else what went wrong."""
    client = proxy.UpstreamClient(max_body=proxy.MAX_UPSTREAM_BYTES)
    key, secret = settings.tiktok_client_key, settings.tiktok_client_secret

    async def call(to: proxy.Relay, params: dict[str, str]) -> dict[str, Any]:
        form = to.build_form(params, key, secret)
        reply = await proxy.post_form(client, to.url(proxy_settings), form, proxy_settings.timeout)
        return to.answer(reply, form)

    try:
        if access_token:
            try:
                await call(proxy.REVOKE, {"token": access_token})
                return None
            except proxy.OAuthError as err:
                if not (refresh_token and 400 <= err.status < 500 and err.status != 429):
                    return describe(err)
                out(f"TikTok refused the stored access token ({err.error}); refreshing it first")
        if not refresh_token:
            return "no access token and no refresh token to revoke with"
        try:
            fresh = await call(proxy.TOKEN, {"grant_type": "refresh_token", "refresh_token": refresh_token})
            await call(proxy.REVOKE, {"token": fresh["access_token"]})
        except proxy.OAuthError as err:
            return describe(err)
        out("refreshed the access token and revoked the fresh one")
        return None
    finally:
        await client.aclose()


def describe(err: proxy.OAuthError) -> str:
    return f"{err.status} {err.error}: {err.description}" + (f" (log_id {err.log_id})" if err.log_id else "")

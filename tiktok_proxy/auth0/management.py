"""The commands' settings and a thin Management API client."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import is_loopback, load_dotenv_from_working_directory, own_client, split_scopes
from ..logs import redact

MANAGEMENT_SCOPES = (
    "read:connections create:connections update:connections read:users read:user_idp_tokens delete:users"
)


class AdminError(Exception):
    """A failure the command reports in one line and exits non-zero for."""


@dataclass
class AdminSettings:
    auth0_base: str = ""  # https://tenant.eu.auth0.com, or a full base URL such as http://127.0.0.1:8123
    mgmt_client_id: str = ""
    mgmt_client_secret: str = field(default="", repr=False)
    mgmt_token: str = field(default="", repr=False)
    tiktok_client_key: str = ""
    tiktok_client_secret: str = field(default="", repr=False)
    public_url: str = ""
    scopes: str = "user.info.basic"
    connection_name: str = "tiktok"
    app_client_ids: list[str] = field(default_factory=list)
    redirect_uri: str = ""  # what is registered at TikTok; defaults to https://<AUTH0_DOMAIN>/login/callback
    # PROXY_SECRET's first value: the one setup-auth0 writes into the connection (the others are still accepted).
    proxy_secret: str = field(default="", repr=False)

    def secrets(self) -> list[str]:
        return [
            s for s in (self.mgmt_client_secret, self.mgmt_token, self.tiktok_client_secret, self.proxy_secret) if s
        ]


def load_admin_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> AdminSettings:
    """From the environment and `.env`; command-line flags (`overrides`) win."""
    if environ is None:
        load_dotenv_from_working_directory()
        environ = os.environ
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "", [])}

    def get(name: str, default: str = "") -> str:
        return environ.get(name, "").strip() or default

    domain = overrides.get("domain") or get("AUTH0_DOMAIN")
    # The same reading as the proxy's (config.py): the pair, or neither.
    tiktok_client_key, tiktok_client_secret = own_client(get("TIKTOK_CLIENT_KEY"), get("TIKTOK_CLIENT_SECRET"))
    settings = AdminSettings(
        auth0_base=auth0_base_url(domain) if domain else "",
        mgmt_client_id=get("AUTH0_MGMT_CLIENT_ID"),
        mgmt_client_secret=get("AUTH0_MGMT_CLIENT_SECRET"),
        mgmt_token=get("AUTH0_MGMT_TOKEN"),
        tiktok_client_key=tiktok_client_key,
        tiktok_client_secret=tiktok_client_secret,
        public_url=(overrides.get("public_url") or get("PUBLIC_URL")).rstrip("/"),
        scopes=",".join(split_scopes(get("TIKTOK_SCOPES", "user.info.basic"))),
        connection_name=overrides.get("connection") or get("AUTH0_CONNECTION_NAME", "tiktok"),
        app_client_ids=overrides.get("app") or [a.strip() for a in get("AUTH0_APP_CLIENT_IDS").split(",") if a.strip()],
        redirect_uri=get("TIKTOK_REDIRECT_URI"),
        proxy_secret=next((value.strip() for value in get("PROXY_SECRET").split(",") if value.strip()), ""),
    )
    if not settings.redirect_uri and settings.auth0_base:
        settings.redirect_uri = f"https://{urlsplit(settings.auth0_base).hostname}/login/callback"
    return settings


def auth0_base_url(domain: str) -> str:
    """A bare domain means https; a full base URL (how the tests reach a stand-in) is used as it is."""
    base = domain.strip().rstrip("/")
    if "://" not in base:
        return f"https://{base}"
    parts = urlsplit(base)
    # The commands send the Management API's client secret there: in the clear only to this machine.
    if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        raise AdminError(f"AUTH0_DOMAIN must be https (http only for localhost), got {base}")
    return base


def require(settings: AdminSettings, *names: str) -> None:
    variables = {
        "auth0_base": "AUTH0_DOMAIN", "tiktok_client_key": "TIKTOK_CLIENT_KEY",
        "tiktok_client_secret": "TIKTOK_CLIENT_SECRET", "public_url": "PUBLIC_URL",
    }  # fmt: skip
    for name in names:
        if not getattr(settings, name):
            raise AdminError(f"{variables[name]} is not set (environment, .env or flag)")
    if not settings.mgmt_token and not (settings.mgmt_client_id and settings.mgmt_client_secret):
        raise AdminError(
            "set AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET (a machine-to-machine app), or AUTH0_MGMT_TOKEN"
        )


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
        detail = detail if isinstance(detail, dict) else {}
        message = str(detail.get("message") or detail.get("error_description") or detail.get("error") or "").strip()
        message = redact(message, self.settings.secrets())[:300]
        where = f"Auth0 refused {method} {path.split('?')[0]}"
        if response.status_code == 401:
            return (
                f"{where} (401 {message}): check AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET, or AUTH0_MGMT_TOKEN"
            )
        if response.status_code == 403:
            return f"{where} (403 {message}): grant the Management API app these scopes: {MANAGEMENT_SCOPES}"
        if response.status_code == 409:
            return (
                f"{where} (409 {message}): a connection with that name exists; set AUTH0_CONNECTION_NAME or remove it"
            )
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
        """Every enabled application, following the checkpoint pagination (`take`, then `from` = `next`)."""
        clients: list[str] = []
        params = {"take": "100"}
        for _ in range(1000):  # a bound, in case a broken `next` never ends
            page = self.call("GET", f"/api/v2/connections/{connection_id}/clients", params=params) or {}
            clients += [c["client_id"] for c in page.get("clients", []) if c.get("client_id")]
            cursor = page.get("next")
            if not cursor or not page.get("clients"):
                return clients
            params = {"take": "100", "from": str(cursor)}
        raise AdminError(f"Auth0 kept paging the applications of connection {connection_id}")


def management(settings: AdminSettings, timeout: float = 15) -> tuple[ManagementAPI, httpx.Client]:
    # A command run from a laptop honors HTTPS_PROXY and SSL_CERT_FILE, as other command-line tools do.
    http = httpx.Client(timeout=timeout, follow_redirects=False)
    return ManagementAPI(settings, http), http

"""A local stand-in for Auth0's login through a custom social connection (strategy oauth2).

It reads the connection from the Management API stand-in (tests/stand_ins/auth0_management.py), as `setup-auth0` wrote
it, at every step, and does what Auth0 does with it (docs/auth0.md; Auth0's own guide:
https://auth0.com/docs/authenticate/identity-providers/social-identity-providers/tiktok):

- GET /authorize?connection=…&client_id=<app>&redirect_uri=…&state=…: sends the browser to the
  connection's authorizationURL with response_type=code, client_id, scope (the string as configured),
  redirect_uri=<this tenant>/login/callback, its own state, and the upstream_params.
- GET /login/callback: checks the state; exchanges the code at the tokenURL as passport-oauth2 on node-oauth
  does (a form with client_secret_post, plus customHeaders; any non-2xx is an error read from the body's
  error and error_description; a 2xx without access_token is "Failed to obtain access token"; the other
  fields become `context`); runs scripts.fetchUserProfile under Node.js with `request` as a global; then
  sends the browser back to the application with the profile (user_id oauth2|<connection>|<id>), or with
  `error` and `error_description`.

- Token Vault (`vault`, `refresh`): the tokens of a login are kept per user, and `refresh` renews them at the
  tokenURL as node-oauth does for grant_type=refresh_token (refresh_token in place of code, no redirect_uri),
  WITHOUT customHeaders: Auth0 does not document whether Token Vault sends them, so the stand-in takes the worst
  case. A refresh token in the answer replaces the stored one (TikTok rotates them).
- `purpose=connected_accounts` on /authorize adds "openid profile offline_access" to the connection's scopes, as
  Auth0's Connected Accounts asks for them (how Auth0 joins them is not documented: a space here).

What the browser and the profile script reach is local: `hosts` maps a public origin (TikTok's) to a local
stand-in, like an /etc/hosts entry, for the authorize redirect and for the script's `request`.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from stand_ins.auth0_management import Auth0StandIn

# The `request` module Auth0 gives the script as a global, shared with tests/js (public origins -> local ones).
REQUEST_STAND_IN = Path(__file__).resolve().parent.parent / "js" / "request-stand-in.cjs"

# Runs a Fetch User Profile script as Auth0 does: compiled as a function in a sandbox where `request` is a
# global (never required), called with (accessToken, context, callback). Input and output are JSON.
NODE_RUNNER = r"""
const vm = require('node:vm');
const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
const request = require(input.requestStandIn).requestStandIn(input.hosts);

const report = (outcome) => process.stdout.write(JSON.stringify(outcome));
process.on('uncaughtException', (err) => report({ error: String(err) }));  // e.g. a TypeError in a callback
const fetchUserProfile = vm.runInNewContext('(' + input.script + '\n)', { request });
fetchUserProfile(input.accessToken, input.context, (err, profile) =>
  report(err ? { error: String((err && err.message) || err) } : { profile })
);
"""


class LoginError(Exception):
    """What Auth0 reports to the application: an OAuth error code and its description."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code


@dataclass
class Transaction:
    connection: str
    app_redirect_uri: str
    app_state: str


@dataclass
class Auth0LoginStandIn:
    management: Auth0StandIn
    hosts: dict[str, str]  # public origin -> local origin
    ca_file: str  # the CA the proxy's certificate is issued by
    transactions: dict[str, Transaction] = field(default_factory=dict)  # our state -> the app's request
    vault: dict[str, dict[str, str]] = field(default_factory=dict)  # user_id -> connection, access and refresh token

    def connection(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.management.connections.values() if c["name"] == name), None)

    def local(self, url: str) -> str:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        return self.hosts[origin] + url[len(origin) :] if origin in self.hosts else url

    def authorize(self, request: Request) -> Response:
        query = request.query_params
        name, app, redirect_uri = query.get("connection", ""), query.get("client_id", ""), query["redirect_uri"]
        connection = self.connection(name)
        if connection is None or app not in self.management.enabled.get(connection["id"], set()):
            description = f"the connection {name} is not enabled for this application"
            return back(redirect_uri, query.get("state", ""), error="invalid_request", error_description=description)
        options = connection["options"]
        state = secrets.token_urlsafe(16)
        self.transactions[state] = Transaction(name, redirect_uri, query.get("state", ""))
        scope = options.get("scope", "")
        if isinstance(scope, list):
            scope = (" " if options.get("useOauthSpecScope") else ",").join(scope)
        if query.get("purpose") == "connected_accounts":
            scope = f"{scope} openid profile offline_access"
        params = {
            "response_type": "code",
            "client_id": options["client_id"],
            "redirect_uri": f"{request.base_url}login/callback",
            "scope": scope,
            "state": state,
        }
        for param, how in (options.get("upstream_params") or {}).items():
            value = how.get("value", query.get(how.get("alias", "")))
            if value is not None:
                params[param] = value
        url = self.local(options["authorizationURL"])
        return RedirectResponse(f"{url}{'&' if '?' in url else '?'}{urlencode(params)}", status_code=302)

    def callback(self, request: Request) -> Response:
        query = request.query_params
        transaction = self.transactions.pop(query.get("state", ""), None)
        if transaction is None:
            return PlainTextResponse("Invalid state", status_code=403)  # Auth0's own error page
        app = (transaction.app_redirect_uri, transaction.app_state)
        if "error" in query:  # e.g. access_denied when the user cancels on TikTok's page
            return back(*app, error=query["error"], error_description=query.get("error_description", ""))
        options = (self.connection(transaction.connection) or {}).get("options", {})
        try:
            tokens = self.exchange(options, query.get("code", ""), f"{request.base_url}login/callback")
            access_token, context = tokens.pop("access_token"), tokens
            refresh_token = context.pop("refresh_token", None)
            profile = self.fetch_user_profile(options["scripts"]["fetchUserProfile"], access_token, context)
        except LoginError as err:
            return back(*app, error=err.code, error_description=str(err))
        user = {**profile, "user_id": f"oauth2|{transaction.connection}|{profile['user_id']}"}
        if refresh_token:
            self.vault[user["user_id"]] = {
                "connection": transaction.connection, "access_token": access_token, "refresh_token": refresh_token,
            }  # fmt: skip
        return back(*app, profile=json.dumps(user))

    def exchange(self, options: dict[str, Any], code: str, redirect_uri: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri,
            "client_id": options["client_id"],
            "client_secret": options["client_secret"],
            "code": code,
        }
        return self.token_request(options, form, headers=options.get("customHeaders") or {})

    def refresh(self, user_id: str) -> str:
        """Token Vault renewing a user's TikTok access token through the connection: the new access token."""
        stored = self.vault[user_id]
        options = (self.connection(stored["connection"]) or {}).get("options", {})
        form = {
            "grant_type": "refresh_token",
            "client_id": options["client_id"],
            "client_secret": options["client_secret"],
            "refresh_token": stored["refresh_token"],
        }
        tokens = self.token_request(options, form, headers={})  # no customHeaders: see the module's docstring
        stored["access_token"] = tokens["access_token"]
        stored["refresh_token"] = tokens.get("refresh_token") or stored["refresh_token"]
        return stored["access_token"]

    def token_request(self, options: dict[str, Any], form: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
        """POST to the connection's tokenURL and read the answer as passport-oauth2 on node-oauth does."""
        with httpx.Client(verify=ssl.create_default_context(cafile=self.ca_file), timeout=10) as http:
            response = http.post(options["tokenURL"], data=form, headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = dict(parse_qsl(response.text))  # node-oauth's fallback: a query string
        body = body if isinstance(body, dict) else {}
        if not (200 <= response.status_code < 300 or response.status_code in (301, 302)):
            if "error" in body:  # passport-oauth2's TokenError
                raise LoginError(body["error"], body.get("error_description") or "")
            raise LoginError("server_error", "Failed to obtain access token")
        if not body.get("access_token"):
            raise LoginError("server_error", "Failed to obtain access token")
        return body

    def fetch_user_profile(self, script: str, access_token: str, context: dict[str, Any]) -> dict[str, Any]:
        run = subprocess.run(
            ["node", "-e", NODE_RUNNER],
            input=json.dumps(
                {
                    "script": script,
                    "accessToken": access_token,
                    "context": context,
                    "hosts": self.hosts,
                    "requestStandIn": str(REQUEST_STAND_IN),
                }
            ),
            capture_output=True,
            text=True,
            timeout=20,
        )
        if run.returncode != 0 or not run.stdout:
            raise LoginError("server_error", f"the Fetch User Profile script crashed: {run.stderr.strip()[-300:]}")
        outcome = json.loads(run.stdout)
        if "error" in outcome:
            raise LoginError("server_error", outcome["error"])
        if not outcome["profile"].get("user_id"):
            raise LoginError("server_error", "the profile has no user_id")
        return outcome["profile"]

    def app(self) -> Starlette:
        """The tenant: the Management API stand-in's routes and the login routes, on one origin."""
        login = [Route("/authorize", self.authorize), Route("/login/callback", self.callback)]
        return Starlette(routes=[*self.management.app().routes, *login])


def back(redirect_uri: str, state: str, **params: str) -> Response:
    return RedirectResponse(f"{redirect_uri}?{urlencode({**params, 'state': state})}", status_code=302)

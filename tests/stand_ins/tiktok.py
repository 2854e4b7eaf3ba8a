"""A local stand-in for TikTok's v2 token endpoint, quirks included (docs/tiktok-quirks.md).
It also has the authorize page (a consent page with Authorize and Cancel) and the user-info endpoint,
for the browser journeys (tests/test_login_journey.py).

By default it behaves like TikTok: form bodies only, `client_key` (not `client_id`), single-use codes,
rotating refresh tokens, flat `{error, error_description, log_id}` errors with HTTP 200, and
404 "Unsupported path(Janus)" without the trailing slash. A test can replace that with a `fault`:
any ASGI response (HTML 500, a redirect, a slow drip, silence).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from html import escape
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

TOKEN_PATH = "/v2/oauth/token/"
REVOKE_PATH = "/v2/oauth/revoke/"
CLIENT_KEY = "aw1testclientkey"
CLIENT_SECRET = "s3cr3t-Client-Secret-value"
REDIRECT_URI = "https://tenant.example.auth0.com/login/callback"
AUTHORIZE_PATH = "/v2/auth/authorize/"
USER_INFO_PATH = "/v2/user/info/"
GRANTED_SCOPE = "user.info.basic,user.info.profile"  # what a code is worth when a test issues it directly
# The user who logs in, and the fields each scope unlocks (as tests/js/fetch-user-profile.test.mjs has them).
USER = {
    "open_id": "afd97af1-b87b-48b9-ac98-410aghda5344",
    "union_id": "c9c60f44-a68e-4f5d-84dd-ce22faeb0ba1",
    "avatar_url": "https://p16.example/avatar.jpeg",
    "avatar_url_100": "https://p16.example/avatar100.jpeg",
    "avatar_large_url": "https://p16.example/avatar-large.jpeg",
    "display_name": "Ada on TikTok",
    "username": "ada",
    "bio_description": "hello",
    "profile_deep_link": "https://www.tiktok.com/@ada",
    "is_verified": False,
}
SCOPE_FIELDS = {
    "user.info.basic": {"open_id", "union_id", "avatar_url", "avatar_url_100", "avatar_large_url", "display_name"},
    "user.info.profile": {"username", "bio_description", "profile_deep_link", "is_verified"},
}


@dataclass
class Seen:
    """One request as TikTok received it."""

    path: str
    headers: list[tuple[str, str]]
    form: dict[str, list[str]]

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


@dataclass
class IssuedCode:
    client_key: str
    redirect_uri: str
    code_verifier: str | None
    scope: str = GRANTED_SCOPE


@dataclass
class TikTokStandIn:
    clients: dict[str, str] = field(default_factory=lambda: {CLIENT_KEY: CLIENT_SECRET})
    codes: dict[str, IssuedCode] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh token -> client key
    access_tokens: dict[str, str] = field(default_factory=dict)  # access token -> client key
    token_scopes: dict[str, str] = field(default_factory=dict)  # access token -> granted scopes (user info)
    redirect_uris: set[str] = field(default_factory=lambda: {REDIRECT_URI})  # registered in the portal
    consents: dict[str, dict[str, str]] = field(default_factory=dict)  # consent pages shown, not yet answered
    expired: set[str] = field(default_factory=set)  # access tokens past their expires_in
    revoked: list[str] = field(default_factory=list)
    revoke_body: bytes = b""  # TikTok documents an empty answer; `{}` is the other reading
    seen: list[Seen] = field(default_factory=list)
    error_status: int = 200  # quirk Q4: TikTok has answered OAuth errors with HTTP 200
    fault: Callable[[], Response] | None = None
    user_info_fault: Callable[[], Response] | None = None  # the same, for the user-info endpoint alone
    token_delay: float = 0.0  # seconds the token endpoint thinks before it answers (as TikTok, under load)

    def reset(self) -> None:
        self.codes.clear()
        self.refresh_tokens.clear()
        self.access_tokens.clear()
        self.token_scopes.clear()
        self.redirect_uris = {REDIRECT_URI}
        self.consents.clear()
        self.expired.clear()
        self.revoked.clear()
        self.revoke_body = b""
        self.seen.clear()
        self.error_status = 200
        self.fault = None
        self.user_info_fault = None
        self.token_delay = 0.0

    def issue_code(
        self, *, redirect_uri: str = REDIRECT_URI, code_verifier: str | None = None, scope: str = GRANTED_SCOPE
    ) -> str:
        """A code as TikTok's callback would carry it: with characters such as * and ! (quirk Q7)."""
        code = f"code*{secrets.token_urlsafe(12)}!3_{secrets.token_hex(4)}"
        self.codes[code] = IssuedCode(CLIENT_KEY, redirect_uri, code_verifier, scope)
        return code

    def issue_refresh_token(self) -> str:
        token = f"rft.{secrets.token_urlsafe(24)}"
        self.refresh_tokens[token] = CLIENT_KEY
        return token

    # ---- the endpoint

    async def receive(self, request: Request) -> tuple[dict[str, str], Response | None]:
        """Record the request, then check what every TikTok OAuth endpoint checks first."""
        body = await request.body()
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        self.seen.append(Seen(request.url.path, raw_headers, form))
        params = {name: values[0] for name, values in form.items()}
        if self.fault is not None:
            return params, self.fault()
        content_types = [v for k, v in raw_headers if k == "content-type"]
        if content_types != ["application/x-www-form-urlencoded"]:  # quirk Q3
            return params, self.error(
                "invalid_request", "Only `application/x-www-form-urlencoded` is accepted as Content-Type."
            )
        client_key = params.get("client_key")
        if not client_key:
            return params, self.error("invalid_request", "The request parameters are malformed.")
        if "client_secret" not in params:
            return params, self.error("invalid_request", "Client secret is missed in request.")
        if self.clients.get(client_key) != params["client_secret"]:
            return params, self.error("invalid_client", "Client key or secret is incorrect.")
        return params, None

    async def token(self, request: Request) -> Response:
        params, refusal = await self.receive(request)
        await asyncio.sleep(self.token_delay)
        if refusal is not None:
            return refusal
        client_key = params["client_key"]
        grant = params.get("grant_type")
        if grant == "authorization_code":
            return self.exchange_code(client_key, params)
        if grant == "refresh_token":
            return self.refresh(client_key, params)
        if grant == "client_credentials":
            return self.tokens(
                {"access_token": f"clt.{secrets.token_urlsafe(24)}", "expires_in": 7200, "token_type": "Bearer"}
            )
        return self.error("unsupported_grant_type", "Grant type is not supported.")

    def exchange_code(self, client_key: str, params: dict[str, str]) -> Response:
        issued = self.codes.pop(params.get("code", ""), None)  # single use
        if issued is None or issued.client_key != client_key:
            return self.error("invalid_grant", "Authorization code is expired.")
        if params.get("redirect_uri") != issued.redirect_uri:
            return self.error("invalid_request", "Redirect_uri is not matched with the uri when requesting code.")
        if issued.code_verifier is not None and params.get("code_verifier") != issued.code_verifier:
            return self.error("invalid_grant", "Code verifier or code challenge is invalid.")
        return self.user_tokens(client_key, issued.scope)

    def refresh(self, client_key: str, params: dict[str, str]) -> Response:
        if self.refresh_tokens.pop(params.get("refresh_token", ""), None) != client_key:  # rotates (quirk Q8)
            return self.error("invalid_grant", "Refresh token is invalid or expired.")
        return self.user_tokens(client_key)

    async def revoke(self, request: Request) -> Response:
        params, refusal = await self.receive(request)
        if refusal is not None:
            return refusal
        token = params.get("token", "")
        if token in self.expired or self.access_tokens.get(token) != params["client_key"]:
            return self.error("invalid_request", "Access token is invalid or expired.")
        del self.access_tokens[token]
        self.revoked.append(token)
        return Response(self.revoke_body, media_type="application/json")

    def issue_access_token(self) -> str:
        token = f"act.{secrets.token_urlsafe(24)}"
        self.access_tokens[token] = CLIENT_KEY
        return token

    def user_tokens(self, client_key: str, scope: str = GRANTED_SCOPE) -> Response:
        refresh_token = f"rft.{secrets.token_urlsafe(24)}"
        self.refresh_tokens[refresh_token] = client_key
        access_token = f"act.{secrets.token_urlsafe(24)}"
        self.access_tokens[access_token] = client_key
        self.token_scopes[access_token] = scope
        return self.tokens(
            {
                "access_token": access_token,
                "expires_in": 86400,
                "open_id": USER["open_id"],
                "refresh_expires_in": 31536000,
                "refresh_token": refresh_token,
                "scope": scope,
                "token_type": "Bearer",
            }
        )

    def tokens(self, body: dict[str, object]) -> Response:
        return JSONResponse(body, headers={"x-tt-logid": new_log_id()})

    def error(self, error: str, description: str) -> Response:
        body = {"error": error, "error_description": description, "log_id": new_log_id()}
        return JSONResponse(body, status_code=self.error_status)

    # ---- the authorize page and user info, for a browser

    def authorize_problem(self, query: dict[str, str]) -> str | None:
        """The parameter TikTok's authorize page asks to correct, if any (quirks Q1 and Q2)."""
        if self.clients.get(query.get("client_key", "")) is None:  # client_id alone is not enough
            return "client_key"
        if query.get("response_type") != "code":
            return "response_type"
        if query.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri"
        scopes = query.get("scope", "").split(",")
        if not all(scope in SCOPE_FIELDS for scope in scopes):  # space-separated scopes are one unknown scope
            return "scope"
        return None

    async def authorize(self, request: Request) -> Response:
        if request.method == "POST":  # a button on the consent page
            answer = {name: values[0] for name, values in parse_qs((await request.body()).decode()).items()}
            asked = self.consents.pop(answer.get("consent", ""), None)
            if asked is None:
                return error_page("consent")
            if answer.get("decision") == "authorize":  # scopes (plural): what the user granted (quirk Q2)
                code = self.issue_code(redirect_uri=asked["redirect_uri"], scope=asked["scope"])
                back = {"code": code, "scopes": asked["scope"]}
            else:
                back = {"error": "access_denied", "error_description": "The user denied the request."}
            back["state"] = asked.get("state", "")
            return RedirectResponse(f"{asked['redirect_uri']}?{urlencode(back)}", status_code=302)
        query = dict(request.query_params)
        problem = self.authorize_problem(query)
        if problem is not None:
            return error_page(problem)
        consent = secrets.token_urlsafe(12)
        self.consents[consent] = query
        scopes = "".join(f"<li>{escape(scope)}</li>" for scope in query["scope"].split(","))
        return HTMLResponse(
            f"<!doctype html><title>TikTok</title><h1>Log in to the app with TikTok</h1><ul>{scopes}</ul>"
            f'<form method="post" action="{AUTHORIZE_PATH}"><input type="hidden" name="consent" value="{consent}">'
            '<button name="decision" value="authorize">Authorize</button>'
            '<button name="decision" value="cancel">Cancel</button></form>'
        )

    async def user_info(self, request: Request) -> Response:
        """GET /v2/user/info/: the resource envelope (quirk Q9), only the fields the token's scopes allow."""
        self.seen.append(Seen(request.url.path, [(k.decode(), v.decode()) for k, v in request.headers.raw], {}))
        if self.user_info_fault is not None:
            return self.user_info_fault()
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        fields = request.query_params.get("fields", "").split(",")
        if token not in self.token_scopes:
            return envelope(401, "access_token_invalid", "The access token is invalid or not found in the request.")
        allowed = set().union(*(SCOPE_FIELDS.get(scope, set()) for scope in self.token_scopes[token].split(",")))
        if not set(fields) <= allowed:
            return envelope(
                400, "scope_permission_missed", "The user did not authorize the scope required for the fields."
            )
        return envelope(200, "ok", "", {"user": {name: USER[name] for name in fields}})

    def app(self) -> Starlette:
        async def janus(request: Request) -> Response:  # quirk Q5
            self.seen.append(Seen(request.url.path, [], {}))
            return PlainTextResponse("Unsupported path(Janus)", status_code=404)

        return Starlette(
            routes=[
                Route(TOKEN_PATH, self.token, methods=["POST"]),
                Route(REVOKE_PATH, self.revoke, methods=["POST"]),
                Route(AUTHORIZE_PATH, self.authorize, methods=["GET", "POST"]),
                Route(USER_INFO_PATH, self.user_info, methods=["GET"]),
                Route("/{path:path}", janus, methods=["GET", "POST"]),
            ]
        )


def new_log_id() -> str:
    """TikTok's shape: a UTC timestamp (yyyymmddHHMMSS), then upper-case hex."""
    return "20261122021854" + secrets.token_hex(10).upper()


def envelope(status: int, code: str, message: str, data: dict[str, object] | None = None) -> Response:
    body = {"data": data or {}, "error": {"code": code, "message": message, "log_id": new_log_id()}}
    return JSONResponse(body, status_code=status)


def error_page(parameter: str) -> Response:
    """TikTok's authorize page refuses a bad request itself, before any redirect."""
    return HTMLResponse(
        f"<!doctype html><title>TikTok</title><h1>Something went wrong</h1>"
        f"<p>Please correct the following: {escape(parameter)}</p>",
        status_code=400,
    )


# ---- faults a test can plug in as `stand_in.fault = ...`


def reply(
    status: int, body: bytes | str | object, content_type: str = "application/json", **headers: str
) -> Callable[[], Response]:
    if not isinstance(body, (bytes, str)):
        return lambda: JSONResponse(body, status_code=status, headers=headers)
    return lambda: Response(body, status_code=status, media_type=content_type, headers=headers)


def drip(body: bytes, seconds_per_byte: float) -> Callable[[], Response]:
    """Headers at once, then the body one byte at a time: per-chunk read timeouts never fire."""

    async def chunks() -> AsyncIterator[bytes]:
        for byte in body:
            await asyncio.sleep(seconds_per_byte)
            yield bytes([byte])

    return lambda: StreamingResponse(chunks(), media_type="application/json")


class _Silent(Response):
    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)


def silence() -> Callable[[], Response]:
    """Accept the request and never answer: not even a status line."""
    return _Silent

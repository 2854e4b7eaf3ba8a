"""A web application that signs its users in with the OpenID Connect facade, through Authlib's Starlette client.

It is the second relying party of the facade's tests (test_oidc_relying_parties.py) and the application of the
browser journey (test_oidc_journey.py). Authlib does what such an app does: discovery, the authorization URL
with PKCE (S256), nonce and state kept in the session, the code grant, the ID token checked against the JWKS
(signature, iss, aud, nonce, exp), userinfo, and a refresh.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from html import escape
from typing import Any

from authlib.integrations.starlette_client import OAuth, OAuthError
from joserfc.errors import JoseError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .app_page import page


def failed(error: str, description: str) -> Response:
    return page(
        "Sign-in failed",
        f'<h1>Sign-in failed</h1><p class="error" id="error"><b>{escape(error)}</b>: {escape(description)}</p>'
        '<p><a href="/">Try again</a></p>',
    )


@dataclass
class AuthlibRelyingParty:
    """Set `issuer` and the client before the first sign-in (the proxy's address is known only once it runs)."""

    issuer: str = ""
    client_id: str = ""
    client_secret: str = ""
    auth_method: str = "client_secret_post"  # or client_secret_basic
    scope: str = "openid profile"
    verify: Any = True  # what its HTTP client trusts: an ssl.SSLContext for a provider under a test CA
    # Authlib keeps one sign-in in flight per session: two applications in one browser need two session cookies.
    session_cookie: str = "session"
    signed_in: list[dict[str, Any]] = field(default_factory=list)  # what each sign-in got, for the tests

    def client(self) -> Any:
        oauth = OAuth()
        return oauth.register(
            "tiktok",
            client_id=self.client_id,
            client_secret=self.client_secret,
            server_metadata_url=f"{self.issuer}/.well-known/openid-configuration",
            client_kwargs={
                "scope": self.scope,
                "code_challenge_method": "S256",
                "token_endpoint_auth_method": self.auth_method,
                "verify": self.verify,
            },
        )

    def app(self) -> Starlette:
        async def home(request: Request) -> Response:
            return page(
                "Acme notes",
                "<h1>Acme notes</h1><p>Sign in to see your notes.</p>"
                '<a class="tiktok" href="/login">Continue with TikTok</a>',
            )

        async def login(request: Request) -> Response:
            response: Response = await self.client().authorize_redirect(request, str(request.url_for("callback")))
            return response

        async def callback(request: Request) -> Response:
            client = self.client()
            try:
                token = await client.authorize_access_token(request)  # checks state, nonce and the ID token
            except OAuthError as err:  # the provider's error, e.g. access_denied after Cancel
                return failed(err.error, err.description or "")
            except JoseError as err:  # an ID token that does not verify (Authlib checks it with joserfc)
                return failed(type(err).__name__, str(err))
            claims = dict(token["userinfo"])  # Authlib's name for the validated ID token claims
            info = dict(await client.userinfo(token=token))
            metadata = await client.load_server_metadata()
            async with client._get_oauth_client() as http:  # Authlib's own OAuth2 client, as the app's backend
                refreshed = await http.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
            again = dict(await client.parse_id_token(refreshed, nonce=None))
            self.signed_in.append({"claims": claims, "userinfo": info, "refreshed": again, "token": dict(token)})
            username = (
                f'<p id="username">@{escape(claims["preferred_username"])} on TikTok</p>'
                if "preferred_username" in claims
                else ""
            )
            return page(
                "Acme notes",
                f'<h1>Welcome to Acme notes</h1><p id="who">Signed in as '
                f"<b>{escape(claims['name'])}</b></p>{username}"
                f'<p class="muted" id="sub">sub {escape(claims["sub"])}, from {escape(claims["iss"])}</p>',
            )

        return Starlette(
            routes=[Route("/", home), Route("/login", login), Route("/callback", callback, name="callback")],
            middleware=[
                Middleware(SessionMiddleware, secret_key=secrets.token_hex(16), session_cookie=self.session_cookie)
            ],
        )

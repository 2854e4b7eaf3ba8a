"""The sign-in state bound to the browser that started it (RFC 9700 §4.7.1, RFC 6749 §10.12).

A sealed state alone would work in any browser for its ten minutes: whoever got hold of a user's pending state
could bring it back with a TikTok code of their own choosing, and the relying party would receive a code that
carries its own user's PKCE challenge and nonce. So /oidc/authorize also sets a cookie, one per sign-in (two
tabs signing in at once each keep theirs), holding a random value that only this browser has; the state carries
the cookie's name and a SHA-256 digest of its value, never the value. The callback refuses a state whose cookie
is absent or different, then expires the cookie, so a state works once, in its own browser.

The cookie: HttpOnly; SameSite=Lax, which a top-level GET from TikTok's page back to the callback carries; the
state's lifetime; and on an https PUBLIC_URL, Secure with the `__Host-` prefix, which browsers accept only from
this exact host over https with Path=/ and no Domain, so a sibling subdomain cannot plant one. That prefix is
why the Path is / and not the callback's path (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from ..errors import invalid_request
from .jose import b64url

SECURE_PREFIX = "__Host-"
NAME = "tiktok-oidc-"  # then a random suffix per sign-in
MAX_IN_FLIGHT = 10  # sign-ins one browser may have open at once; past it the older ones are dropped


@dataclass(frozen=True)
class Binding:
    """A new sign-in's cookie."""

    name: str
    value: str

    @classmethod
    def new(cls, secure: bool) -> Binding:
        name = (SECURE_PREFIX if secure else "") + NAME + secrets.token_urlsafe(6)
        return cls(name, secrets.token_urlsafe(16))

    def sealed(self) -> list[str]:
        """What the state carries: the cookie's name, and a digest its value cannot be derived from."""
        return [self.name, digest(self.value)]

    def set_on(self, request: Request, response: Response, lifetime: int) -> None:
        """Set the cookie for `lifetime` seconds (the state's), after expiring this browser's older ones if it has
        MAX_IN_FLIGHT already: cookies kept for sign-ins nobody finishes must not grow the request head past its cap."""
        pending = [name for name in request.cookies if name.startswith((NAME, SECURE_PREFIX + NAME))]
        if len(pending) >= MAX_IN_FLIGHT:
            for name in pending:
                expire(response, name)
        secure = self.name.startswith(SECURE_PREFIX)
        response.set_cookie(self.name, self.value, lifetime, path="/", secure=secure, httponly=True, samesite="lax")


def check_same_browser(request: Request, sealed: list[str] | None) -> None:
    """Refuse a state that this browser did not start, or has already brought back. (None: a state sealed
    before states were bound, which is refused too.)"""
    name, expected = sealed or ["", ""]
    value = request.cookies.get(name)
    if value is None or not expected or not hmac.compare_digest(digest(value), expected):
        raise invalid_request(
            "the sign-in was not started in this browser, or is already finished: start again from the application"
        )


def expire(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=name.startswith(SECURE_PREFIX), httponly=True, samesite="lax")


def digest(value: str) -> str:
    return b64url(hashlib.sha256(value.encode()).digest())

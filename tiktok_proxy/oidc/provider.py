"""The provider itself: its keys, its sealed values, its discovery document, and the ID tokens it signs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import tiktok
from ..config import Settings
from ..errors import OAuthError
from .claims import PROFILE_CLAIMS, email_claims, profile_claims
from .jose import Signer, jwks, private_key_bytes
from .sealing import Sealer

CALLBACK_PATH = "/oidc/callback"  # PUBLIC_URL + this: the one redirect URI to register at TikTok
STATE_LIFETIME = 600  # seconds for the user to sign in on TikTok's page
CODE_LIFETIME = 60  # seconds for the relying party to redeem its code (RFC 6749 §4.1.2 advises 10 minutes at most)
ID_TOKEN_LIFETIME = 3600


class Provider:
    """What every step shares, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_key is not None
        self.settings = settings
        self.issuer = settings.public_url
        self.callback_url = self.issuer + CALLBACK_PATH
        # The current key signs and seals. The next keys (about to sign, in a rotation) and the previous ones are
        # published and open what they sealed: any instance of a fleet part-way through a rollout, old or new,
        # then verifies and opens what any other made (docs/oidc.md, Key rotation).
        self.signer = Signer.of(settings.oidc_key)
        self.next_signers = [Signer.of(key) for key in settings.oidc_next_keys]
        self.previous_signers = [Signer.of(key) for key in settings.oidc_previous_keys]
        signers = [self.signer, *self.next_signers, *self.previous_signers]
        secrets = [private_key_bytes(signer.key) for signer in signers]
        self.states, self.codes = Sealer("state", secrets), Sealer("code", secrets)
        self.jwks = jwks(signers)
        # TikTok has no email: the facade's made-up one is there only when OIDC_EMAIL_DOMAIN is set.
        email_scope, email = (["email"], ["email", "email_verified"]) if settings.oidc_email_domain else ([], [])
        self.discovery = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/oidc/authorize",
            "token_endpoint": f"{self.issuer}/oidc/token",
            "userinfo_endpoint": f"{self.issuer}/oidc/userinfo",
            "jwks_uri": f"{self.issuer}/oidc/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({signer.alg for signer in signers}),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "scopes_supported": ["openid", "profile", *email_scope, "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "auth_time", *PROFILE_CLAIMS, *email],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }

    def kids(self) -> dict[str, str | None]:
        """The keys in use, by role, for the startup line: which one signs, and which others are published."""
        return {
            "signing_kid": self.signer.kid,
            "next_kids": ",".join(signer.kid for signer in self.next_signers) or None,
            "previous_kids": ",".join(signer.kid for signer in self.previous_signers) or None,
        }

    async def configuration(self, request: Request) -> Response:
        return JSONResponse(self.discovery, headers={"Cache-Control": "public, max-age=3600"})

    async def keys(self, request: Request) -> Response:
        # Short: after a rotation, relying parties must soon see the new key (they also refetch on an unknown kid).
        return JSONResponse(self.jwks, headers={"Cache-Control": "public, max-age=300"})

    def id_token(
        self, user: Mapping[str, Any], client_id: str, nonce: str | None, auth_time: int | None, email: bool
    ) -> str:
        """auth_time: when TikTok sent the user back (OIDC Core §2), known from the sealed code; a refresh has none."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": client_id, "iat": now, "exp": now + ID_TOKEN_LIFETIME}
        if nonce is not None:
            claims["nonce"] = nonce
        if auth_time is not None:
            claims["auth_time"] = auth_time
        return self.signer.sign({**claims, **self.claims(user, email)})

    def claims(self, user: Mapping[str, Any], email: bool) -> dict[str, Any]:
        """The user's claims, in the ID token and from userinfo: sub, the profile, and the made-up email if asked."""
        subject = self.subject(user)
        made_up = email_claims(subject, self.settings.oidc_email_domain) if email else {}
        return {"sub": subject, **profile_claims(user), **made_up}

    def subject(self, user: Mapping[str, Any]) -> str:
        subject = user.get(self.settings.oidc_subject)
        if not isinstance(subject, str) or not subject:
            name = self.settings.oidc_subject
            raise OAuthError(502, "server_error", f"TikTok's user info has no {name} (OIDC_SUBJECT={name})")
        return subject

    async def user(
        self,
        request: Request,
        access_token: str,
        granted: list[str] | None,
        refused: Callable[[OAuthError], OAuthError],
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """TikTok's user object; `refused` turns TikTok's refusal of the token into this endpoint's error.

        By `deadline` (the event loop's clock), or within TIKTOK_TIMEOUT: it bounds every call to TikTok that one
        request makes (user info may take two), so that the drain on SIGTERM, REQUEST_TIMEOUT + TIKTOK_TIMEOUT,
        covers the facade's requests too."""
        timeout = self.settings.timeout
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await tiktok.user_info(request.state.upstream, self.settings, access_token, granted)
        except TimeoutError:
            raise tiktok.timed_out(timeout) from None
        except OAuthError as err:
            if err.status >= 500 or err.status == 429:
                raise
            raise refused(err) from None

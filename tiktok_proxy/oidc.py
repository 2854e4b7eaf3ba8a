"""The OpenID Connect facade: an OpenID provider in front of TikTok Login Kit, for platforms that speak only OIDC.

app.py mounts these routes only when OIDC_SIGNING_KEY_FILE is set:

    GET  /.well-known/openid-configuration  discovery; the issuer is PUBLIC_URL, exactly
    GET  /oidc/jwks                          the public keys: the current one, then the previous ones
    GET  /oidc/authorize                     the relying party's request → TikTok's authorize page
    GET  /oidc/callback                      TikTok's redirect back → the relying party, with a sealed code
    POST /oidc/token                         a sealed code or a refresh token → TikTok's tokens plus an ID token
    GET  /oidc/userinfo (or POST)            a TikTok access token → the user's claims

It keeps no state: what a later step needs travels sealed (sealing.py) in the state sent to TikTok and in the
code given to the relying party, so any instance serves any step. Every TikTok call and quirk stays in tiktok.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from html import escape
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from . import metrics, tiktok
from .config import Settings, split_scopes
from .errors import NO_STORE, OAuthError, invalid_request, missing
from .inbound import (
    CUT_BY_DEADLINE,
    check_allowed,
    client_credentials,
    parse_params,
    parse_query,
    read_body,
    unique_params,
)
from .jose import Signer, b64url, jwks, private_key_bytes
from .logs import log_outcome
from .sealing import Sealer, Unsealable

CALLBACK_PATH = "/oidc/callback"  # PUBLIC_URL + this: the one redirect URI to register at TikTok
STATE_LIFETIME = 600  # seconds for the user to sign in on TikTok's page
CODE_LIFETIME = 60  # seconds for the relying party to redeem its code (RFC 6749 §4.1.2 advises 10 minutes at most)
ID_TOKEN_LIFETIME = 3600
MAX_ECHOED = 512  # characters of state or nonce: both travel inside the URL sent to TikTok

# OpenID scopes → TikTok's. Any other scope is taken as a TikTok scope name and passes through (video.list).
# TikTok has no email or phone, and its refresh token comes with every grant, so offline_access maps to nothing.
SCOPES: dict[str, str | None] = {
    "openid": "user.info.basic",
    "profile": "user.info.profile",
    "email": None,
    "phone": None,
    "address": None,
    "offline_access": None,
}
# Standard claims from TikTok's user fields (tiktok.USER_FIELDS asks for them).
PROFILE_CLAIMS = {
    "name": "display_name",
    "picture": "avatar_url",
    "preferred_username": "username",
    "profile": "profile_deep_link",
}
PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest


class Facade:
    """The provider's keys, its sealed values and its routes, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_key is not None
        self.settings = settings
        self.issuer = settings.public_url
        self.callback_url = self.issuer + CALLBACK_PATH
        keys = [settings.oidc_key, *settings.oidc_previous_keys]
        signers = [Signer.of(key) for key in keys]
        self.signer = signers[0]
        secrets = [private_key_bytes(key) for key in keys]
        self.states, self.codes = Sealer("state", secrets), Sealer("code", secrets)
        self.jwks = jwks(signers)
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
            "scopes_supported": ["openid", "profile", "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", *PROFILE_CLAIMS],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }

    def routes(self) -> list[Route]:
        return [
            Route("/.well-known/openid-configuration", self.configuration, methods=["GET"]),
            Route("/oidc/jwks", self.keys, methods=["GET"]),
            Route("/oidc/authorize", self.authorize, methods=["GET"]),
            Route(CALLBACK_PATH, self.callback, methods=["GET"]),
            Route("/oidc/token", self.token, methods=["POST"]),
            Route("/oidc/userinfo", self.userinfo, methods=["GET", "POST"]),
        ]

    # ------------------------------------------------------------------------------------ documents

    async def configuration(self, request: Request) -> Response:
        return JSONResponse(self.discovery, headers={"Cache-Control": "public, max-age=3600"})

    async def keys(self, request: Request) -> Response:
        # Short: after a rotation, relying parties must soon see the new key (they also refetch on an unknown kid).
        return JSONResponse(self.jwks, headers={"Cache-Control": "public, max-age=300"})

    # ------------------------------------------------------------------------------------ authorize

    async def authorize(self, request: Request) -> Response:
        """The relying party's authorization request, sent on to TikTok with everything it needs sealed in state."""
        client_id = None
        try:
            params = unique_params(parse_query(request.url.query))
            client_id = params.get("client_id")
            if client_id is None:
                raise missing("client_id")
            check_allowed(self.settings, client_id)
            redirect_uri = params.get("redirect_uri")
            if redirect_uri not in self.settings.oidc_redirect_uris:
                # Never redirect to an unknown URI (RFC 6749 §4.1.2.1): an open redirector would leak codes.
                raise invalid_request("redirect_uri is missing or is not one of this provider's OIDC_REDIRECT_URIS")
        except OAuthError as err:
            return refused_page(err, "oidc_authorize", client_id)
        # From here on redirect_uri is trusted: errors go back to it (RFC 6749 §4.1.2.1).
        try:
            scopes = checked_request(params)
        except OAuthError as err:
            back = {"error": err.error, "error_description": err.description}
            return back_to_client(redirect_uri, back, params.get("state"), "oidc_authorize", client_id)
        wanted = mapped_to_tiktok(scopes)
        sealed = {
            "c": client_id,
            "r": redirect_uri,
            "s": params.get("state"),
            "n": params.get("nonce"),
            "pc": params.get("code_challenge"),
            "sc": wanted,
        }
        ask = {"scope": " ".join(wanted), "response_type": "code", "redirect_uri": self.callback_url}
        state = self.states.seal(sealed, STATE_LIFETIME)
        query = tiktok.authorize_query({**ask, "state": state}, client_id, self.settings.scopes)
        finish("oidc_authorize", 302, "redirect", client_id)
        # Only ever the configured TikTok URL: nothing in the request chooses where the browser goes.
        return redirect(f"{self.settings.authorize_url}?{urlencode(query)}")

    # ------------------------------------------------------------------------------------- callback

    async def callback(self, request: Request) -> Response:
        """TikTok's redirect back: to the relying party, with a sealed code or TikTok's error, and its own state.

        The query carries TikTok's authorization code: nothing here logs it (nor the query)."""
        try:
            params = unique_params(parse_query(request.url.query))
            try:
                sealed = self.states.unseal(params.get("state"))
            except Unsealable as why:
                raise invalid_request(f"the sign-in state {why}: start again from the application") from None
        except OAuthError as err:
            return refused_page(err, "oidc_callback", None)
        if "error" not in params and params.get("code"):
            granted = split_scopes(params.get("scopes", "")) or sealed["sc"]  # Q2: scopes, plural
            code = {key: sealed[key] for key in ("c", "r", "n", "pc")}
            back = {"code": self.codes.seal({**code, "t": params["code"], "g": granted}, CODE_LIFETIME)}
        elif "error" in params:  # Cancel on TikTok's page, or a configuration TikTok refused
            error, description = tiktok.callback_error(params)
            back = {"error": error, "error_description": description}
        else:
            back = {"error": "server_error", "error_description": "TikTok redirected back with neither code nor error"}
        return back_to_client(sealed["r"], back, sealed["s"], "oidc_callback", sealed["c"])

    # ---------------------------------------------------------------------------------------- token

    async def token(self, request: Request) -> Response:
        with metrics.in_flight():
            return await self._token(request)

    async def _token(self, request: Request) -> Response:
        started = time.perf_counter()
        fields: dict[str, Any] = {"grant": None, "client_key": None, "upstream_status": None, "log_id": None}
        try:
            params = parse_params(
                request.headers.get("content-type", ""), await read_body(request.headers, request.receive)
            )
            client_key, client_secret = client_credentials(request.headers, params)
            fields["client_key"] = client_key
            check_allowed(self.settings, client_key)
            grant = fields["grant"] = params.get("grant_type")
            nonce: str | None = None
            granted: list[str] | None = None  # None: unknown, so the user info asks for every field
            if grant == "authorization_code":
                sealed = self.redeemable(params, client_key)  # every local check, before TikTok is called
                nonce, granted = sealed["n"], sealed["g"]
                exchange = {"grant_type": grant, "code": sealed["t"], "redirect_uri": self.callback_url}
                form = tiktok.token_form(exchange, client_key, client_secret)
            elif grant == "refresh_token":
                form = tiktok.token_form(params, client_key, client_secret)
            elif grant is None:
                raise missing("grant_type")
            else:
                raise OAuthError(
                    400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
                )
            reply = await tiktok.post_form(request.state.upstream, self.settings.token_url, form, self.settings.timeout)
            fields["upstream_status"], fields["log_id"] = reply.status, reply.log_id
            answer = tiktok.token_answer(reply, form)
            if "scope" in answer:  # what the token is worth, from TikTok itself (else what the callback said)
                granted = split_scopes(answer["scope"])
                answer["scope"] = " ".join(openid_scopes(granted))
            user = await self.user(request, answer["access_token"], granted, refused=server_error)
            answer["id_token"] = self.id_token(user, client_key, nonce)
            response: Response = JSONResponse(answer, headers=NO_STORE)
            outcome = "ok"
        except OAuthError as err:
            response, outcome = err.response(), err.error
            fields["log_id"] = err.log_id or fields["log_id"]
        if getattr(request.state, CUT_BY_DEADLINE, False):
            return response  # serving.py cut the body at REQUEST_TIMEOUT, and has answered 408 and logged it
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        log_outcome(response.status_code, event="oidc_token", outcome=outcome, **fields, duration_ms=duration_ms)
        metrics.exchange("oidc_token", fields["grant"], outcome, response.status_code)
        return response

    def redeemable(self, params: Mapping[str, str], client_key: str) -> dict[str, Any]:
        """The sealed code's contents, once it has passed every check that needs no TikTok call."""
        if "code" not in params:
            raise missing("code")
        try:
            sealed = self.codes.unseal(params["code"])
        except Unsealable as why:
            raise invalid_grant(f"the authorization code {why}") from None
        if sealed["c"] != client_key:
            raise invalid_grant("the authorization code was issued to another client")
        if params.get("redirect_uri") != sealed["r"]:
            raise invalid_grant("redirect_uri differs from the one in the authorization request")
        verifier, challenge = params.get("code_verifier"), sealed["pc"]
        if challenge is None and verifier is not None:
            raise invalid_grant("code_verifier was sent, but the authorization request had no code_challenge")
        if challenge is not None:
            # RFC 7636 S256: base64url, checked here. (TikTok's own PKCE is hex, and its web flow takes none.)
            computed = b64url(hashlib.sha256((verifier or "").encode()).digest())
            if verifier is None or not hmac.compare_digest(computed, challenge):
                raise invalid_grant("code_verifier does not match the code_challenge")
        return sealed

    def id_token(self, user: Mapping[str, Any], client_id: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": self.subject(user), "aud": client_id, "iat": now}
        claims["exp"] = now + ID_TOKEN_LIFETIME
        if nonce is not None:
            claims["nonce"] = nonce
        return self.signer.sign({**claims, **profile_claims(user)})

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
    ) -> dict[str, Any]:
        """TikTok's user object; `refused` turns TikTok's refusal of the token into this endpoint's error."""
        try:
            return await tiktok.user_info(request.state.upstream, self.settings, access_token, granted)
        except OAuthError as err:
            if err.status >= 500 or err.status == 429:
                raise
            raise refused(err) from None

    # ------------------------------------------------------------------------------------- userinfo

    async def userinfo(self, request: Request) -> Response:
        """The claims for a TikTok access token, sent as `Authorization: Bearer` (RFC 6750 §2.1)."""
        started = time.perf_counter()
        try:
            authorizations = request.headers.getlist("authorization")
            scheme, _, token = (authorizations or [""])[0].partition(" ")
            if len(authorizations) != 1 or scheme.lower() != "bearer" or not token.strip():
                raise OAuthError(
                    401,
                    "invalid_request",
                    "send the access token as Authorization: Bearer <token>",
                    headers={"WWW-Authenticate": 'Bearer realm="tiktok-oidc"'},
                )
            user = await self.user(request, token.strip(), None, refused=invalid_token)
            response: Response = JSONResponse({"sub": self.subject(user), **profile_claims(user)}, headers=NO_STORE)
            outcome = "ok"
        except OAuthError as err:
            response, outcome = err.response(), err.error
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        finish("oidc_userinfo", response.status_code, outcome, None, duration_ms=duration_ms)
        return response


# ----------------------------------------------------------------------------------------- helpers


def checked_request(params: Mapping[str, str]) -> list[str]:
    """The requested scopes, once the rest of the request is one this provider can serve (OIDC Core §3.1.2.1)."""
    if params.get("response_type") != "code":
        raise OAuthError(400, "unsupported_response_type", "response_type must be code")
    scopes = split_scopes(params.get("scope", ""))
    if "openid" not in scopes:
        raise OAuthError(400, "invalid_scope", "scope must include openid")
    if params.get("response_mode", "query") != "query":
        raise invalid_request("response_mode must be query")
    if "request" in params or "request_uri" in params:
        raise OAuthError(400, "request_not_supported", "request objects are not supported")
    challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
    if challenge is None and method is not None:
        raise invalid_request("code_challenge_method was sent without code_challenge")
    if challenge is not None and method != "S256":  # a challenge without a method is "plain" (RFC 7636 §4.3)
        raise invalid_request("code_challenge_method must be S256")
    if challenge is not None and not PKCE_CHALLENGE.fullmatch(challenge):
        raise invalid_request("code_challenge must be the base64url SHA-256 of the code_verifier")
    for name in ("state", "nonce"):
        if len(params.get(name, "")) > MAX_ECHOED:
            raise invalid_request(f"{name} is over {MAX_ECHOED} characters")
    return scopes


def mapped_to_tiktok(scopes: list[str]) -> list[str]:
    """TikTok's scope names for the requested scopes, each once, in order."""
    mapped = [SCOPES[scope] if scope in SCOPES else scope for scope in scopes]
    return list(dict.fromkeys(scope for scope in mapped if scope))


def openid_scopes(granted: list[str]) -> list[str]:
    """TikTok's granted scopes in the relying party's words: openid and profile for the user.info ones."""
    back = {tiktok_scope: scope for scope, tiktok_scope in SCOPES.items() if tiktok_scope}
    return list(dict.fromkeys(back.get(scope, scope) for scope in granted))


def profile_claims(user: Mapping[str, Any]) -> dict[str, str]:
    return {
        claim: user[field]
        for claim, field in PROFILE_CLAIMS.items()
        if isinstance(user.get(field), str) and user[field]
    }


def invalid_grant(description: str) -> OAuthError:
    return OAuthError(400, "invalid_grant", description)


def server_error(err: OAuthError) -> OAuthError:
    """TikTok refused the access token it had just issued: nothing the relying party can fix."""
    return OAuthError(502, "server_error", f"TikTok's user info refused the new access token ({err.error})")


def invalid_token(err: OAuthError) -> OAuthError:
    bearer = {"WWW-Authenticate": 'Bearer realm="tiktok-oidc", error="invalid_token"'}
    if err.error == "access_token_invalid":
        return OAuthError(401, "invalid_token", "TikTok does not accept this access token", headers=bearer)
    return OAuthError(502, "server_error", f"TikTok's user info refused the request ({err.error})")


def finish(event: str, status: int, outcome: str, client_key: str | None, **more: Any) -> None:
    """One log line and one count per step, naming the outcome only: never a code, a token or the query."""
    log_outcome(status, event=event, outcome=outcome, client_key=client_key, **more)
    metrics.exchange(event, None, outcome, status)


def redirect(location: str) -> Response:
    return RedirectResponse(location, status_code=302, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


def back_to_client(
    redirect_uri: str, answer: dict[str, str], state: str | None, event: str, client_id: str | None
) -> Response:
    """The browser back to the relying party's (trusted) redirect_uri, with its own state."""
    query = {**answer, **({"state": state} if state is not None else {})}
    finish(event, 302, answer.get("error", "ok" if event == "oidc_callback" else "redirect"), client_id)
    return redirect(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(query)}")


def refused_page(err: OAuthError, event: str, client_id: str | None) -> Response:
    """A request that cannot be sent back to a trusted redirect_uri: a page for the person, never a redirect."""
    finish(event, 400, err.error, client_id)
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><title>Sign-in failed</title><style>{PAGE_STYLE}</style><main>"
        f'<h1>Sign-in failed</h1><p id="error">{escape(err.description)}</p>'
        "<p>Go back to the application and sign in again. If this keeps happening, tell its administrator.</p></main>",
        status_code=400,
        headers=NO_STORE,
    )


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#f4f4f6;color:#161823;margin:0;display:grid;"
    "place-items:center;min-height:100vh}main{background:#fff;padding:2rem 2.5rem;border-radius:12px;"
    "max-width:36rem}#error{background:#fff0f1;border-left:4px solid #fe2c55;padding:.8rem 1rem}"
)

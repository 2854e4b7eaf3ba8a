"""The relying party's back-channel steps: the token endpoint (a sealed code or a refresh token → TikTok's tokens
plus an ID token) and the userinfo endpoint (a TikTok access token → the user's claims)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import metrics, tiktok
from ..config import split_scopes
from ..errors import NO_STORE, OAuthError, missing
from ..inbound import CUT_BY_DEADLINE, check_allowed, client_credentials, parse_params, read_body
from ..logs import log_outcome
from .claims import openid_scopes, profile_claims
from .jose import b64url
from .pages import finish
from .provider import Provider
from .sealing import Unsealable


async def token(provider: Provider, request: Request) -> Response:
    with metrics.in_flight():
        return await _token(provider, request)


async def _token(provider: Provider, request: Request) -> Response:
    settings = provider.settings
    started = time.perf_counter()
    fields: dict[str, Any] = {"grant": None, "client_key": None, "upstream_status": None, "log_id": None}
    try:
        params = parse_params(
            request.headers.get("content-type", ""), await read_body(request.headers, request.receive)
        )
        fields["grant"] = tiktok.grant_asked(params)
        client_key, client_secret = client_credentials(request.headers, params)
        fields["client_key"] = client_key
        check_allowed(settings, client_key)
        grant = params.get("grant_type")
        nonce: str | None = None
        granted: list[str] | None = None  # None: unknown, so the user info asks for every field
        if grant == "authorization_code":
            sealed = redeemable(provider, params, client_key)  # every local check, before TikTok is called
            nonce, granted = sealed["n"], sealed["g"]
            exchange = {"grant_type": grant, "code": sealed["t"], "redirect_uri": provider.callback_url}
            form = tiktok.token_form(exchange, client_key, client_secret)
        elif grant == "refresh_token":
            form = tiktok.token_form(params, client_key, client_secret)
        elif grant is None:
            raise missing("grant_type")
        else:
            raise OAuthError(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
        reply = await tiktok.post_form(request.state.upstream, settings.token_url, form, settings.timeout)
        fields["upstream_status"], fields["log_id"] = reply.status, reply.log_id
        answer = tiktok.token_answer(reply, form)
        if "scope" in answer:  # what the token is worth, from TikTok itself (else what the callback said)
            granted = split_scopes(answer["scope"])
            answer["scope"] = " ".join(openid_scopes(granted))
        user = await provider.user(request, answer["access_token"], granted, refused=server_error)
        answer["id_token"] = provider.id_token(user, client_key, nonce)
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


def redeemable(provider: Provider, params: Mapping[str, str], client_key: str) -> dict[str, Any]:
    """The sealed code's contents, once it has passed every check that needs no TikTok call."""
    if "code" not in params:
        raise missing("code")
    try:
        sealed = provider.codes.unseal(params["code"])
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


async def userinfo(provider: Provider, request: Request) -> Response:
    """The claims for a TikTok access token, sent as `Authorization: Bearer` (RFC 6750 §2.1)."""
    started = time.perf_counter()
    try:
        authorizations = request.headers.getlist("authorization")
        scheme, _, access_token = (authorizations or [""])[0].partition(" ")
        if len(authorizations) != 1 or scheme.lower() != "bearer" or not access_token.strip():
            raise OAuthError(
                401,
                "invalid_request",
                "send the access token as Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="tiktok-oidc"'},
            )
        user = await provider.user(request, access_token.strip(), None, refused=invalid_token)
        claims = {"sub": provider.subject(user), **profile_claims(user)}
        response: Response = JSONResponse(claims, headers=NO_STORE)
        outcome = "ok"
    except OAuthError as err:
        response, outcome = err.response(), err.error
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    finish("oidc_userinfo", response.status_code, outcome, None, duration_ms=duration_ms)
    return response


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

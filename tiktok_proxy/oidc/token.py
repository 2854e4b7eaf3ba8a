"""The relying party's back-channel steps: the token endpoint (a sealed code or a refresh token → TikTok's tokens
plus an ID token) and the userinfo endpoint (a TikTok access token → the user's claims)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import metrics, tiktok
from ..config import Settings, split_scopes
from ..errors import NO_STORE, OAuthError, missing
from ..inbound import CUT_BY_DEADLINE, check_allowed, check_own_secret, client_credentials, parse_params, read_body
from ..logs import log_outcome
from .claims import facade_scopes, openid_scopes
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
    fields_after: dict[str, Any] = {"id_token": None}  # at the end of the line: issued, or why it was left out
    try:
        params = parse_params(
            request.headers.get("content-type", ""), await read_body(request.headers, request.receive)
        )
        fields["grant"] = tiktok.grant_asked(params)
        client_key, client_secret = authenticated_client(settings, request.headers, params)
        fields["client_key"] = client_key
        grant = params.get("grant_type")
        nonce: str | None = None
        granted: list[str] | None = None  # None: unknown, so the user info asks for every field
        auth_time: int | None = None  # unknown on a refresh: TikTok's refresh token says nothing of the sign-in
        own_scopes = unknown_own_scopes(settings.oidc_email_domain)
        if grant == "authorization_code":
            sealed = redeemable(provider, params, client_key)  # every local check, before TikTok is called
            nonce, granted = sealed["n"], sealed["g"]
            auth_time = sealed.get("at")
            own_scopes = facade_scopes(sealed.get("fs", []), settings.oidc_email_domain)  # the domain may be gone
            exchange = {"grant_type": grant, "code": sealed["t"], "redirect_uri": provider.callback_url}
            form = tiktok.token_form(exchange, client_key, client_secret)
        elif grant == "refresh_token":
            form = tiktok.token_form(params, client_key, client_secret)
        elif grant is None:
            raise missing("grant_type")
        else:
            raise OAuthError(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
        # TIKTOK_TIMEOUT bounds the whole exchange with TikTok, the user info after the token call included.
        deadline = asyncio.get_running_loop().time() + settings.timeout
        reply = await tiktok.post_form(request.state.upstream, settings.token_url, form, settings.timeout)
        fields["upstream_status"], fields["log_id"] = reply.status, reply.log_id
        answer = tiktok.token_answer(reply, form)
        if "scope" in answer:  # what the token is worth, from TikTok itself (else what the callback said)
            granted = split_scopes(answer["scope"])
            answer["scope"] = " ".join([*openid_scopes(granted), *own_scopes])
        sign = partial(provider.id_token, client_id=client_key, nonce=nonce, auth_time=auth_time,
                       email="email" in own_scopes)  # fmt: skip
        if grant == "refresh_token":
            fields_after["id_token"] = await add_refreshed_id_token(provider, request, answer, granted, sign, deadline)
        else:  # the ID token is what a relying party signs in with: without it, the code grant failed
            user = await provider.user(request, answer["access_token"], granted, server_error, deadline)
            answer["id_token"] = sign(user)
            fields_after["id_token"] = "issued"
        response: Response = JSONResponse(answer, headers=NO_STORE)
        outcome = "ok"
    except OAuthError as err:
        response, outcome = err.response(), err.error
        fields["log_id"] = err.log_id or fields["log_id"]
    if getattr(request.state, CUT_BY_DEADLINE, False):
        return response  # serving.py cut the body at REQUEST_TIMEOUT, and has answered 408 and logged it
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    log_outcome(
        response.status_code, fields_after, event="oidc_token", outcome=outcome, **fields, duration_ms=duration_ms
    )
    metrics.exchange("oidc_token", fields["grant"], outcome, response.status_code)
    return response


async def add_refreshed_id_token(
    provider: Provider,
    request: Request,
    answer: dict[str, Any],
    granted: list[str] | None,
    sign: Callable[[Mapping[str, Any]], str],
    deadline: float,
) -> str:
    """A new ID token into a refresh's answer when TikTok's user info gives the user; the log's word for it.

    By now TikTok has rotated the refresh token, and the one the relying party sent no longer works: failing the
    answer would lose the user's grant. OIDC Core §12.2 makes the ID token optional on a refresh, so a user info
    that fails (a refused token, 429, 5xx, unreachable) only leaves it out. So does one that would outlast the
    exchange's deadline: a relying party that gives up waiting loses TikTok's new tokens all the same."""
    try:
        answer["id_token"] = sign(
            await provider.user(request, answer["access_token"], granted, lambda err: err, deadline)
        )
    except OAuthError as err:
        metrics.refresh_id_token(issued=False)
        return f"omitted:{err.error}"
    metrics.refresh_id_token(issued=True)
    return "issued"


def unknown_own_scopes(email_domain: str) -> list[str]:
    """The scopes the facade grants itself when it cannot know what was asked (a refresh, userinfo: TikTok's tokens
    carry no OpenID scope). The made-up email is then given whenever OIDC_EMAIL_DOMAIN is set: it is only `sub`
    again, which the relying party has anyway, and platforms read their attributes from userinfo."""
    return facade_scopes(["email"], email_domain)


# RFC 7636 §4.1: code_verifier = 43*128unreserved
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
ASSERTION_PARAMS = ("client_assertion", "client_assertion_type")  # private_key_jwt, client_secret_jwt


def authenticated_client(settings: Settings, headers: Headers, params: Mapping[str, str]) -> tuple[str, str]:
    """The client key and secret, once the client has authenticated as far as the proxy can tell, before anything
    else in the request is looked at (RFC 6749 §5.2: invalid_client). The proxy's own key (TIKTOK_CLIENT_KEY) must
    carry its secret, checked here, so a wrong one never reaches TikTok; any other allowed key's secret is TikTok's
    to check. X-Proxy-Secret plays no part: relying parties cannot send it."""
    if any(name in params for name in ASSERTION_PARAMS):
        raise OAuthError(
            401,
            "invalid_client",
            "client_assertion (private_key_jwt, client_secret_jwt) is not supported: authenticate with "
            "client_secret_post or client_secret_basic",
        )
    client_key, client_secret = client_credentials(headers, params, absent=unauthenticated)
    if not check_own_secret(settings, client_key, client_secret):
        check_allowed(settings, client_key)
    return client_key, client_secret


def unauthenticated(name: str) -> OAuthError:
    return OAuthError(
        401,
        "invalid_client",
        f"missing {name}: authenticate with client_id and client_secret in the body (client_secret_post) or as "
        "HTTP Basic (client_secret_basic)",
    )


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
    if verifier is not None and not PKCE_VERIFIER.fullmatch(verifier):
        raise invalid_grant("code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)")
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
        claims = provider.claims(user, email="email" in unknown_own_scopes(provider.settings.oidc_email_domain))
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

"""The sign-in's browser steps: the relying party's authorization request, sent on to TikTok, and TikTok's
redirect back, sent on to the relying party with a sealed code."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from .. import tiktok
from ..config import split_scopes
from ..errors import OAuthError, invalid_request, missing
from ..inbound import check_allowed, parse_query, unique_params
from .binding import Binding, check_same_browser, expire
from .claims import facade_scopes, mapped_to_tiktok
from .pages import back_to_client, finish, redirect, refused_page
from .provider import CODE_LIFETIME, STATE_LIFETIME, Provider
from .sealing import Unsealable

MAX_ECHOED = 512  # characters of state or nonce: both travel inside the URL sent to TikTok
PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest
MAX_AGE = re.compile(r"[0-9]{1,10}")  # seconds (OIDC Core §3.1.2.1)
# prompt values that want the user to act on TikTok's page, even one TikTok would let through without it.
SHOW_PAGE_PROMPTS = frozenset({"login", "consent", "select_account"})
# prompt=none: no page may be shown, and the facade cannot know whether the user is signed in to TikTok without
# sending the browser there. So it answers at once what an OP that knows no session answers (OIDC Core §3.1.2.6).
LOGIN_REQUIRED = {
    "error": "login_required",
    "error_description": "prompt=none: signing in with TikTok needs TikTok's page, which prompt=none forbids",
}


async def authorize(provider: Provider, request: Request) -> Response:
    """The relying party's authorization request, sent on to TikTok with everything it needs sealed in state."""
    settings = provider.settings
    client_id = None
    try:
        params = unique_params(parse_query(request.url.query))
        client_id = params.get("client_id")
        if client_id is None:
            raise missing("client_id")
        check_allowed(settings, client_id)
        redirect_uri = params.get("redirect_uri")
        if redirect_uri not in settings.oidc_redirect_uris:
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
    if prompts(params) == {"none"}:  # no TikTok call, no page: an id_token_hint changes nothing either
        return back_to_client(redirect_uri, LOGIN_REQUIRED, params.get("state"), "oidc_authorize", client_id)
    wanted = mapped_to_tiktok(scopes)
    binding = Binding.new(secure=provider.issuer.startswith("https://"))
    sealed = {
        "c": client_id,
        "r": redirect_uri,
        "s": params.get("state"),
        "n": params.get("nonce"),
        "pc": params.get("code_challenge"),
        "sc": wanted,
        "fs": facade_scopes(scopes, settings.oidc_email_domain),
        "b": binding.sealed(),
    }
    ask = {"scope": " ".join(wanted), "response_type": "code", "redirect_uri": provider.callback_url}
    if prompts(params) & SHOW_PAGE_PROMPTS or "max_age" in params:
        ask.update(tiktok.ALWAYS_SHOW_PAGE)  # the closest TikTok comes to signing the user in again
    state = provider.states.seal(sealed, STATE_LIFETIME)
    query = tiktok.authorize_query({**ask, "state": state}, client_id, settings.scopes)
    finish("oidc_authorize", 302, "redirect", client_id)
    # Only ever the configured TikTok URL: nothing in the request chooses where the browser goes.
    response = redirect(f"{settings.authorize_url}?{urlencode(query)}")
    binding.set_on(request, response, STATE_LIFETIME)
    return response


async def callback(provider: Provider, request: Request) -> Response:
    """TikTok's redirect back: to the relying party, with a sealed code or TikTok's error, and its own state.

    The query carries TikTok's authorization code: nothing here logs it (nor the query)."""
    try:
        params = unique_params(parse_query(request.url.query))
        try:
            sealed = provider.states.unseal(params.get("state"))
        except Unsealable as why:
            raise invalid_request(f"the sign-in state {why}: start again from the application") from None
        check_same_browser(request, sealed.get("b"))
    except OAuthError as err:
        return refused_page(err, "oidc_callback", None)
    if "error" not in params and params.get("code"):
        granted = split_scopes(params.get("scopes", "")) or sealed["sc"]  # Q2: scopes, plural
        code = {key: sealed[key] for key in ("c", "r", "n", "pc")}
        # at: the ID token's auth_time, when TikTok sent the user back. fs: the scopes the facade grants itself.
        code.update(t=params["code"], g=granted, at=int(time.time()), fs=sealed.get("fs", []))
        back = {"code": provider.codes.seal(code, CODE_LIFETIME)}
    elif "error" in params:  # Cancel on TikTok's page, or a configuration TikTok refused
        error, description = tiktok.callback_error(params)
        back = {"error": error, "error_description": description}
    else:
        back = {"error": "server_error", "error_description": "TikTok redirected back with neither code nor error"}
    response = back_to_client(sealed["r"], back, sealed["s"], "oidc_callback", sealed["c"])
    expire(response, sealed["b"][0])  # the state has served: it opens nothing more, even in this browser
    return response


def checked_request(params: Mapping[str, str]) -> list[str]:
    """The requested scopes, once the rest of the request is one this provider can serve (OIDC Core §3.1.2.1)."""
    # First: a request object may hold the parameters checked below (OIDC Core §6).
    if "request_uri" in params:
        raise OAuthError(
            400, "request_uri_not_supported", "request_uri is not supported: send the parameters in the query"
        )
    if "request" in params:
        raise OAuthError(
            400, "request_not_supported", "request objects are not supported: send the parameters in the query"
        )
    if "response_type" not in params:
        raise missing("response_type")  # RFC 6749 §4.1.2.1: invalid_request
    if params["response_type"] != "code":
        raise OAuthError(400, "unsupported_response_type", "response_type must be code")
    scopes = split_scopes(params.get("scope", ""))
    if "openid" not in scopes:
        raise OAuthError(400, "invalid_scope", "scope must include openid")
    if params.get("response_mode", "query") != "query":
        raise invalid_request("response_mode must be query")
    if "none" in prompts(params) and len(prompts(params)) > 1:
        raise invalid_request("prompt=none cannot be combined with another prompt value")
    if "max_age" in params and not MAX_AGE.fullmatch(params["max_age"]):
        raise invalid_request("max_age must be a whole number of seconds")
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


def prompts(params: Mapping[str, str]) -> set[str]:
    """The prompt values asked (space-separated, OIDC Core §3.1.2.1). Values the facade does not know are kept,
    and change nothing."""
    return set(params.get("prompt", "").split())

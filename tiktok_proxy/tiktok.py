"""Everything TikTok: the forms its endpoints want, the call, and how its answers become standard OAuth2.

Each quirk is handled here, once, with its number from docs/tiktok-quirks.md, which explains them:
Q1 client_key (forms, authorize query), Q2 comma scopes (authorize query, token answer), Q3 one form
Content-Type (UPSTREAM_HEADERS), Q4 errors with HTTP 200 (normalize_token_reply), Q5 trailing slash
(config.upstream_url, _unusable), Q8 rotating refresh tokens (token_answer), Q9 flat errors and the
resource envelope (_tiktok_error), Q10 token_type case (_token_payload), and the legacy v1 `data` envelope.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

from . import metrics
from .config import Settings, split_scopes
from .errors import OAuthError, missing
from .logs import redact
from .upstream import Answer, ConnectFailed, UpstreamClient, UpstreamError

# ------------------------------------------------------------------------------------ outbound forms

# What TikTok needs for each grant: (required, optional) parameters besides the client credentials.
GRANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "authorization_code": (("code", "redirect_uri"), ("code_verifier",)),
    "refresh_token": (("refresh_token",), ()),
    "client_credentials": ((), ()),
}


def grant_asked(params: Mapping[str, str]) -> str | None:
    """The grant_type a request asked for, as its log line shows it: one of GRANTS as it is, "other" for anything
    else (the caller chooses it, so it could be anything), None when it named none."""
    grant = params.get("grant_type")
    return grant if grant is None or grant in GRANTS else "other"


def token_form(params: Mapping[str, str], client_key: str, client_secret: str) -> dict[str, str]:
    """The form TikTok's token endpoint wants for this grant (quirk Q1: client_key, never client_id)."""
    grant = params.get("grant_type")
    if grant is None:
        raise missing("grant_type")
    if grant not in GRANTS:
        raise OAuthError(400, "unsupported_grant_type", f"grant_type must be one of: {', '.join(GRANTS)}")
    required, optional = GRANTS[grant]
    for name in required:
        if name not in params:
            raise missing(name)
    form = {"client_key": client_key, "client_secret": client_secret, "grant_type": grant}
    # code_verifier passes through untouched: its encoding (hex for TikTok desktop) is the client's choice.
    form.update({name: params[name] for name in (*required, *optional) if name in params})
    return form


def revoke_form(params: Mapping[str, str], client_key: str, client_secret: str) -> dict[str, str]:
    """The form TikTok's revoke endpoint wants: RFC 7009's `token` (TikTok revokes the user's access token)."""
    if "token" not in params:
        raise missing("token")
    return {"client_key": client_key, "client_secret": client_secret, "token": params["token"]}


AUTHORIZE_DROPPED = frozenset({"client_id", "client_key", "client_secret"})


def authorize_query(params: Mapping[str, str], client_key: str, default_scopes: str) -> dict[str, str]:
    """The authorize page's query: client_key in place of client_id (Q1), TikTok's scopes joined by commas (Q2)."""
    query = {"client_key": client_key, "scope": default_scopes}  # TikTok requires a scope
    for name, value in params.items():
        if name == "scope":
            value = tiktok_scopes(value, default_scopes)
        if name not in AUTHORIZE_DROPPED:  # a secret never belongs in a browser URL
            query[name] = value
    return query


# TikTok's authorize page may let a user with a TikTok session who consented before straight through, with no page
# at all; disable_auto_auth=1 makes it show its page every time (Login Kit for Web). Nothing makes it ask for the
# password again, or answer without a page.
ALWAYS_SHOW_PAGE = {"disable_auto_auth": "1"}


# OpenID Connect's and Auth0's own scopes. Auth0's Connected Accounts asks for "openid profile offline_access"
# beside the connection's scopes, and TikTok refuses a request that names a scope it does not know.
NOT_TIKTOK_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


def tiktok_scopes(scope: str, default_scopes: str) -> str:
    """Only TikTok's scopes, each once, comma-joined; `default_scopes` (TIKTOK_SCOPES) when none is left."""
    kept = dict.fromkeys(item for item in split_scopes(scope) if item not in NOT_TIKTOK_SCOPES)
    return ",".join(kept) or default_scopes


# -------------------------------------------------------------------------------------- the call

MAX_UPSTREAM_BYTES = 1024 * 1024
# Quirk Q3: exactly one Content-Type, with no charset suffix. Identity: the client does not decompress.
UPSTREAM_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Accept": "application/json",
    "Accept-Encoding": "identity",
    "Cache-Control": "no-cache",
    "User-Agent": "tiktok-token-proxy",
}


@dataclass(frozen=True)
class UpstreamReply:
    url: str
    status: int
    body: bytes
    log_id: str | None  # TikTok's x-tt-logid header, when it has the shape of TikTok's log ids
    retry_after: str | None  # TikTok's Retry-After, when it is a number of seconds


def upstream_client(settings: Settings) -> UpstreamClient:
    """The client for TikTok's endpoints, through the egress proxy and with the CA bundle configured."""
    return UpstreamClient(
        max_body=MAX_UPSTREAM_BYTES, proxy=settings.egress_proxy, no_proxy=settings.no_proxy, ca_file=settings.ca_file
    )


async def post_form(client: UpstreamClient, url: str, form: Mapping[str, str], timeout: float) -> UpstreamReply:
    """POST a form within one total deadline. Failures become 502 or 504 OAuth errors that say what happened."""
    return await _call(client.post(url, form_body(form), UPSTREAM_HEADERS), url, timeout)


PLAIN_FORM_TEXT = re.compile(r"[A-Za-z0-9_.~-]*")  # what form encoding leaves as it is


def form_body(form: Mapping[str, str]) -> bytes:
    """urlencode's bytes, about 40% faster: most names and values need no quoting, and quote_plus is slow."""
    return "&".join(
        f"{name if PLAIN_FORM_TEXT.fullmatch(name) else quote_plus(name)}="
        f"{value if PLAIN_FORM_TEXT.fullmatch(value) else quote_plus(value)}"
        for name, value in form.items()
    ).encode()


async def _call(request: Awaitable[Answer], url: str, timeout: float) -> UpstreamReply:
    started = time.perf_counter()
    try:
        # One deadline for the whole exchange, however slowly TikTok drips its answer.
        async with asyncio.timeout(timeout):
            answer = await request
    except TimeoutError:
        raise timed_out(timeout) from None
    except ConnectFailed as exc:
        metrics.upstream_failed(exc.kind)  # connect or tls
        raise OAuthError(502, "server_error", f"TikTok is unreachable: {exc}") from None
    except UpstreamError as exc:
        metrics.upstream_failed(exc.kind)  # unusable: not HTTP, too large, or closed early
        raise OAuthError(502, "server_error", f"the exchange with TikTok failed: {exc}") from None
    except OSError as exc:
        metrics.upstream_failed("unusable")
        raise OAuthError(502, "server_error", f"the exchange with TikTok failed ({type(exc).__name__})") from None
    metrics.upstream_answered(time.perf_counter() - started)
    return upstream_reply(url, answer)


def timed_out(timeout: float) -> OAuthError:
    metrics.upstream_failed("timeout")
    return OAuthError(504, "temporarily_unavailable", f"TikTok did not answer within {timeout:g} seconds")


def upstream_reply(url: str, answer: Answer) -> UpstreamReply:
    """TikTok's answer, with the headers the proxy passes on (to the client, or to its log) checked first."""
    retry_after = answer.headers.get("retry-after", "")
    return UpstreamReply(
        url=url,
        status=answer.status,
        body=answer.body,
        log_id=tiktok_log_id(answer.headers.get("x-tt-logid")),
        retry_after=retry_after if RETRY_AFTER_SHAPE.fullmatch(retry_after) else None,
    )


# ------------------------------------------------------------------------------------- user info

# The fields the OpenID Connect facade reads, by the TikTok scope that unlocks them (docs/tiktok-quirks.md, "User
# info"). Asking for a field whose scope was not granted fails the whole call with scope_permission_missed.
USER_FIELDS = {
    "user.info.basic": ("open_id", "union_id", "avatar_url", "display_name"),
    "user.info.profile": ("username", "profile_deep_link"),
}
USER_INFO_HEADERS = {k: v for k, v in UPSTREAM_HEADERS.items() if k != "Content-Type"}


async def user_info(
    client: UpstreamClient, settings: Settings, access_token: str, granted: Iterable[str] | None
) -> dict[str, Any]:
    """TikTok's user object for this access token, with the fields the granted scopes allow.

    granted None: the scopes are unknown (a bare access token), so ask for every field, then for the basic ones
    when TikTok answers scope_permission_missed.
    """
    if granted is None:
        try:
            return await _user_info(client, settings, access_token, list(USER_FIELDS))
        except OAuthError as err:
            if err.error != "scope_permission_missed":
                raise
        granted = ["user.info.basic"]
    return await _user_info(client, settings, access_token, [scope for scope in USER_FIELDS if scope in granted])


async def _user_info(
    client: UpstreamClient, settings: Settings, access_token: str, scopes: list[str]
) -> dict[str, Any]:
    fields = [field for scope in scopes or ["user.info.basic"] for field in USER_FIELDS[scope]]
    url = f"{settings.userinfo_url}?{urlencode({'fields': ','.join(fields)})}"
    # The token goes in the Authorization header, never in the URL (URLs end up in logs).
    headers = {**USER_INFO_HEADERS, "Authorization": f"Bearer {access_token}"}
    reply = await _call(client.get(url, headers), settings.userinfo_url, settings.timeout)
    document = _json_or_none(reply.body)
    raise_tiktok_error(reply, _payload_parts(document), [access_token])
    # Quirk Q9: the resource envelope says success with error.code "ok", whatever the HTTP status.
    envelope_ok = isinstance(document, dict) and isinstance(document.get("error"), dict)
    data = document.get("data") if envelope_ok else None
    user = data.get("user") if isinstance(data, dict) else None
    if not envelope_ok or document["error"].get("code") != "ok" or not isinstance(user, dict):
        raise _unusable(reply, document, "not a user-info answer")
    if not isinstance(user.get("open_id"), str) or not user["open_id"]:
        raise _unusable(reply, document, "a user without an open_id")
    return user


def callback_error(params: Mapping[str, str]) -> tuple[str, str]:
    """The error TikTok's authorize page redirected back with, as an RFC 6749 §4.1.2.1 error to pass on to a client.

    Nothing of the query is relayed as it came: whoever holds a state can write any text there, which the client's
    error page would then show. The error becomes one of RFC 6749's codes, and the description is this proxy's
    own, naming TikTok's code and error_type (e.g. redirect_uri, scope_not_authorized: a bare access_denied is not
    always a Cancel) only when they have the shape of an identifier."""
    code, error_type = params.get("error", ""), params.get("error_type", "")
    error = code if code in AUTHORIZE_ERRORS else "access_denied"
    named = [
        f"{name}: {value}"
        for name, value in (("error", code), ("error_type", error_type))
        if TIKTOK_IDENTIFIER.fullmatch(value) and value != error
    ]
    description = AUTHORIZE_ERRORS[error]
    return error, f"{description} (TikTok's {', '.join(named)})" if named else description


# RFC 6749 §4.1.2.1's error codes, each with the description the proxy sends with it.
AUTHORIZE_ERRORS = {
    "access_denied": "the user cancelled on TikTok's page, or TikTok refused the sign-in",
    "invalid_request": "TikTok refused the authorization request",
    "unauthorized_client": "TikTok does not let this app sign users in this way",
    "unsupported_response_type": "TikTok refused the response type",
    "invalid_scope": "TikTok refused the requested scopes",
    "server_error": "TikTok's authorization page failed",
    "temporarily_unavailable": "TikTok's authorization page is unavailable for now; try again later",
}
TIKTOK_IDENTIFIER = re.compile(r"[a-z0-9_]{1,40}")  # TikTok's error codes and error types, e.g. redirect_uri


# ------------------------------------------------------------------------ answer normalization

# TikTok's error codes that are not plain "400 Bad Request" for the client.
ERROR_STATUS = {"invalid_client": 401, "server_error": 502, "temporarily_unavailable": 503}
ERROR_CODE_SHAPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §5.2 error charset
# TikTok's log ids: a UTC timestamp (yyyymmddHHMMSS), then upper-case hex, e.g. 202206221854370101130062072500FFA2.
LOG_ID_SHAPE = re.compile(r"[0-9]{14}[0-9A-F]{8,64}")
RETRY_AFTER_SHAPE = re.compile(r"[0-9]{1,6}")  # delay-seconds (RFC 9110 §10.2.3), ASCII digits: under 12 days
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # JSON's escape for a UTF-16 surrogate, \uD800-\uDFFF
TOKEN_SHAPE = re.compile(r"[\x20-\x7e]+")  # RFC 6749 A.12, A.17: access and refresh tokens are 1*VSCHAR
MAX_SECONDS = 2**31 - 1  # a lifetime beyond 68 years is a broken answer, and past what some clients parse


def normalize_token_reply(reply: UpstreamReply, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Turn whatever TikTok answered into a standard token response, or raise the right OAuthError.

    Quirk Q4: success is decided by the body, never by TikTok's HTTP status.
    """
    document = _json_or_none(reply.body)
    parts = _payload_parts(document)
    raise_tiktok_error(reply, parts, secrets)
    for part in parts:
        token = part.get("access_token")
        if isinstance(token, str) and token:
            return _token_payload(part)
    raise _unusable(reply, document, "neither a token nor an error")


def normalize_revoke_reply(reply: UpstreamReply, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """TikTok documents an empty answer for a revoke that worked; an empty body and `{}` are alike."""
    document = _json_or_none(reply.body) if reply.body.strip() else {}
    raise_tiktok_error(reply, _payload_parts(document), secrets)
    if 200 <= reply.status < 300 and isinstance(document, dict):
        return {}
    raise _unusable(reply, document, "not a revocation answer")


def token_answer(reply: UpstreamReply, form: Mapping[str, str]) -> dict[str, Any]:
    if form["grant_type"] != "refresh_token":
        return normalize_token_reply(reply, secrets=form.values())
    try:
        payload = normalize_token_reply(reply, secrets=form.values())
    except OAuthError as err:
        raise refresh_refused(err) from None
    # Quirk Q8: TikTok rotates refresh tokens. Its new one (and refresh_expires_in) pass through and replace the
    # old; only when it sends none does the client keep the one it sent.
    payload.setdefault("refresh_token", form["refresh_token"])
    return payload


def refresh_refused(err: OAuthError) -> OAuthError:
    """TikTok's refusal of a refresh is, to the client, a refresh token that no longer works (RFC 6749 §5.2:
    invalid_grant), whatever code TikTok used; Token Vault then asks the user to connect again. A wrong client
    (401), TikTok's own failures (5xx) and rate limits (429) stay what they are: retrying can fix those."""
    if err.status != 400 or err.error == "invalid_grant":
        return err
    description = f"{err.description} (TikTok: {err.error})"
    return OAuthError(400, "invalid_grant", description, log_id=err.log_id, headers=err.headers)


def revoke_answer(reply: UpstreamReply, form: Mapping[str, str]) -> dict[str, Any]:
    return normalize_revoke_reply(reply, secrets=form.values())


def raise_tiktok_error(reply: UpstreamReply, parts: list[dict[str, Any]], secrets: Iterable[str]) -> None:
    for part in parts:
        error = _tiktok_error(part)
        if error is not None:
            code, description, log_id = error
            raise _client_error(reply, code, description, tiktok_log_id(log_id) or reply.log_id, secrets)


def _unusable(reply: UpstreamReply, document: Any, what: str) -> OAuthError:
    if reply.status == 429:
        return _rate_limited(reply, reply.log_id)
    if reply.status == 404:
        description = f"TikTok answered HTTP 404 for {reply.url}; check the URL (TikTok needs the trailing slash)"
    elif 300 <= reply.status < 400:
        description = f"TikTok answered with a redirect (HTTP {reply.status}), which the proxy does not follow"
    elif not reply.body.strip():
        description = f"TikTok answered HTTP {reply.status} with an empty body"
    elif document is None:
        description = f"TikTok answered HTTP {reply.status} with a body that is not JSON"
    else:
        description = f"TikTok answered HTTP {reply.status} with JSON that is {what}"
    metrics.upstream_failed("unusable")
    return OAuthError(502, "server_error", description, log_id=reply.log_id)


def _json_or_none(body: bytes) -> Any:
    try:
        document = json.loads(body)
        if SURROGATE_ESCAPE.search(body):
            # A lone surrogate (I-JSON, RFC 7493 §2.1, forbids them) makes a string no answer can be encoded
            # with: treat the document as the invalid JSON it is. Pairs, as in emoji, encode fine.
            json.dumps(document, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return document


def _payload_parts(document: Any) -> list[dict[str, Any]]:
    """The objects that may hold a token or an error: the answer itself, then a legacy `data` envelope."""
    if not isinstance(document, dict):
        return []
    inner = document.get("data")
    return [document, inner] if isinstance(inner, dict) else [document]


def _tiktok_error(part: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(code, description, log_id) when this object reports an error, in any shape TikTok has used."""
    error = part.get("error")
    if isinstance(error, str) and error:  # v2 OAuth: flat {error, error_description, log_id}
        return error, part.get("error_description"), part.get("log_id")
    if isinstance(error, dict) and error.get("code") not in (None, "", "ok", 0):  # v2 resource envelope
        return str(error["code"]), error.get("message"), error.get("log_id")
    code = part.get("error_code")  # v1: {"data": {"error_code": 10002, "description": ...}, "message": "error"}
    if code not in (None, "", 0, "0"):
        return (
            "invalid_request",
            f"TikTok error {code}: {part.get('description') or 'no description'}",
            part.get("log_id"),
        )
    return None


def _client_error(
    reply: UpstreamReply, code: str, description: Any, log_id: str | None, secrets: Iterable[str]
) -> OAuthError:
    if reply.status == 429 or code == "rate_limit_exceeded":
        return _rate_limited(reply, log_id)
    if not ERROR_CODE_SHAPE.fullmatch(code):
        code = "invalid_request"
    text = _clean_text(description, secrets) or f"TikTok refused the request ({code})"
    return OAuthError(ERROR_STATUS.get(code, 400), code, text, log_id=log_id)


def _rate_limited(reply: UpstreamReply, log_id: str | None) -> OAuthError:
    retry_after = reply.retry_after  # checked when the answer was read
    wait = f"retry after {retry_after} seconds" if retry_after else "retry later"
    return OAuthError(
        429,
        "temporarily_unavailable",
        f"TikTok is rate-limiting token requests; {wait}",
        log_id=log_id,
        headers={"Retry-After": retry_after} if retry_after else None,
    )


def _token_payload(part: dict[str, Any]) -> dict[str, Any]:
    def unusable(what: str) -> OAuthError:
        metrics.upstream_failed("unusable")
        return OAuthError(502, "server_error", f"TikTok's token answer has {what}")

    token_type = part.get("token_type", "Bearer")
    # Quirk Q10: "Bearer" in the docs, "bearer" elsewhere.
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise unusable("a token_type other than Bearer")
    payload: dict[str, Any] = {"access_token": part["access_token"], "token_type": "Bearer"}
    for name in ("expires_in", "refresh_expires_in"):
        value = part.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SECONDS:
            raise unusable(f"a {name} that is not a whole number of seconds")
        payload[name] = value
    for name in ("refresh_token", "open_id", "scope"):
        value = part.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise unusable(f"a {name} that is not a string")
        payload[name] = value
    for name in ("access_token", "refresh_token"):  # they go into Authorization headers and forms
        if name in payload and not TOKEN_SHAPE.fullmatch(payload[name]):
            raise unusable(f"an {name} that is not printable ASCII")
    if "scope" in payload:  # quirk Q2: TikTok joins scopes with commas; RFC 6749 §3.3 with spaces
        payload["scope"] = " ".join(split_scopes(payload["scope"]))
    return payload


def _clean_text(value: Any, secrets: Iterable[str]) -> str:
    if not isinstance(value, str):
        return ""
    # Redact before truncating, so no fragment of a secret can survive.
    return CONTROL_CHARS.sub(" ", redact(value, secrets)).strip()[:300]


def tiktok_log_id(value: Any) -> str | None:
    """TikTok's log id, from its x-tt-logid header or an answer's log_id, when it has TikTok's shape; else None.
    It goes to the client and into the log line, so nothing else may pass for one."""
    return value if isinstance(value, str) and LOG_ID_SHAPE.fullmatch(value) else None


# ------------------------------------------------------------------------- the endpoints relayed


@dataclass(frozen=True)
class Relay:
    """One TikTok OAuth endpoint the proxy relays to: what to send it, and how to read its answer."""

    event: str  # names the exchange in the log line
    url: Callable[[Settings], str]
    build_form: Callable[[Mapping[str, str], str, str], dict[str, str]]
    answer: Callable[[UpstreamReply, Mapping[str, str]], dict[str, Any]]


TOKEN = Relay("token", lambda settings: settings.token_url, token_form, token_answer)
REVOKE = Relay("revoke", lambda settings: settings.revoke_url, revoke_form, revoke_answer)

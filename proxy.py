"""TikTok token proxy for Auth0.

Auth0's custom social connections speak standard OAuth2. TikTok's token endpoint does not: it wants
`client_key` where every client sends `client_id`, answers some errors with HTTP 200, once wrapped tokens
in a `data` envelope, and separates scopes with commas. Point the connection's Token URL at
`POST /proxy/token` (and, optionally, its Authorization URL at `GET /proxy/authorize`).

The proxy keeps no state, so any number of instances can run behind a load balancer.

Reading order: configuration, errors, request parsing, the upstream call, response normalization,
logging, routes, the app, the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import gc
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import uvicorn
from dotenv import find_dotenv, load_dotenv
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from upstream import ConnectFailed, UpstreamClient, UpstreamError

log = logging.getLogger("tiktok_proxy")

# ----------------------------------------------------------------------------------- configuration

DEFAULT_TOKEN_URL = "https://open.tiktokapis.com/v2/oauth/token/"
DEFAULT_AUTHORIZE_URL = "https://www.tiktok.com/v2/auth/authorize/"
DEFAULT_REVOKE_URL = "https://open.tiktokapis.com/v2/oauth/revoke/"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 3333  # the port Auth0's TikTok guide uses
    token_url: str = DEFAULT_TOKEN_URL
    authorize_url: str = DEFAULT_AUTHORIZE_URL
    revoke_url: str = DEFAULT_REVOKE_URL
    timeout: float = 10.0  # total seconds for one upstream exchange
    allowed_client_keys: frozenset[str] = field(default_factory=frozenset)
    log_level: str = "INFO"
    workers: int = 1


class ConfigError(Exception):
    """A bad configuration value. The message is one line that names the variable."""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ`, or from the process environment plus an optional `.env`."""
    if environ is None:
        load_dotenv(find_dotenv(usecwd=True))  # variables already set win over the file
        environ = os.environ
    defaults = Settings()

    def raw(name: str) -> str | None:
        value = environ.get(name, "").strip()
        return value or None

    return Settings(
        host=raw("HOST") or defaults.host,
        port=_bounded(int, "PORT", raw("PORT"), defaults.port, 1, 65535),
        token_url=_upstream_url("TIKTOK_TOKEN_URL", raw("TIKTOK_TOKEN_URL") or defaults.token_url),
        authorize_url=_upstream_url(
            "TIKTOK_AUTHORIZE_URL", raw("TIKTOK_AUTHORIZE_URL") or defaults.authorize_url
        ),
        revoke_url=_upstream_url("TIKTOK_REVOKE_URL", raw("TIKTOK_REVOKE_URL") or defaults.revoke_url),
        timeout=_bounded(float, "TIKTOK_TIMEOUT", raw("TIKTOK_TIMEOUT"), defaults.timeout, 0.1, 120),
        allowed_client_keys=frozenset(
            key.strip() for key in (raw("ALLOWED_CLIENT_KEYS") or "").split(",") if key.strip()
        ),
        log_level=_log_level(raw("LOG_LEVEL") or defaults.log_level),
        workers=_bounded(int, "WEB_CONCURRENCY", raw("WEB_CONCURRENCY"), defaults.workers, 1, 64),
    )


def _bounded(cast: type, name: str, value: str | None, default: Any, low: float, high: float) -> Any:
    if value is None:
        return default
    try:
        number = cast(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _upstream_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an absolute https URL, got {value!r}")
    # Client secrets travel to these URLs: plain http is only for a stand-in on this machine.
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(f"{name} must use https (http is accepted only for localhost), got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} must not carry a query or a fragment, got {value!r}")
    # Quirk Q5: TikTok answers 404 "Unsupported path(Janus)" when the trailing slash is missing.
    if parts.hostname.endswith("tiktokapis.com") and not parts.path.endswith("/"):
        raise ConfigError(f"{name} must end with '/' (TikTok answers 404 without it), got {value!r}")
    return value


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.upper()


def settings_or_exit() -> Settings:
    """Load settings; on a bad value print one line naming the variable and stop (no traceback)."""
    try:
        return load_settings()
    except ConfigError as err:
        print(f"tiktok-token-proxy: configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------ errors

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer. Descriptions are written here and never carry a secret."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        log_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.log_id = log_id
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        if self.log_id:
            body["log_id"] = self.log_id  # TikTok support asks for it
        headers = {**NO_STORE, **self.headers}
        if self.status == 401:
            headers.setdefault("WWW-Authenticate", 'Basic realm="tiktok-token-proxy"')
        return JSONResponse(body, status_code=self.status, headers=headers)


def invalid_request(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description)


def missing(name: str) -> OAuthError:
    return invalid_request(f"missing required parameter: {name}")


# ------------------------------------------------------------------------------- request parsing

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 64
# Parameter names this proxy knows; only these are ever named back in an error message.
KNOWN_PARAMS = frozenset(
    {
        "client_id", "client_key", "client_secret", "grant_type", "code", "redirect_uri",
        "code_verifier", "refresh_token", "scope", "state", "response_type", "code_challenge",
        "code_challenge_method", "disable_auto_auth", "token", "token_type_hint",
    }
)  # fmt: skip

# What TikTok needs for each grant: (required, optional) parameters besides the client credentials.
GRANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "authorization_code": (("code", "redirect_uri"), ("code_verifier",)),
    "refresh_token": (("refresh_token",), ()),
    "client_credentials": ((), ()),
}


async def read_body(request: Request) -> bytes:
    """Read the body, refusing more than MAX_BODY_BYTES whatever Content-Length claims."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise OAuthError(413, "invalid_request", f"the request body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise OAuthError(413, "invalid_request", f"the request body is over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise invalid_request("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def parse_params(content_type: str, body: bytes) -> dict[str, str]:
    """Parse a form or JSON body into single-valued parameters (RFC 6749 §3.2: no repeats)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        pairs = _form_pairs(body)
    elif media_type == "application/json":
        pairs = _json_pairs(body)
    else:
        raise invalid_request("send the parameters as application/x-www-form-urlencoded (or application/json)")
    return unique_params(pairs)


def unique_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            named = f"parameter {name}" if name in KNOWN_PARAMS else "a parameter"
            raise invalid_request(f"{named} is repeated; send each parameter once")
        params[name] = value
    # RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
    return {name: value for name, value in params.items() if value != ""}


def parse_query(query: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except ValueError:  # too many fields, or percent-escapes that are not UTF-8
        raise invalid_request(f"the parameters are not valid UTF-8 form encoding, or more than {MAX_FIELDS}") from None


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_request("the body is not valid UTF-8") from None
    return parse_query(text)


class _JSONObject(list):  # type: ignore[type-arg]
    """The key/value pairs of a JSON object, in order, so repeated keys can be seen."""


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        document = json.loads(body, object_pairs_hook=_JSONObject)
    except (ValueError, RecursionError):
        raise invalid_request("the body is not valid JSON") from None
    if not isinstance(document, _JSONObject):
        raise invalid_request("the JSON body must be an object")
    if len(document) > MAX_FIELDS:
        raise invalid_request("the body has too many parameters")
    for name, value in document:
        if not isinstance(value, str):
            named = f"parameter {name}" if name in KNOWN_PARAMS else "every parameter"
            raise invalid_request(f"{named} must be a string")
    return list(document)


def client_credentials(request: Request, params: Mapping[str, str]) -> tuple[str, str]:
    """The client key and secret, from the body or from HTTP Basic (RFC 6749 §2.3.1), not both."""
    body_key = _one_name(params, "client_id", "client_key")
    body_secret = params.get("client_secret")
    authorizations = request.headers.getlist("authorization")
    if len(authorizations) > 1:
        raise invalid_request("send one Authorization header")
    scheme, _, credentials = (authorizations or [""])[0].strip().partition(" ")
    if scheme.lower() != "basic":
        if body_key is None:
            raise missing("client_id")
        if body_secret is None:
            raise missing("client_secret")
        return body_key, body_secret
    basic_key, basic_secret = _decode_basic(credentials.strip())
    if body_secret is not None or (body_key is not None and body_key != basic_key):
        raise invalid_request("send the client credentials in the body or as HTTP Basic, not both")
    return basic_key, basic_secret


def _one_name(params: Mapping[str, str], name: str, synonym: str) -> str | None:
    if name in params and synonym in params and params[name] != params[synonym]:
        raise invalid_request(f"{name} and {synonym} differ; send one of them")
    return params.get(name, params.get(synonym))


def _decode_basic(credentials: str) -> tuple[str, str]:
    malformed = OAuthError(401, "invalid_client", "the HTTP Basic credentials are malformed")
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise malformed from None
    key, colon, secret = decoded.partition(":")
    # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
    key, secret = unquote_plus(key), unquote_plus(secret)
    if not colon or not key or not secret:
        raise malformed
    return key, secret


def check_allowed(settings: Settings, client_key: str) -> None:
    """Refuse unknown client keys before TikTok is called, so the proxy is not an open relay."""
    if settings.allowed_client_keys and client_key not in settings.allowed_client_keys:
        raise OAuthError(401, "invalid_client", "this client key is not allowed by the proxy (ALLOWED_CLIENT_KEYS)")


def tiktok_token_form(params: Mapping[str, str], client_key: str, client_secret: str) -> dict[str, str]:
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


def tiktok_revoke_form(params: Mapping[str, str], client_key: str, client_secret: str) -> dict[str, str]:
    """The form TikTok's revoke endpoint wants: RFC 7009's `token` (TikTok revokes the user's access token)."""
    if "token" not in params:
        raise missing("token")
    return {"client_key": client_key, "client_secret": client_secret, "token": params["token"]}


# ------------------------------------------------------------------------------ the upstream call

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
    log_id: str | None  # TikTok's x-tt-logid header, when it sends one
    retry_after: str | None


async def post_form(client: UpstreamClient, url: str, form: Mapping[str, str], timeout: float) -> UpstreamReply:
    """POST a form within one total deadline. Never retried once sent: authorization codes are single-use."""
    try:
        # One deadline for the whole exchange, however slowly TikTok drips its answer.
        async with asyncio.timeout(timeout):
            answer = await client.post(url, urlencode(form).encode(), UPSTREAM_HEADERS)
    except TimeoutError:
        raise OAuthError(504, "temporarily_unavailable", f"TikTok did not answer within {timeout:g} seconds") from None
    except ConnectFailed as exc:
        raise OAuthError(502, "server_error", f"TikTok is unreachable: {exc}") from None
    except UpstreamError as exc:
        raise OAuthError(502, "server_error", f"the exchange with TikTok failed: {exc}") from None
    except OSError as exc:
        raise OAuthError(502, "server_error", f"the exchange with TikTok failed ({type(exc).__name__})") from None
    return UpstreamReply(
        url=url,
        status=answer.status,
        body=answer.body,
        log_id=answer.headers.get("x-tt-logid"),
        retry_after=answer.headers.get("retry-after"),
    )


# ------------------------------------------------------------------------ response normalization

# TikTok's error codes that are not plain "400 Bad Request" for the client.
ERROR_STATUS = {"invalid_client": 401, "server_error": 502, "temporarily_unavailable": 503}
ERROR_CODE_SHAPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §5.2 error charset
LOG_ID_SHAPE = re.compile(r"[A-Za-z0-9_.-]{1,80}")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


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
    payload = normalize_token_reply(reply, secrets=form.values())
    if form["grant_type"] == "refresh_token" and "refresh_token" not in payload:
        payload["refresh_token"] = form["refresh_token"]  # quirk Q8: keep the client able to refresh
    return payload


def revoke_answer(reply: UpstreamReply, form: Mapping[str, str]) -> dict[str, Any]:
    return normalize_revoke_reply(reply, secrets=form.values())


def raise_tiktok_error(reply: UpstreamReply, parts: list[dict[str, Any]], secrets: Iterable[str]) -> None:
    for part in parts:
        error = _tiktok_error(part)
        if error is not None:
            code, description, log_id = error
            raise _client_error(reply, code, description, log_id or reply.log_id, secrets)


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
    return OAuthError(502, "server_error", description, log_id=reply.log_id)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


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
        return "invalid_request", f"TikTok error {code}: {part.get('description') or 'no description'}", part.get("log_id")
    return None


def _client_error(reply: UpstreamReply, code: str, description: Any, log_id: Any, secrets: Iterable[str]) -> OAuthError:
    log_id = _clean_log_id(log_id)
    if reply.status == 429 or code == "rate_limit_exceeded":
        return _rate_limited(reply, log_id)
    if not ERROR_CODE_SHAPE.fullmatch(code):
        code = "invalid_request"
    text = _clean_text(description, secrets) or f"TikTok refused the request ({code})"
    return OAuthError(ERROR_STATUS.get(code, 400), code, text, log_id=log_id)


def _rate_limited(reply: UpstreamReply, log_id: str | None) -> OAuthError:
    retry_after = reply.retry_after if reply.retry_after and reply.retry_after.isdigit() else None
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
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise unusable(f"a {name} that is not a whole number of seconds")
        payload[name] = value
    for name in ("refresh_token", "open_id", "scope"):
        value = part.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise unusable(f"a {name} that is not a string")
        payload[name] = value
    if "scope" in payload:  # quirk Q2: TikTok joins scopes with commas; RFC 6749 §3.3 with spaces
        payload["scope"] = " ".join(split_scopes(payload["scope"]))
    return payload


def split_scopes(scope: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", scope) if item]


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _clean_text(value: Any, secrets: Iterable[str]) -> str:
    if not isinstance(value, str):
        return ""
    # Redact before truncating, so no fragment of a secret can survive.
    return CONTROL_CHARS.sub(" ", redact(value, secrets)).strip()[:300]


def _clean_log_id(value: Any) -> str | None:
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if LOG_ID_SHAPE.fullmatch(text) else None


# ----------------------------------------------------------------------------------------- logging


PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.,:/@+-]+")


def logfmt(**fields: Any) -> str:
    """key=value pairs; any value that is not a plain word is JSON-quoted, so CR/LF cannot forge lines."""
    out = []
    for key, value in fields.items():
        if value is None:
            text = "-"
        elif isinstance(value, (int, float)):  # bool included: always plain
            text = str(value)
        else:
            text = str(value)[:200]
            if not PLAIN_VALUE.fullmatch(text):
                text = json.dumps(text)
        out.append(f"{key}={text}")
    return " ".join(out)


def log_outcome(status: int, **fields: Any) -> None:
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    log.log(level, logfmt(**fields, status=status))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def logging_config(level: str) -> dict[str, Any]:
    """One stderr handler on the root logger, for this process and for every uvicorn worker."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
    }


# ------------------------------------------------------------------------------------------ routes


@dataclass(frozen=True)
class Relay:
    """One TikTok OAuth endpoint the proxy relays to: what to send it, and how to read its answer."""

    event: str  # names the exchange in the log line
    url: Callable[[Settings], str]
    build_form: Callable[[Mapping[str, str], str, str], dict[str, str]]
    answer: Callable[[UpstreamReply, Mapping[str, str]], dict[str, Any]]


TOKEN = Relay("token", lambda settings: settings.token_url, tiktok_token_form, token_answer)
REVOKE = Relay("revoke", lambda settings: settings.revoke_url, tiktok_revoke_form, revoke_answer)


async def relay(request: Request, to: Relay) -> Response:
    """Every rule of a relayed request, in order: parse, authenticate, allow, send once, normalize, log."""
    settings: Settings = request.app.state.settings
    started = time.perf_counter()
    fields: dict[str, Any] = {"grant": None, "client_key": None, "upstream_status": None, "log_id": None}
    try:
        params = parse_params(request.headers.get("content-type", ""), await read_body(request))
        if log.isEnabledFor(logging.DEBUG):
            # Known names only: an unknown "name" can hold anything, e.g. a whole JSON body sent as a form.
            known = sorted(name for name in params if name in KNOWN_PARAMS)
            log.debug(logfmt(event=f"{to.event}_request", params=",".join(known), unknown_params=len(params) - len(known),
                             authorization_header="authorization" in request.headers))
        client_key, client_secret = client_credentials(request, params)
        fields["client_key"] = client_key
        check_allowed(settings, client_key)
        form = to.build_form(params, client_key, client_secret)
        fields["grant"] = form.get("grant_type")
        reply = await post_form(request.state.upstream, to.url(settings), form, settings.timeout)
        fields["upstream_status"], fields["log_id"] = reply.status, reply.log_id
        response: Response = JSONResponse(to.answer(reply, form), headers=NO_STORE)
        outcome = "ok"
    except OAuthError as err:
        response, outcome = err.response(), err.error
        fields["log_id"] = err.log_id or fields["log_id"]
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    log_outcome(response.status_code, event=to.event, outcome=outcome, **fields, duration_ms=duration_ms)
    return response


async def token_endpoint(request: Request) -> Response:
    """POST /proxy/token: Auth0's token request in, TikTok's answer normalized out."""
    return await relay(request, TOKEN)


async def revoke_endpoint(request: Request) -> Response:
    """POST /proxy/revoke: an RFC 7009 revocation, relayed to TikTok's revoke endpoint."""
    return await relay(request, REVOKE)


AUTHORIZE_DROPPED = frozenset({"client_id", "client_key", "client_secret"})


async def authorize_endpoint(request: Request) -> Response:
    """GET /proxy/authorize: redirect to TikTok's v2 authorize page, rewritten the way TikTok wants it."""
    settings: Settings = request.app.state.settings
    client_key = None
    try:
        params = unique_params(parse_query(request.url.query))
        client_key = _one_name(params, "client_id", "client_key")
        if client_key is None:
            raise missing("client_id")
        check_allowed(settings, client_key)
        query = {"client_key": client_key}
        for name, value in params.items():
            if name == "scope":
                value = ",".join(split_scopes(value))  # quirk Q2: comma-separated scopes
            if name not in AUTHORIZE_DROPPED:  # a secret never belongs in a browser URL
                query[name] = value
    except OAuthError as err:
        log_outcome(err.status, event="authorize", outcome=err.error, client_key=client_key)
        return err.response()
    log_outcome(302, event="authorize", outcome="redirect", client_key=client_key)
    # Only ever the configured TikTok URL: nothing in the request can choose where the browser goes.
    location = f"{settings.authorize_url}?{urlencode(query)}"
    return RedirectResponse(location, status_code=302, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 as OAuth-style JSON, like every other answer (Starlette's default is plain text)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        description = f"method not allowed here; allowed: {(exc.headers or {}).get('Allow', '')}"
    elif exc.status_code == 404:
        description = "no such endpoint; the token endpoint is POST /proxy/token"
    else:
        description = "the request could not be handled"
    body = {"error": "invalid_request", "error_description": description}
    return JSONResponse(body, status_code=exc.status_code, headers={**NO_STORE, **(exc.headers or {})})


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Last resort: a JSON answer, never an HTML page. (uvicorn still logs the traceback.)"""
    body = {"error": "server_error", "error_description": "unexpected error in the proxy; see its log"}
    return JSONResponse(body, status_code=500, headers=NO_STORE)


# --------------------------------------------------------------------------------------------- app


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app."""
    settings = settings or settings_or_exit()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        log.setLevel(settings.log_level)
        # uvicorn's access log prints query strings, where a careless client may put a secret; the proxy's own
        # line per exchange replaces it, however the server was started.
        logging.getLogger("uvicorn.access").disabled = True
        if not logging.getLogger().handlers:  # e.g. under `uvicorn proxy:app`, which configures only its own
            logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
        log.info(logfmt(event="start", token_url=settings.token_url, revoke_url=settings.revoke_url,
                        timeout=settings.timeout, allowed_client_keys=len(settings.allowed_client_keys)))
        if not settings.allowed_client_keys:
            log.warning("ALLOWED_CLIENT_KEYS is empty: the proxy relays for any client key (set it in production)")
        # Everything allocated so far lives for the whole process: keep the collector from rescanning it,
        # which otherwise shows up as latency spikes under load.
        gc.freeze()
        client = UpstreamClient(max_body=MAX_UPSTREAM_BYTES)
        try:
            yield {"upstream": client}
        finally:
            await client.aclose()

    routes = [
        Route(path, endpoint, methods=[method])
        for base, endpoint, method in [
            ("/proxy/token", token_endpoint, "POST"),
            ("/proxy/revoke", revoke_endpoint, "POST"),
            ("/proxy/authorize", authorize_endpoint, "GET"),
        ]
        for path in (base, base + "/")  # TikTok's own URLs end in '/', so users may paste ours that way too
    ]
    app = Starlette(
        routes=[*routes, Route("/healthz", healthz, methods=["GET"])],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a 307 would make the client re-send its secret; answer or 404
    app.state.settings = settings
    return app


def __getattr__(name: str) -> Any:
    """`proxy:app` for uvicorn, built on first use: importing this module reads no configuration."""
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="TikTok token proxy for Auth0 custom social connections. With no command, it serves."
    )
    parser.add_argument("--host", help="address to listen on (default: HOST, or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT, or 3333)")
    commands = parser.add_subparsers(dest="command", metavar="command")
    setup = commands.add_parser("setup-auth0", help="create or update the Auth0 connection through the Management API")
    setup.add_argument("--dry-run", action="store_true", help="show the changes without writing them")
    setup.add_argument("--use-proxy-authorize", action="store_true", help="Authorization URL: PUBLIC_URL/proxy/authorize")
    setup.add_argument("--app", action="append", metavar="CLIENT_ID", help="enable the connection for this Auth0 application")
    doctor = commands.add_parser("doctor", help="check the proxy, the tunnel and the Auth0 connection")
    revoke = commands.add_parser("revoke-user", help="revoke an Auth0 user's TikTok grant (account deletion)")
    revoke.add_argument("user_id", help="the Auth0 user id, e.g. oauth2|tiktok|<open_id>")
    revoke.add_argument("--delete-user", action="store_true", help="then delete the Auth0 user, once the revoke worked")
    revoke.add_argument("--force", action="store_true", help="with --delete-user: delete even if the revoke failed")
    for command in (setup, doctor, revoke):
        command.add_argument("--domain", help="Auth0 domain (default: AUTH0_DOMAIN)")
        command.add_argument("--connection", help="connection name (default: AUTH0_CONNECTION_NAME, or tiktok)")
    for command in (setup, doctor):
        command.add_argument("--public-url", help="where Auth0 reaches the proxy (default: PUBLIC_URL)")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error("--port must be between 1 and 65535")
    if args.command:
        import auth0_admin  # the Auth0 tooling; the server never loads it

        raise SystemExit(auth0_admin.run_command(args))

    settings = settings_or_exit()
    uvicorn.run(
        "proxy:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=settings.workers,
        log_config=logging_config(settings.log_level),
        access_log=False,  # access lines would carry query strings; the proxy logs one line per exchange
        # On SIGTERM: stop accepting, let in-flight exchanges finish; none can outlast TIKTOK_TIMEOUT.
        timeout_graceful_shutdown=math.ceil(settings.timeout) + 1,
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

"""Reading Auth0's request: the body cap, form or JSON parameters, and the client credentials (body or Basic).

Everything here refuses bad input with an OAuthError before TikTok is called, and names only known
parameters in its messages, never a value.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, unquote_plus

from starlette.datastructures import Headers
from starlette.types import Receive

from . import metrics
from .config import Settings
from .errors import OAuthError, invalid_request, missing

# Set in the request's state by serving.py when it cuts the body (REQUEST_TIMEOUT, a malformed chunk, trailer fields
# past the head cap): the disconnect the app then sees is that cut, already answered (408, 400, 431) and logged there.
CUT_BY_DEADLINE = "cut_by_deadline"
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


def body_too_large() -> OAuthError:
    metrics.refused("body")
    return OAuthError(413, "invalid_request", f"the request body is over {MAX_BODY_BYTES} bytes")


async def read_body(headers: Headers, receive: Receive) -> bytes:
    """Read the body from the ASGI messages, refusing more than MAX_BODY_BYTES whatever Content-Length claims."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise body_too_large()
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise invalid_request("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise body_too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
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


class _JSONObject(list[tuple[str, object]]):
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
    pairs = []
    for name, value in document:
        if not isinstance(value, str):
            named = f"parameter {name}" if name in KNOWN_PARAMS else "every parameter"
            raise invalid_request(f"{named} must be a string")
        if not (_is_unicode_text(name) and _is_unicode_text(value)):
            # JSON can escape half a surrogate pair ("\ud800"), which no UTF-8 form can carry on to TikTok.
            raise invalid_request("the JSON body holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
        pairs.append((name, value))
    return pairs


def _is_unicode_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def client_credentials(
    headers: Headers, params: Mapping[str, str], absent: Callable[[str], OAuthError] = missing
) -> tuple[str, str]:
    """The client key and secret, from the body or from HTTP Basic (RFC 6749 §2.3.1), not both.

    `absent(name)` is the error for a missing client_id or client_secret: the relay's invalid_request by default."""
    body_key = one_of(params, "client_id", "client_key")
    body_secret = params.get("client_secret")
    authorizations = headers.getlist("authorization")
    if len(authorizations) > 1:
        raise invalid_request("send one Authorization header")
    scheme, _, credentials = (authorizations or [""])[0].strip().partition(" ")
    if scheme.lower() != "basic":
        if body_key is None:
            raise absent("client_id")
        if body_secret is None:
            raise absent("client_secret")
        return body_key, body_secret
    basic_key, basic_secret = _decode_basic(credentials.strip())
    if body_secret is not None or (body_key is not None and body_key != basic_key):
        raise invalid_request("send the client credentials in the body or as HTTP Basic, not both")
    return basic_key, basic_secret


def one_of(params: Mapping[str, str], name: str, synonym: str) -> str | None:
    """The value of a parameter that has a synonym (client_id / client_key); they must not disagree."""
    if name in params and synonym in params and params[name] != params[synonym]:
        raise invalid_request(f"{name} and {synonym} differ; send one of them")
    return params.get(name, params.get(synonym))


def _decode_basic(credentials: str) -> tuple[str, str]:
    malformed = OAuthError(401, "invalid_client", "the HTTP Basic credentials are malformed")
    try:
        # ValueError covers binascii.Error, and b64decode refusing a header byte over 0x7f in the text itself.
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise malformed from None
    key, colon, secret = decoded.partition(":")
    # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
    key, secret = unquote_plus(key), unquote_plus(secret)
    if not colon or not key or not secret:
        raise malformed
    return key, secret


def check_allowed(settings: Settings, client_key: str) -> None:
    """Refuse unknown client keys before TikTok is called, so the proxy is not an open relay.

    With the proxy's own key set (TIKTOK_CLIENT_KEY) and no ALLOWED_CLIENT_KEYS, only that key is served."""
    if settings.tiktok_client_key and client_key == settings.tiktok_client_key:
        return
    allowed = settings.allowed_client_keys
    if (allowed or settings.tiktok_client_key) and client_key not in allowed:
        raise OAuthError(401, "invalid_client", ALLOW_LIST_REFUSAL)


GATE_HEADER = "X-Proxy-Secret"
# The proxy's own invalid_client answers say so, so that `doctor` can tell them from TikTok's.
GATE_REFUSAL = f"this proxy requires the {GATE_HEADER} header"
ALLOW_LIST_REFUSAL = "this client key is not allowed by the proxy (ALLOWED_CLIENT_KEYS)"
OWN_SECRET_REFUSAL = "the client secret is not the one this proxy holds for its client key (TIKTOK_CLIENT_SECRET)"


def gate_mode(settings: Settings, header: bool = True) -> str:
    """The checks a token or revoke request meets, for the startup line: e.g. own_key+header, or open.
    header=False: the facade's token endpoint (check_own_secret, check_allowed), which relying parties reach
    without X-Proxy-Secret."""
    checks = [
        ("own_key", bool(settings.tiktok_client_secret)),
        ("header", header and bool(settings.proxy_secrets)),
        ("allow_list", bool(settings.allowed_client_keys)),
    ]
    return "+".join(name for name, on in checks if on) or "open"


def check_gate_before_body(settings: Settings, headers: Headers) -> None:
    """When the header alone decides (PROXY_SECRET, and no own key), refuse before reading the body: a caller
    without the secret then costs nothing. With an own key, the body's client key decides (check_client)."""
    if settings.proxy_secrets and not settings.tiktok_client_secret:
        check_gate(settings, headers)


def check_client(settings: Settings, headers: Headers, client_key: str, client_secret: str) -> None:
    """The gate, once the client is known.

    - The proxy's own key: its secret is the proof, checked here in constant time; X-Proxy-Secret is not needed
      (Token Vault's refreshes may come without Auth0's customHeaders). A wrong secret never reaches TikTok.
    - Any other key: the allow-list (only the own key, when ALLOWED_CLIENT_KEYS is empty), then X-Proxy-Secret
      when PROXY_SECRET is set (already checked before the body when there is no own key).
    """
    if check_own_secret(settings, client_key, client_secret):
        return
    check_allowed(settings, client_key)
    if settings.tiktok_client_secret:
        check_gate(settings, headers)


def check_own_secret(settings: Settings, client_key: str, client_secret: str) -> bool:
    """For the proxy's own key, its secret compared in constant time: True when it matches, and a wrong one is
    refused here, so it never reaches TikTok. False for any other key, whose secret only TikTok can check."""
    if not (settings.tiktok_client_secret and client_key == settings.tiktok_client_key):
        return False
    sent = client_secret.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(sent, settings.tiktok_client_secret.encode()):
        metrics.refused("gate")
        raise OAuthError(401, "invalid_client", OWN_SECRET_REFUSAL)
    return True


def check_gate(settings: Settings, headers: Headers) -> None:
    """With PROXY_SECRET set, only callers that send one of its values (Auth0's customHeaders) get through.

    The client key cannot serve as this gate: it is public, in every authorize URL.
    """
    if not settings.proxy_secrets:
        return
    sent = headers.getlist(GATE_HEADER)
    # Compare against every configured value, in constant time, so timing tells nothing about any of them.
    matches = (
        [hmac.compare_digest(sent[0].encode(), secret.encode()) for secret in settings.proxy_secrets]
        if len(sent) == 1
        else []
    )
    if not any(matches):
        metrics.refused("gate")
        problem = "is missing" if not sent else "is repeated" if len(sent) > 1 else "does not match"
        raise OAuthError(
            401,
            "invalid_client",
            f"{GATE_REFUSAL} from your Auth0 connection's customHeaders, and it {problem} (PROXY_SECRET)",
        )

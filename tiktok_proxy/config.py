"""Configuration: read once from the environment and an optional `.env`, validated, frozen.

A bad value raises ConfigError with one line that names the variable; `settings_or_exit` prints it and stops.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from dotenv import load_dotenv

DEFAULT_TOKEN_URL = "https://open.tiktokapis.com/v2/oauth/token/"
DEFAULT_AUTHORIZE_URL = "https://www.tiktok.com/v2/auth/authorize/"
DEFAULT_REVOKE_URL = "https://open.tiktokapis.com/v2/oauth/revoke/"
DEFAULT_USERINFO_URL = "https://open.tiktokapis.com/v2/user/info/"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OIDC_SUBJECTS = ("open_id", "union_id")
if TYPE_CHECKING:  # cryptography loads only once the OpenID Connect facade is on: the token route never needs it
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    # The keys the OpenID Connect facade signs with: RSA (RS256) or EC P-256 (ES256).
    SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


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
    log_format: str = "plain"  # or "json": one JSON object per line, for log platforms
    workers: int = 1
    # Serving limits (tiktok_proxy/serving.py): the whole request within this many seconds, and at most this
    # many open connections per worker.
    request_timeout: float = 10.0
    # Idle seconds a kept-alive connection stays open between requests: above the front doors' own idle timeouts
    # (AWS ALB 60 s, nginx 60 s, Go's http.Transport 90 s), so that the front door, never the proxy, closes it.
    keep_alive_timeout: int = 75
    max_connections: int = 0  # 0: automatic, 1000 or less, well below the open-file limit (serving.py)
    # The gate: when set, token and revoke requests must carry X-Proxy-Secret with one of these values.
    proxy_secrets: frozenset[str] = field(default_factory=frozenset, repr=False)
    # GET /metrics is served only when set, and only to `Authorization: Bearer <metrics_token>`.
    metrics_token: str = field(default="", repr=False)
    # Egress: TikTok calls go through this forward proxy (CONNECT) unless the host matches no_proxy.
    egress_proxy: str = field(default="", repr=False)  # may carry user:password; log egress_proxy_origin()
    no_proxy: str = ""
    ca_file: str = ""  # SSL_CERT_FILE: a CA bundle in place of certifi's, for networks that inspect TLS
    # The proxy's own TikTok app. When both are set, token and revoke requests for this key must carry this
    # secret (the proxy checks it itself, so Auth0 needs no header), and with no ALLOWED_CLIENT_KEYS only this key
    # is served. setup-auth0 and doctor read the same two variables (auth0/management.py).
    tiktok_client_key: str = ""
    tiktok_client_secret: str = field(default="", repr=False)
    # TIKTOK_SCOPES, comma-joined: what /proxy/authorize asks TikTok for when the request names no TikTok scope.
    scopes: str = "user.info.basic"
    # Start on a non-loopback address with no gate at all. Only for a network where nothing else can reach it.
    allow_open_relay: bool = False
    # The OpenID Connect facade (tiktok_proxy/oidc/), on only when oidc_key is set. public_url is its issuer.
    public_url: str = ""
    userinfo_url: str = DEFAULT_USERINFO_URL
    oidc_key: SigningKey | None = field(default=None, repr=False)
    oidc_previous_keys: tuple[SigningKey, ...] = field(default=(), repr=False)  # still in the JWKS
    oidc_redirect_uris: frozenset[str] = field(default_factory=frozenset)  # the relying parties' callbacks
    oidc_subject: str = "open_id"  # or union_id: the same sub across the developer's TikTok apps


class ConfigError(Exception):
    """A bad configuration value. The message is one line that names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable

    @property
    def fix(self) -> str:
        """What a good value looks like, for `doctor`."""
        return f"set {self.variable} to {GOOD_VALUES.get(self.variable, 'a valid value')}"


# What a good value of each variable looks like.
GOOD_VALUES = {
    "PORT": "a port from 1 to 65535, e.g. 3333",
    "TIKTOK_TOKEN_URL": f"an https URL with its trailing slash, e.g. {DEFAULT_TOKEN_URL}",
    "TIKTOK_AUTHORIZE_URL": f"an https URL, e.g. {DEFAULT_AUTHORIZE_URL}",
    "TIKTOK_REVOKE_URL": f"an https URL with its trailing slash, e.g. {DEFAULT_REVOKE_URL}",
    "TIKTOK_TIMEOUT": "seconds from 0.1 to 120, e.g. 10",
    "LOG_LEVEL": f"one of {', '.join(LOG_LEVELS)}, e.g. INFO",
    "WEB_CONCURRENCY": "a whole number of workers from 1 to 64, e.g. 2",
    "LOG_FORMAT": "plain or json",
    "REQUEST_TIMEOUT": "seconds from 1 to 300, e.g. 10",
    "KEEP_ALIVE_TIMEOUT": "whole seconds from 1 to 3600, above your front door's idle timeout, e.g. 75 (620 for Google's load balancers)",
    "MAX_CONNECTIONS": "connections per worker from 1 to 100000, well below the open-file limit (0: automatic)",
    "PROXY_SECRET": "comma-separated random values of 16 or more characters, e.g. from: openssl rand -hex 32",
    "METRICS_TOKEN": "a random value of 16 or more characters, e.g. from: openssl rand -hex 32",
    "HTTPS_PROXY": "your egress proxy, e.g. http://user:password@proxy.internal:3128",
    "SSL_CERT_FILE": "the path of a PEM CA bundle, e.g. /etc/ssl/certs/ca-certificates.crt",
    "ALLOWED_CLIENT_KEYS": "comma-separated TikTok client keys, e.g. aw1yourclientkey",
    "TIKTOK_CLIENT_KEY": "your TikTok app's Client key, with TIKTOK_CLIENT_SECRET (or neither)",
    "TIKTOK_CLIENT_SECRET": "your TikTok app's Client secret, with TIKTOK_CLIENT_KEY (or neither)",
    "ALLOW_OPEN_RELAY": "true or false (false unless nothing but your Auth0 tenant can reach the proxy)",
    "TIKTOK_USERINFO_URL": "an https URL with its trailing slash, e.g. https://open.tiktokapis.com/v2/user/info/",
    "PUBLIC_URL": "the proxy's public https address, e.g. https://tiktok-oidc.example.com",
    "OIDC_SIGNING_KEY_FILE": "the path of a PEM private key from: python proxy.py oidc-keygen",
    "OIDC_PREVIOUS_KEY_FILES": "comma-separated paths of the PEM keys signed with before",
    "OIDC_REDIRECT_URIS": "comma-separated redirect URIs of your relying parties, e.g. https://app.example.com/cb",
    "OIDC_SUBJECT": "open_id or union_id",
}


def load_dotenv_from_working_directory() -> None:
    """Add `.env` in the working directory to os.environ; variables already set win over the file.

    Only that directory: a `.env` higher up (a home directory, a monorepo's root, another project's) must
    never configure the proxy or the commands without anyone noticing. find_dotenv() would walk up to it.
    """
    load_dotenv(os.path.join(os.getcwd(), ".env"))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ`, or from the process environment plus an optional `.env`."""
    if environ is None:
        load_dotenv_from_working_directory()
        environ = os.environ
    defaults = Settings()

    def raw(name: str) -> str | None:
        value = environ.get(name, "").strip()
        return value or None

    tiktok_client_key, tiktok_client_secret = own_client(raw("TIKTOK_CLIENT_KEY"), raw("TIKTOK_CLIENT_SECRET"))
    settings = Settings(
        host=raw("HOST") or defaults.host,
        port=bounded(int, "PORT", raw("PORT"), defaults.port, 1, 65535),
        token_url=upstream_url("TIKTOK_TOKEN_URL", raw("TIKTOK_TOKEN_URL") or defaults.token_url),
        authorize_url=upstream_url("TIKTOK_AUTHORIZE_URL", raw("TIKTOK_AUTHORIZE_URL") or defaults.authorize_url),
        revoke_url=upstream_url("TIKTOK_REVOKE_URL", raw("TIKTOK_REVOKE_URL") or defaults.revoke_url),
        timeout=bounded(float, "TIKTOK_TIMEOUT", raw("TIKTOK_TIMEOUT"), defaults.timeout, 0.1, 120),
        allowed_client_keys=non_empty_set("ALLOWED_CLIENT_KEYS", raw("ALLOWED_CLIENT_KEYS")),
        log_level=log_level(raw("LOG_LEVEL") or defaults.log_level),
        log_format=one_of("LOG_FORMAT", raw("LOG_FORMAT") or defaults.log_format, ("plain", "json")),
        workers=bounded(int, "WEB_CONCURRENCY", raw("WEB_CONCURRENCY"), defaults.workers, 1, 64),
        request_timeout=bounded(float, "REQUEST_TIMEOUT", raw("REQUEST_TIMEOUT"), defaults.request_timeout, 1, 300),
        keep_alive_timeout=bounded(
            int, "KEEP_ALIVE_TIMEOUT", raw("KEEP_ALIVE_TIMEOUT"), defaults.keep_alive_timeout, 1, 3600
        ),
        max_connections=bounded(int, "MAX_CONNECTIONS", raw("MAX_CONNECTIONS"), defaults.max_connections, 0, 100_000),
        proxy_secrets=proxy_secrets(raw("PROXY_SECRET")),
        metrics_token=secret_value("METRICS_TOKEN", raw("METRICS_TOKEN") or ""),
        egress_proxy=egress_proxy(raw("HTTPS_PROXY") or raw("https_proxy") or ""),
        no_proxy=raw("NO_PROXY") or raw("no_proxy") or "",
        ca_file=ca_file(raw("SSL_CERT_FILE") or ""),
        tiktok_client_key=tiktok_client_key,
        tiktok_client_secret=tiktok_client_secret,
        scopes=",".join(split_scopes(raw("TIKTOK_SCOPES") or defaults.scopes)),
        allow_open_relay=boolean("ALLOW_OPEN_RELAY", raw("ALLOW_OPEN_RELAY")),
    )
    settings = oidc_settings(raw, settings)
    require_gate_off_loopback(settings)
    return settings


def oidc_settings(raw: Callable[[str], str | None], settings: Settings) -> Settings:
    """The facade's settings. Without OIDC_SIGNING_KEY_FILE it is off and the rest is not checked."""
    userinfo_url = upstream_url("TIKTOK_USERINFO_URL", raw("TIKTOK_USERINFO_URL") or DEFAULT_USERINFO_URL)
    key_file = raw("OIDC_SIGNING_KEY_FILE")
    if key_file is None:
        return replace(settings, userinfo_url=userinfo_url, public_url=(raw("PUBLIC_URL") or "").rstrip("/"))
    if not settings.allowed_client_keys and not settings.tiktok_client_key:
        # The facade's client_id is a TikTok client key: without one named, anyone's app could use this issuer.
        raise ConfigError("ALLOWED_CLIENT_KEYS", "ALLOWED_CLIENT_KEYS (or TIKTOK_CLIENT_KEY) must name the TikTok "
                          "client keys the OpenID Connect facade serves (OIDC_SIGNING_KEY_FILE is set)")  # fmt: skip
    redirect_uris = comma_set(raw("OIDC_REDIRECT_URIS"))
    if not redirect_uris:
        raise ConfigError("OIDC_REDIRECT_URIS", "OIDC_REDIRECT_URIS must list your relying parties' redirect URIs "
                          "(OIDC_SIGNING_KEY_FILE is set)")  # fmt: skip
    for uri in redirect_uris:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise ConfigError(
                "OIDC_REDIRECT_URIS", f"OIDC_REDIRECT_URIS must hold absolute URLs with no fragment, got {uri!r}"
            )
    previous = [path.strip() for path in (raw("OIDC_PREVIOUS_KEY_FILES") or "").split(",") if path.strip()]
    return replace(
        settings,
        userinfo_url=userinfo_url,
        public_url=issuer_url(raw("PUBLIC_URL")),
        oidc_key=signing_key("OIDC_SIGNING_KEY_FILE", key_file),
        oidc_previous_keys=tuple(signing_key("OIDC_PREVIOUS_KEY_FILES", path) for path in previous),
        oidc_redirect_uris=redirect_uris,
        oidc_subject=one_of("OIDC_SUBJECT", raw("OIDC_SUBJECT") or "open_id", OIDC_SUBJECTS),
    )


def issuer_url(value: str | None) -> str:
    """PUBLIC_URL as the facade's issuer: one exact string everywhere, so without a trailing '/'."""
    if value is None:
        raise ConfigError(
            "PUBLIC_URL", "PUBLIC_URL must be set: it is the OpenID Connect issuer (OIDC_SIGNING_KEY_FILE is set)"
        )
    # The rules of TikTok's URLs: absolute, https (http only for localhost), no query or fragment.
    return upstream_url("PUBLIC_URL", value).rstrip("/")


def signing_key(name: str, path: str) -> SigningKey:
    """A PEM private key the facade can sign with. Messages name the file, never anything in it."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as file:
            pem = file.read()
    except OSError as exc:
        raise ConfigError(name, f"{name} names a file that cannot be read: {path!r} ({exc.strerror})") from None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(name, f"{name}: {path!r} is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ConfigError(name, f"{name}: {path!r} must be an RSA key of 2048 bits or more, or an EC P-256 key")


Number = TypeVar("Number", int, float)


def bounded(
    cast: Callable[[str], Number], name: str, value: str | None, default: Number, low: float, high: float
) -> Number:
    if value is None:
        return default
    try:
        number = cast(value)
    except ValueError:
        raise ConfigError(name, f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(name, f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def comma_set(value: str | None) -> frozenset[str]:
    return frozenset(item.strip() for item in (value or "").split(",") if item.strip())


def split_scopes(scope: str) -> list[str]:
    """Scopes separated by commas (TikTok, quirk Q2) or spaces (RFC 6749 §3.3), in order."""
    return [item for item in re.split(r"[\s,]+", scope) if item]


def non_empty_set(name: str, value: str | None) -> frozenset[str]:
    """A comma-separated list that, once set, must hold a value: " , " must not quietly switch a check off."""
    values = comma_set(value)
    if value is not None and not values:
        raise ConfigError(
            name, f"{name} is set but holds no value (only commas and spaces): fill it in or leave it empty"
        )
    return values


def boolean(name: str, value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(name, f"{name} must be true or false, got {value!r}")


def own_client(key: str | None, secret: str | None) -> tuple[str, str]:
    """TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET go together: half of the pair would check nothing."""
    if bool(key) != bool(secret):
        absent, present = (
            ("TIKTOK_CLIENT_SECRET", "TIKTOK_CLIENT_KEY") if key else ("TIKTOK_CLIENT_KEY", "TIKTOK_CLIENT_SECRET")
        )
        raise ConfigError(
            absent,
            f"{absent} is not set, but {present} is: set both (the proxy then checks the secret itself) or neither",
        )
    return key or "", secret or ""


def has_gate(settings: Settings) -> bool:
    """Something keeps strangers from relaying through the proxy: the header, its own secret, or an allow-list."""
    return bool(settings.proxy_secrets or settings.tiktok_client_secret or settings.allowed_client_keys)


def require_gate_off_loopback(settings: Settings) -> None:
    """Fail closed: reachable from other machines with no gate, the proxy would be an open relay to TikTok."""
    if is_loopback(settings.host) or has_gate(settings) or settings.allow_open_relay:
        return
    raise ConfigError(
        "PROXY_SECRET",
        f"HOST (or --host) is {settings.host}, reachable from other machines, and the proxy has no gate: set "
        "PROXY_SECRET to a random value (make one with: openssl rand -hex 32), or TIKTOK_CLIENT_KEY and "
        "TIKTOK_CLIENT_SECRET, or ALLOWED_CLIENT_KEYS (ALLOW_OPEN_RELAY=true starts it open anyway)",
    )


def upstream_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"{name} must be an absolute https URL, got {value!r}")
    # Client secrets travel to these URLs: plain http is only for a stand-in on this machine.
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(name, f"{name} must use https (http is accepted only for localhost), got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(name, f"{name} must not carry a query or a fragment, got {value!r}")
    # Quirk Q5: TikTok answers 404 "Unsupported path(Janus)" when the trailing slash is missing.
    if parts.hostname.endswith("tiktokapis.com") and not parts.path.endswith("/"):
        raise ConfigError(name, f"{name} must end with '/' (TikTok answers 404 without it), got {value!r}")
    return value


def is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise ConfigError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


MIN_SECRET_LENGTH = 16


def secret_value(name: str, value: str) -> str:
    """A shared secret: long enough not to be guessed, and printable (it travels in an HTTP header)."""
    if value and (len(value) < MIN_SECRET_LENGTH or not value.isascii() or not value.isprintable()):
        # The value itself is never echoed: this line goes to logs.
        raise ConfigError(name, f"{name} values must be at least {MIN_SECRET_LENGTH} printable ASCII characters")
    return value


def proxy_secrets(value: str | None) -> frozenset[str]:
    secrets = non_empty_set("PROXY_SECRET", value)
    for secret in secrets:
        secret_value("PROXY_SECRET", secret)
    return secrets


def egress_proxy(value: str) -> str:
    if not value:
        return ""
    parts = urlsplit(value if "://" in value else f"http://{value}")  # curl reads a bare host:port as http
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError:
        raise ConfigError("HTTPS_PROXY", "HTTPS_PROXY has a port that is not a number") from None
    if parts.scheme != "http" or not parts.hostname:
        # Never echo it: the URL may carry a password.
        raise ConfigError("HTTPS_PROXY", f"HTTPS_PROXY must be an http://host:port URL (got scheme {parts.scheme!r})")
    return parts.geturl()


def egress_proxy_origin(value: str) -> str:
    """The egress proxy as it may be logged: scheme://host:port, never its user or password."""
    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 80}" if value else ""


def ca_file(value: str) -> str:
    if value and not os.path.isfile(value):
        raise ConfigError("SSL_CERT_FILE", f"SSL_CERT_FILE names no readable file: {value!r}")
    return value


def log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ConfigError("LOG_LEVEL", f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.upper()


def settings_or_exit() -> Settings:
    """Load settings; on a bad value print one line naming the variable and stop (no traceback)."""
    try:
        return load_settings()
    except ConfigError as err:
        print_error(err)
        raise SystemExit(2) from None


def print_error(err: ConfigError) -> None:
    print(f"tiktok-token-proxy: configuration error: {err}", file=sys.stderr, flush=True)

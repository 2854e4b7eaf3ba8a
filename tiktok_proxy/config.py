"""Configuration: read once from the environment and an optional `.env`, validated, frozen.

A bad value raises ConfigError with one line that names the variable; `settings_or_exit` prints it and stops.
"""

from __future__ import annotations

import difflib
import ipaddress
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from dotenv import load_dotenv

DEFAULT_TOKEN_URL = "https://open.tiktokapis.com/v2/oauth/token/"
DEFAULT_AUTHORIZE_URL = "https://www.tiktok.com/v2/auth/authorize/"
DEFAULT_REVOKE_URL = "https://open.tiktokapis.com/v2/oauth/revoke/"
DEFAULT_USERINFO_URL = "https://open.tiktokapis.com/v2/user/info/"
STARTUP_FAILURE = 3  # uvicorn's exit status for an app that cannot start (uvicorn.config.STARTUP_FAILURE)
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
    # A rotation's other keys: both are published in the JWKS and open what they sealed; neither signs nor seals.
    oidc_next_keys: tuple[SigningKey, ...] = field(default=(), repr=False)  # the keys that will sign next
    oidc_previous_keys: tuple[SigningKey, ...] = field(default=(), repr=False)  # the keys signed with before
    oidc_redirect_uris: frozenset[str] = field(default_factory=frozenset)  # the relying parties' callbacks
    oidc_subject: str = "open_id"  # or union_id: the same sub across the developer's TikTok apps
    # Opt-in: TikTok has no email, so the `email` scope gets <sub>@<this domain>, never verified. Empty: no email.
    oidc_email_domain: str = ""
    # What looked wrong in the environment the settings were read from (configuration_warnings), for startup.
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)


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
    "TIKTOK_CLIENT_KEY": "your TikTok app's Client key, and TIKTOK_CLIENT_SECRET to its Client secret",
    "TIKTOK_CLIENT_SECRET": "your TikTok app's Client secret, and TIKTOK_CLIENT_KEY to its Client key",
    "ALLOW_OPEN_RELAY": "true or false (false unless nothing but your Auth0 tenant can reach the proxy)",
    "TIKTOK_USERINFO_URL": "an https URL with its trailing slash, e.g. https://open.tiktokapis.com/v2/user/info/",
    "PUBLIC_URL": "the proxy's public https address, e.g. https://tiktok-oidc.example.com",
    "OIDC_SIGNING_KEY_FILE": "the path of a PEM private key from: python proxy.py oidc-keygen --out oidc-key.pem",
    "OIDC_NEXT_KEY_FILES": "comma-separated paths of the PEM keys that will sign next, each readable",
    "OIDC_PREVIOUS_KEY_FILES": "comma-separated paths of the PEM keys signed with before",
    "OIDC_REDIRECT_URIS": "comma-separated redirect URIs of your relying parties, e.g. https://app.example.com/cb",
    "OIDC_SUBJECT": "open_id or union_id",
    "OIDC_EMAIL_DOMAIN": "a domain you own, or one under .invalid, e.g. tiktok-users.invalid (or empty: no email)",
    "NGROK_AUTHTOKEN": "your ngrok authtoken, from https://dashboard.ngrok.com/get-started/your-authtoken",
    "NGROK_DOMAIN": "your ngrok account's domain, e.g. example.ngrok-free.app (or nothing)",
}


# Every variable the proxy and its commands read: the one list of them. A new variable goes here (and into
# .env.example and docs/configuration.md, which tests/test_docs.py checks against this list).
VARIABLES = frozenset(
    {
        # the proxy
        "HOST", "PORT", "TIKTOK_TOKEN_URL", "TIKTOK_AUTHORIZE_URL", "TIKTOK_REVOKE_URL", "TIKTOK_TIMEOUT",
        "ALLOWED_CLIENT_KEYS", "TIKTOK_CLIENT_KEY", "TIKTOK_CLIENT_SECRET", "TIKTOK_SCOPES", "ALLOW_OPEN_RELAY",
        "LOG_LEVEL", "LOG_FORMAT", "REQUEST_TIMEOUT", "KEEP_ALIVE_TIMEOUT", "MAX_CONNECTIONS", "PROXY_SECRET",
        "METRICS_TOKEN", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "WEB_CONCURRENCY",
        # the OpenID Connect facade
        "PUBLIC_URL", "OIDC_SIGNING_KEY_FILE", "OIDC_NEXT_KEY_FILES", "OIDC_PREVIOUS_KEY_FILES", "OIDC_REDIRECT_URIS",
        "OIDC_SUBJECT", "OIDC_EMAIL_DOMAIN", "TIKTOK_USERINFO_URL",
        # the Auth0 commands (setup-auth0, doctor, revoke-user), besides TIKTOK_CLIENT_KEY, PUBLIC_URL...
        "AUTH0_DOMAIN", "AUTH0_MGMT_CLIENT_ID", "AUTH0_MGMT_CLIENT_SECRET", "AUTH0_MGMT_TOKEN",
        "AUTH0_CONNECTION_NAME", "AUTH0_APP_CLIENT_IDS", "TIKTOK_REDIRECT_URI",
        # python proxy.py dev
        "NGROK_AUTHTOKEN", "NGROK_DOMAIN",
    }
)  # fmt: skip
# The prefixes no other software's variables use: a variable that starts with one but is not in VARIABLES is a
# misspelling. A new family of variables adds its prefix here (LOG_, NO_, SSL_... are shared, so not listed).
OWN_PREFIXES = ("TIKTOK_", "OIDC_", "PROXY_", "AUTH0_", "NGROK_")
# The shortest a secret can be to be real: the proxy's own are refused shorter (secret_value); Auth0's and TikTok's
# are longer (logs.redact relies on it).
MIN_SECRET_LENGTH = 16
# Secrets the proxy or its commands pass on as they are, so it cannot refuse them: what certainly cannot be real is
# warned about. (PROXY_SECRET and METRICS_TOKEN are the proxy's own, and refused in that case: secret_value.)
PASSED_ON_SECRETS = ("TIKTOK_CLIENT_SECRET", "AUTH0_MGMT_CLIENT_SECRET", "AUTH0_MGMT_TOKEN")


def configuration_warnings(environ: Mapping[str, str]) -> Iterator[str]:
    """What is certainly wrong in these variables without being a bad value: a misspelt name, and a client key or
    secret that cannot be real. Never a value: these lines go to logs."""
    links = kubernetes_service_links(environ)
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(OWN_PREFIXES) and name not in VARIABLES and not upper.startswith(links):
            closest = difflib.get_close_matches(upper, sorted(VARIABLES), n=1, cutoff=0.8)
            hint = f"did you mean {closest[0]}?" if closest else "docs/configuration.md lists them"
            yield f"{name} is not a setting; {hint}"
    for name in ("TIKTOK_CLIENT_KEY", *PASSED_ON_SECRETS):
        value = environ.get(name, "").strip()
        if value and not (value.isascii() and value.isprintable() and " " not in value):
            yield f"{name} holds a space or a character that is not printable ASCII, which no real one does: copy it again"
        elif value and name in PASSED_ON_SECRETS and len(value) < MIN_SECRET_LENGTH:
            yield f"{name} is shorter than {MIN_SECRET_LENGTH} characters, too short to be real: copy it again, whole"


def kubernetes_service_links(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Kubernetes gives every container <SERVICE>_SERVICE_HOST, _SERVICE_PORT, _PORT, _PORT_3333_TCP... for each
    service in its namespace: a service named tiktok-proxy makes TIKTOK_PROXY_PORT, which is no misspelling."""
    services = [name.removesuffix("SERVICE_HOST") for name in environ if name.endswith("_SERVICE_HOST")]
    return tuple(f"{service}{suffix}" for service in services for suffix in ("SERVICE_", "PORT"))


def dotenv_file() -> str | None:
    """The `.env` the proxy and its commands read, when there is one: the working directory's.

    Only that directory: a `.env` higher up (a home directory, a monorepo's root, another project's) must
    never configure the proxy or the commands without anyone noticing. find_dotenv() would walk up to it.
    """
    path = os.path.join(os.getcwd(), ".env")
    return path if os.path.isfile(path) else None


def load_dotenv_from_working_directory() -> None:
    """Add `.env` in the working directory to os.environ; variables already set win over the file."""
    path = dotenv_file()
    if path:
        load_dotenv(path)


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
    return replace(settings, warnings=tuple(configuration_warnings(environ)))


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
        if parts.scheme == "http" and not is_loopback(parts.hostname):  # codes travel in this URL (RFC 8252 §7.3)
            raise ConfigError(
                "OIDC_REDIRECT_URIS",
                f"OIDC_REDIRECT_URIS must use https (http only on a loopback host: 127.0.0.1, [::1], localhost), "
                f"got {uri!r}",
            )
    key, next_keys, previous_keys = rotation_keys(raw, key_file)
    return replace(
        settings,
        userinfo_url=userinfo_url,
        public_url=issuer_url(raw("PUBLIC_URL")),
        oidc_key=key,
        oidc_next_keys=next_keys,
        oidc_previous_keys=previous_keys,
        oidc_redirect_uris=redirect_uris,
        oidc_subject=one_of("OIDC_SUBJECT", raw("OIDC_SUBJECT") or "open_id", OIDC_SUBJECTS),
        oidc_email_domain=email_domain(raw("OIDC_EMAIL_DOMAIN")),
    )


DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def email_domain(value: str | None) -> str:
    """OIDC_EMAIL_DOMAIN: a DNS name (two labels or more) for the made-up addresses, never TikTok's.

    tiktok.com is a real domain, TikTok's: an address there could be someone's real mailbox, and a platform that
    trusted it could link accounts by it."""
    if value is None:
        return ""
    domain = value.lower().removesuffix(".")
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(
            "OIDC_EMAIL_DOMAIN", f"OIDC_EMAIL_DOMAIN must be a domain name such as users.example.com, got {value!r}"
        )
    if domain == "tiktok.com" or domain.endswith(".tiktok.com"):
        raise ConfigError(
            "OIDC_EMAIL_DOMAIN",
            f"OIDC_EMAIL_DOMAIN must not be TikTok's domain ({value!r}): mail to the made-up addresses would go to "
            "TikTok; use a domain you own, or one under .invalid (e.g. tiktok-users.invalid)",
        )
    return domain


def issuer_url(value: str | None) -> str:
    """PUBLIC_URL as the facade's issuer: one exact string everywhere, so without a trailing '/'."""
    if value is None:
        raise ConfigError(
            "PUBLIC_URL", "PUBLIC_URL must be set: it is the OpenID Connect issuer (OIDC_SIGNING_KEY_FILE is set)"
        )
    # The rules of TikTok's URLs: absolute, https (http only for localhost), no query or fragment.
    return upstream_url("PUBLIC_URL", value).rstrip("/")


def rotation_keys(
    raw: Callable[[str], str | None], key_file: str
) -> tuple[SigningKey, tuple[SigningKey, ...], tuple[SigningKey, ...]]:
    """The current key, the next ones and the previous ones (docs/oidc.md, Key rotation), each in one role only.

    One key in two roles is a slip in a rotation's steps (a key promoted but left among the next ones, say). The
    keys themselves are compared, not the paths: two files can hold the same key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    roles = {
        "OIDC_SIGNING_KEY_FILE": [key_file],
        "OIDC_NEXT_KEY_FILES": comma_list(raw("OIDC_NEXT_KEY_FILES")),
        "OIDC_PREVIOUS_KEY_FILES": comma_list(raw("OIDC_PREVIOUS_KEY_FILES")),
    }
    keys: dict[str, list[SigningKey]] = {}
    seen: dict[bytes, str] = {}  # each public key, and where it was first found
    for name, paths in roles.items():
        keys[name] = []
        for path in paths:
            key = signing_key(name, path)
            public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if public in seen:
                raise ConfigError(name, f"{name}: {path!r} holds the same key as {seen[public]}: a key is the "
                                  "current one, a next one or a previous one, never two of these")  # fmt: skip
            seen[public] = f"{name} ({path!r})"
            keys[name].append(key)
    (current,) = keys["OIDC_SIGNING_KEY_FILE"]
    return current, tuple(keys["OIDC_NEXT_KEY_FILES"]), tuple(keys["OIDC_PREVIOUS_KEY_FILES"])


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


def comma_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def comma_set(value: str | None) -> frozenset[str]:
    return frozenset(comma_list(value))


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


# The gate to set, said the same way by the refusal below, the startup warnings and the docs (docs/gate-modes.md):
# one TikTok app's own key and secret; for several apps, the header secret and the allow-list.
GATE_ADVICE = (
    "set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET to your TikTok app's client key and secret (the proxy then checks "
    "the secret itself); for several TikTok apps behind one proxy, PROXY_SECRET (make one with: openssl rand -hex 32) "
    "and ALLOWED_CLIENT_KEYS"
)


def has_gate(settings: Settings) -> bool:
    """Something keeps strangers from relaying through the proxy: the header, its own secret, or an allow-list."""
    return bool(settings.proxy_secrets or settings.tiktok_client_secret or settings.allowed_client_keys)


def require_gate_off_loopback(settings: Settings) -> None:
    """Fail closed: reachable from other machines with no gate, the proxy would be an open relay to TikTok."""
    if is_loopback(settings.host) or has_gate(settings) or settings.allow_open_relay:
        return
    raise ConfigError(
        "TIKTOK_CLIENT_KEY",
        f"HOST (or --host) is {settings.host}, reachable from other machines, and the proxy has no gate: "
        f"{GATE_ADVICE}. ALLOW_OPEN_RELAY=true starts it open anyway",
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
        for warning in configuration_warnings(os.environ):  # a misspelling may be the cause: say it first
            print(f"tiktok-token-proxy: warning: {warning}", file=sys.stderr)
        print_error(err)
        # In a worker of uvicorn's own supervisor (`uvicorn proxy:app --workers N`), any other status has it start the
        # worker again, and fail again, for ever: its startup-failure status (3) stops it.
        raise SystemExit(STARTUP_FAILURE if multiprocessing.parent_process() else 2) from None


def print_error(err: ConfigError) -> None:
    print(f"tiktok-token-proxy: configuration error: {err}", file=sys.stderr, flush=True)


NGROK_AUTHTOKEN_PAGE = "https://dashboard.ngrok.com/get-started/your-authtoken"


@dataclass(frozen=True)
class NgrokSettings:
    """The tunnel of `python proxy.py dev`: the ngrok account's authtoken and, when set, its static domain (every
    account has one free: the redirect URI registered at TikTok then stays the same from one run to the next)."""

    authtoken: str = field(repr=False)
    domain: str = ""


def load_ngrok_settings(environ: Mapping[str, str] | None = None) -> NgrokSettings:
    """From `environ`, or from the process environment plus an optional `.env`, as load_settings reads them."""
    if environ is None:
        load_dotenv_from_working_directory()
        environ = os.environ

    def raw(name: str) -> str | None:
        value = environ.get(name, "").strip()
        return value or None

    authtoken = raw("NGROK_AUTHTOKEN")
    if authtoken is None:
        raise ConfigError(
            "NGROK_AUTHTOKEN",
            f"NGROK_AUTHTOKEN is not set: python proxy.py dev opens its tunnel with your ngrok authtoken, from "
            f"{NGROK_AUTHTOKEN_PAGE}",
        )
    value = raw("NGROK_DOMAIN") or ""
    # The domain alone, as the SDK takes it; its https URL (ngrok's own `--url`) says the same.
    domain = value.lower().removeprefix("https://").rstrip("/")
    if domain and not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
        raise ConfigError(
            "NGROK_DOMAIN", f"NGROK_DOMAIN must be a domain name, e.g. example.ngrok-free.app, got {value!r}"
        )
    return NgrokSettings(authtoken, domain)

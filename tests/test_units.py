"""Unit tests for the pure pieces: configuration, normalization and log formatting."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from tiktok_proxy.config import (
    MIN_SECRET_LENGTH,
    OWN_PREFIXES,
    VARIABLES,
    ConfigError,
    Settings,
    configuration_warnings,
    load_settings,
)
from tiktok_proxy.errors import OAuthError, json_bytes
from tiktok_proxy.logs import REAL_SECRET_LENGTH, formatter, log, log_event, logfmt, redact
from tiktok_proxy.tiktok import form_body, normalize_token_reply, tiktok_log_id, upstream_reply
from tiktok_proxy.upstream import Answer

# ---------------------------------------------------------------------------------- configuration


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.timeout) == ("127.0.0.1", 3333, 10.0)
    assert settings.token_url == "https://open.tiktokapis.com/v2/oauth/token/"
    assert settings.authorize_url == "https://www.tiktok.com/v2/auth/authorize/"
    assert settings.allowed_client_keys == frozenset()


def test_values_are_read() -> None:
    settings = load_settings(
        {
            "HOST": "0.0.0.0",
            "PORT": "8080",
            "TIKTOK_TIMEOUT": "2.5",
            "ALLOWED_CLIENT_KEYS": " aw1, aw2 ,,",
            "LOG_LEVEL": "debug",
            "TIKTOK_TOKEN_URL": "http://127.0.0.1:9000/v2/oauth/token/",
            "WEB_CONCURRENCY": "4",
        }
    )
    assert (settings.host, settings.port, settings.timeout, settings.log_level, settings.workers) == (
        "0.0.0.0",
        8080,
        2.5,
        "DEBUG",
        4,
    )
    assert settings.allowed_client_keys == frozenset({"aw1", "aw2"})
    assert settings.token_url == "http://127.0.0.1:9000/v2/oauth/token/"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PORT", "http", "must be a number"),
        ("PORT", "70000", "between 1 and 65535"),
        ("TIKTOK_TIMEOUT", "soon", "must be a number"),
        ("TIKTOK_TIMEOUT", "0", "between"),
        ("TIKTOK_TIMEOUT", "nan", "between"),
        ("TIKTOK_TOKEN_URL", "open.tiktokapis.com/v2/oauth/token/", "absolute https URL"),
        ("TIKTOK_TOKEN_URL", "http://open.tiktokapis.com/v2/oauth/token/", "must use https"),
        ("TIKTOK_TOKEN_URL", "https://open.tiktokapis.com/v2/oauth/token", "must end with '/'"),
        ("TIKTOK_TOKEN_URL", "https://open.tiktokapis.com/v2/oauth/token/?x=1", "query"),
        ("TIKTOK_AUTHORIZE_URL", "ftp://www.tiktok.com/", "absolute https URL"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR"),
        ("WEB_CONCURRENCY", "0", "between 1 and 64"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})
    message = str(caught.value)
    assert message.startswith(name) and fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        ("PROXY_SECRT", "PROXY_SECRT is not a setting; did you mean PROXY_SECRET?"),
        ("TIKTOK_CLIENT_KYE", "TIKTOK_CLIENT_KYE is not a setting; did you mean TIKTOK_CLIENT_KEY?"),
        ("OIDC_SIGNING_KEY", "OIDC_SIGNING_KEY is not a setting; did you mean OIDC_SIGNING_KEY_FILE?"),
        ("TIKTOK_CLIENT_ID", "TIKTOK_CLIENT_ID is not a setting; did you mean TIKTOK_CLIENT_KEY?"),
        ("tiktok_client_key", "tiktok_client_key is not a setting; did you mean TIKTOK_CLIENT_KEY?"),
        ("AUTH0_MGMT_SECRET", "AUTH0_MGMT_SECRET is not a setting; did you mean AUTH0_MGMT_CLIENT_SECRET?"),
        ("TIKTOK_FAVOURITE_COLOUR", "TIKTOK_FAVOURITE_COLOUR is not a setting; docs/configuration.md lists them"),
    ],
)
def test_a_misspelt_setting_is_named_with_the_closest_one(name: str, warning: str) -> None:
    settings = load_settings({name: "some value", "PROXY_SECRET": "", "LOG_LEVEL": "INFO"})
    assert settings.warnings == (warning,)
    assert "some value" not in warning


def test_only_the_proxys_own_prefixes_are_checked() -> None:
    environ = {name: "x" for name in VARIABLES} | {"LOG_DIR": "/var/log", "NO_COLOR": "1", "SSL_CERT_DIR": "/etc"}
    environ |= {"HTTP_PROXY": "http://proxy:3128", "PROXYCHAINS_CONF_FILE": "x", "TIKTOKEN_CACHE_DIR": "/tmp"}
    # Kubernetes' links to a service named tiktok-proxy, in every container of its namespace.
    environ |= {"TIKTOK_PROXY_SERVICE_HOST": "10.0.0.7", "TIKTOK_PROXY_SERVICE_PORT": "3333"}
    environ |= {"TIKTOK_PROXY_PORT": "tcp://10.0.0.7:3333", "TIKTOK_PROXY_PORT_3333_TCP_ADDR": "10.0.0.7"}
    assert [warning for warning in configuration_warnings(environ) if "not a setting" in warning] == []
    # Without its _SERVICE_HOST, TIKTOK_PROXY_PORT is no service link: a misspelling like any other.
    del environ["TIKTOK_PROXY_SERVICE_HOST"]
    assert "TIKTOK_PROXY_PORT is not a setting; docs/configuration.md lists them" in configuration_warnings(environ)


def test_each_family_of_variables_has_its_prefix_checked_or_is_shared() -> None:
    # A new family (NGROK_ for ngrok's variables, say) must be added to OWN_PREFIXES, or here if other
    # software uses that prefix too.
    shared = {"ALLOW_", "ALLOWED_", "HTTPS_", "KEEP_", "LOG_", "MAX_", "METRICS_", "NO_", "PUBLIC_", "REQUEST_",
              "SSL_", "WEB_"}  # fmt: skip
    families = {name.split("_")[0] + "_" for name in VARIABLES if "_" in name}
    assert families - set(OWN_PREFIXES) == shared


SHORT = "{} is shorter than 16 characters, too short to be real: copy it again, whole"
SHAPE = "{} holds a space or a character that is not printable ASCII, which no real one does: copy it again"


@pytest.mark.parametrize(
    ("name", "value", "warning"),
    [
        ("TIKTOK_CLIENT_SECRET", "short-secret", SHORT),
        ("TIKTOK_CLIENT_SECRET", "a client secret with spaces", SHAPE),
        ("TIKTOK_CLIENT_SECRET", "a-secret-pasted-with\ta-tab", SHAPE),
        ("TIKTOK_CLIENT_KEY", "aw1 yourclientkey", SHAPE),
        ("AUTH0_MGMT_TOKEN", "t", SHORT),
        ("AUTH0_MGMT_TOKEN", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln", SHAPE),
        ("AUTH0_MGMT_CLIENT_SECRET", "sécret-with-an-accent-0123456789", SHAPE),
        ("AUTH0_MGMT_CLIENT_SECRET", "wrong", SHORT),
    ],
)
def test_a_secret_that_cannot_be_real_is_warned_about_never_shown(name: str, value: str, warning: str) -> None:
    pair = {"TIKTOK_CLIENT_KEY": "aw1yourclientkey", "TIKTOK_CLIENT_SECRET": "your-client-secret-0123456789"}
    assert list(configuration_warnings({**pair, name: value})) == [warning.format(name)]  # the name, not the value


def test_real_looking_credentials_raise_no_warning() -> None:
    environ = {
        "TIKTOK_CLIENT_KEY": "aw1yourclientkey",
        "TIKTOK_CLIENT_SECRET": "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6",  # 32 letters and digits, as TikTok's
        "AUTH0_MGMT_CLIENT_SECRET": "x" * 64,
        "AUTH0_MGMT_TOKEN": "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl",
    }
    assert list(configuration_warnings(environ)) == []


# ---------------------------------------------------------------------------------- normalization
# ---------------------------------------------------------------------------------- normalization


LOG_ID = "202206221854370101130062072500FFA2"  # as in TikTok's docs


def normalize(body: object, status: int = 200, **headers: str) -> dict[str, object]:
    """TikTok's answer with this body, status and headers (lower-case names), read as the proxy reads it."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = upstream_reply("https://tiktok.test/", Answer(status, headers, raw))
    return normalize_token_reply(reply, secrets=["SECRET"])


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
def test_token_type_is_normalized(token_type: str) -> None:
    assert normalize({"access_token": "a", "token_type": token_type})["token_type"] == "Bearer"


def test_success_is_decided_by_the_body_not_the_status() -> None:
    assert normalize({"access_token": "a", "expires_in": 60}, status=400) == {
        "access_token": "a",
        "token_type": "Bearer",
        "expires_in": 60,
    }


def test_an_error_wins_over_a_token_in_the_same_body() -> None:
    with pytest.raises(OAuthError) as caught:
        normalize({"access_token": "a", "error": "invalid_grant", "error_description": "no"})
    assert caught.value.error == "invalid_grant"


def test_error_descriptions_are_cleaned_and_redacted() -> None:
    with pytest.raises(OAuthError) as caught:
        normalize(
            {
                "error": "invalid_client",
                "error_description": "bad secret SECRET\r\nInjected: yes" + "x" * 500,
                "log_id": "bad id\n",
            }
        )
    assert caught.value.status == 401
    assert "SECRET" not in caught.value.description
    assert "\n" not in caught.value.description and len(caught.value.description) <= 300
    assert caught.value.log_id is None  # not a plausible log id: dropped rather than echoed


@pytest.mark.parametrize("value", [True, -1, 1.5, "60", None])
def test_expires_in_must_be_whole_seconds(value: object) -> None:
    if value is None:
        assert "expires_in" not in normalize({"access_token": "a"})
        return
    with pytest.raises(OAuthError) as caught:
        normalize({"access_token": "a", "expires_in": value})
    assert caught.value.status == 502


def test_the_log_id_header_is_kept_when_the_body_has_none() -> None:
    with pytest.raises(OAuthError) as caught:
        normalize({"error": "invalid_grant"}, **{"x-tt-logid": LOG_ID})
    assert caught.value.log_id == LOG_ID


@pytest.mark.parametrize(
    "value",
    [LOG_ID, "20220829194722CBE87ED59D524E727021", "20220701091238010004004007735002017070F8D12"],
)
def test_tiktok_log_ids_are_recognized(value: str) -> None:
    assert tiktok_log_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "HDR123", "L0G1", "202206221854370101130062072500ffa2", "20220622185437", "2022062218543７0101130062072500FFA2",
        LOG_ID + "\n", " " + LOG_ID, LOG_ID + "A" * 4000, "", None, 20220622185437010113, ["x"],
    ],
    ids=["short", "word", "lower-case", "timestamp-only", "fullwidth-digit", "newline", "space", "4KB", "empty",
         "none", "number", "list"],
)  # fmt: skip
def test_anything_else_is_no_log_id(value: object) -> None:
    assert tiktok_log_id(value) is None
    with pytest.raises(OAuthError) as caught:  # in the body or in the header alike
        normalize(
            {"error": "invalid_grant", "log_id": value}, **({"x-tt-logid": value} if isinstance(value, str) else {})
        )
    assert caught.value.log_id is None


def test_a_well_shaped_header_log_id_stands_in_for_a_malformed_one_in_the_body() -> None:
    with pytest.raises(OAuthError) as caught:
        normalize({"error": "invalid_grant", "log_id": "x" * 4096}, **{"x-tt-logid": LOG_ID})
    assert caught.value.log_id == LOG_ID


@pytest.mark.parametrize(
    "retry_after",
    ["soon", "²", "٣", "３", "1.5", "-1", " 5", "5, 7", "1234567", "Wed, 21 Oct 2026 07:28:00 GMT", ""],
)
def test_a_429_passes_on_retry_after_only_as_ascii_seconds(retry_after: str) -> None:
    with pytest.raises(OAuthError) as caught:
        normalize(b"Too Many Requests", status=429, **{"retry-after": retry_after})
    assert (caught.value.status, caught.value.error) == (429, "temporarily_unavailable")
    assert "Retry-After" not in caught.value.headers  # only a number of seconds is passed on
    assert caught.value.description == "TikTok is rate-limiting token requests; retry later"


def test_a_429_passes_on_retry_after_in_seconds() -> None:
    with pytest.raises(OAuthError) as caught:
        normalize(b"Too Many Requests", status=429, **{"retry-after": "120"})
    assert caught.value.headers["Retry-After"] == "120"


# ---------------------------------------------------------------------------------- logging


def test_logfmt_quotes_anything_that_could_forge_a_line() -> None:
    line = logfmt(client_key="evil\r\nlevel=INFO outcome=token", grant="authorization_code", log_id=None)
    assert "\n" not in line and "\r" not in line
    assert line == 'client_key="evil\\r\\nlevel=INFO outcome=token" grant=authorization_code log_id=-'


def test_json_log_lines_cannot_be_forged_and_keep_the_fields() -> None:
    import logging

    from tiktok_proxy.logs import JSONFormatter

    fields = {
        "event": "token",
        "outcome": "ok",
        "client_key": 'evil\nINFO forged {"x":1}',
        "log_id": None,
        "status": 200,
    }
    record = logging.LogRecord("tiktok_proxy", logging.INFO, __file__, 1, "msg", None, None)
    record.fields = fields
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[3:] == list(fields) and entry["client_key"] == fields["client_key"] and entry["log_id"] is None
    plain = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started %s", ("server",), None)
    assert json.loads(JSONFormatter().format(plain))["message"] == "Started server"


def test_redaction_replaces_whole_values_of_a_short_secret_never_letters_in_words() -> None:
    message = "PUBLIC_URL is not set (environment, .env or flag): t"
    assert redact(message, ["t"]) == "PUBLIC_URL is not set (environment, .env or flag): [redacted]"
    assert redact("token=t&x=y, secret 't'", ["t"]) == "token=[redacted]&x=y, secret '[redacted]'"
    assert redact("the secret is abc", ["abc"]) == "the secret is [redacted]"
    assert redact("abcdef and xabc", ["abc"]) == "abcdef and xabc"  # inside words: a coincidence


def test_redaction_removes_a_real_secret_wherever_it_is() -> None:
    secret = "s3cr3t-Client-Secret-value"
    assert len(secret) >= REAL_SECRET_LENGTH == MIN_SECRET_LENGTH  # the two modules agree on what is real
    text = f"bad secret {secret}; glued:x{secret}y; twice {secret}{secret}"
    assert redact(text, [secret]) == "bad secret [redacted]; glued:x[redacted]y; twice [redacted][redacted]"
    # One secret inside another: the longer goes first, whole, so no part of it is left.
    longer = secret + "-and-more-of-it"
    assert redact(f"a {longer} b {secret}", [secret, longer]) == "a [redacted] b [redacted]"
    assert redact("nothing here", ["", secret]) == "nothing here"


# ------------------------------------------------------------------------------------ the direct log line
# ------------------------------------------------------------------------------------ the direct log line


@pytest.fixture
def root_handler() -> Iterator[Callable[[logging.Formatter], io.StringIO]]:
    """Logging set up as the proxy sets it up itself: one stream handler on the root, nothing else."""
    saved = logging.root.handlers[:]
    saved_level = log.level

    def use(chosen: logging.Formatter) -> io.StringIO:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(chosen)
        logging.root.handlers[:] = [handler]
        return stream

    log.setLevel(logging.INFO)
    yield use
    logging.root.handlers[:] = saved
    log.setLevel(saved_level)


class PassAll(logging.Filter):
    """A filter that lets everything through: enough to send a line through logging's own path."""


FIELDS = {
    "event": "token",
    "outcome": "ok",
    "client_key": 'a"w\r\n1',
    "log_id": None,
    "duration_ms": 1.5,
    "status": 200,
}


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_the_direct_line_is_the_line_logging_writes(
    root_handler: Callable[[logging.Formatter], io.StringIO], log_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = root_handler(formatter(log_format))
    with monkeypatch.context() as patched:
        patched.setattr(log, "log", None)  # no LogRecord: calling logging would fail
        log_event(logging.WARNING, **FIELDS)  # straight to the stream
    logging.root.handlers[0].addFilter(PassAll())
    log_event(logging.WARNING, **FIELDS)  # through a LogRecord and the handler chain
    direct, through_logging = stream.getvalue().splitlines()
    timestamp = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3}"
    if log_format == "json":
        direct_entry, logged_entry = json.loads(direct), json.loads(through_logging)
        assert re.fullmatch(timestamp, direct_entry.pop("time")) and logged_entry.pop("time")
        assert direct_entry == logged_entry and list(direct_entry)[:4] == ["level", "logger", "event", "outcome"]
    else:
        assert re.match(timestamp + " WARNING tiktok_proxy event=token ", direct)
        assert direct.split(" ", 2)[2] == through_logging.split(" ", 2)[2]
        assert "\r" not in direct and "\\r\\n" in direct  # a value cannot forge a line here either


def test_handlers_and_levels_a_user_configures_are_honoured(
    root_handler: Callable[[logging.Formatter], io.StringIO],
) -> None:
    stream = root_handler(formatter("plain"))
    records: list[logging.LogRecord] = []
    mine = logging.Handler()
    mine.emit = records.append  # type: ignore[method-assign]
    log.addHandler(mine)  # a handler of the user's own: every line reaches it as a LogRecord
    try:
        log_event(logging.INFO, event="token", status=200)
    finally:
        log.removeHandler(mine)
    assert len(records) == 1 and records[0].getMessage() == "event=token status=200"
    assert "event=token status=200" in stream.getvalue()  # and the root handler still got it, through logging
    logging.root.handlers[0].setLevel(logging.WARNING)  # a level on the handler
    log_event(logging.INFO, event="token", status=201)
    assert "status=201" not in stream.getvalue()
    log.setLevel(logging.ERROR)  # and on the proxy's logger (LOG_LEVEL)
    log_event(logging.WARNING, event="token", status=401)
    assert "status=401" not in stream.getvalue()


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=6))
def test_the_form_sent_to_tiktok_is_what_urlencode_makes(form: dict[str, str]) -> None:
    assert form_body(form) == urlencode(form).encode()


def test_answers_render_as_starlettes_json_response() -> None:
    body = {"access_token": "act.é€", "expires_in": 86400, "scope": "a b", "nested": {"x": [1, None, True]}}
    assert json_bytes(body) == JSONResponse(body).body
    with pytest.raises(ValueError):
        json_bytes({"nan": float("nan")})  # allow_nan=False, as Starlette's

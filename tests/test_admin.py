"""setup-auth0, doctor and revoke-user against local stand-ins of Auth0's Management API and of TikTok."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from starlette.responses import PlainTextResponse

from tiktok_proxy.app import create_app
from tiktok_proxy.auth0.doctor import PROBE_CODE, doctor
from tiktok_proxy.auth0.management import load_admin_settings
from tiktok_proxy.config import DEFAULT_REVOKE_URL, DEFAULT_TOKEN_URL, Settings

from conftest import ServerThread, free_port
from stand_ins.auth0_management import ALL_SCOPES, MGMT_CLIENT_ID, MGMT_CLIENT_SECRET, Auth0StandIn
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REVOKE_PATH, TOKEN_PATH, TikTokStandIn

REPO = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://proxy.example.ngrok-free.app"
GATE_SECRET = "gate-secret-for-the-tests-0123456789"
NEW_GATE_SECRET = "a-brand-new-gate-secret-value"  # the next value, during a rotation
SCRIPT = (REPO / "tiktok_proxy" / "auth0" / "fetch-user-profile.js").read_text()


@pytest.fixture
def env(
    auth0_server: tuple[Auth0StandIn, ServerThread], stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> dict[str, str]:
    _, auth0_http = auth0_server
    _, tiktok_http = stand_in_server
    return {
        "PATH": os.environ["PATH"],
        "AUTH0_DOMAIN": auth0_http.url,
        "AUTH0_MGMT_CLIENT_ID": MGMT_CLIENT_ID,
        "AUTH0_MGMT_CLIENT_SECRET": MGMT_CLIENT_SECRET,
        "TIKTOK_CLIENT_KEY": CLIENT_KEY,
        "TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
        "PUBLIC_URL": PUBLIC_URL,
        "TIKTOK_TOKEN_URL": tiktok_http.url + TOKEN_PATH,
        "TIKTOK_REVOKE_URL": tiktok_http.url + REVOKE_PATH,
    }


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(REPO / "proxy.py"), *args],
        env=env,
        cwd=cwd or REPO / "tests",
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    for secret in (MGMT_CLIENT_SECRET, CLIENT_SECRET):
        assert secret not in output
    return result


# ----------------------------------------------------------------------------------- setup-auth0


def test_setup_creates_the_connection(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    result = cli(env, "setup-auth0", "--app", "app-one")
    assert result.returncode == 0, result.stderr
    (connection,) = auth0.connections.values()
    assert (connection["name"], connection["strategy"]) == ("tiktok", "oauth2")
    assert connection["options"] == {
        "authorizationURL": "https://www.tiktok.com/v2/auth/authorize/",
        "tokenURL": f"{PUBLIC_URL}/proxy/token",
        "scope": "user.info.basic",
        "client_id": CLIENT_KEY,
        "client_secret": CLIENT_SECRET,
        "upstream_params": {"client_key": {"value": CLIENT_KEY}},
        "scripts": {"fetchUserProfile": SCRIPT},
    }
    assert auth0.enabled[connection["id"]] == {"app-one"}
    assert "connection tiktok: was created" in result.stdout
    assert "client_secret: set (hidden)" in result.stdout
    assert "enable for applications app-one: done" in result.stdout


def test_setup_twice_changes_nothing_the_second_time(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    assert cli(env, "setup-auth0", "--app", "app-one").returncode == 0
    writes = list(auth0.writes)
    second = cli(env, "setup-auth0", "--app", "app-one")
    assert second.returncode == 0
    assert auth0.writes == writes
    assert "already up to date" in second.stdout and "already enabled for applications app-one" in second.stdout


def test_setup_merges_into_existing_options(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    connection_id = auth0.add_connection(
        "tiktok",
        {
            "authorizationURL": "https://www.tiktok.com/auth/authorize/",  # v1, retired
            "tokenURL": "https://old-proxy.example/token",
            "scope": "user.info.basic user.info.profile",
            "client_id": CLIENT_KEY,
            "client_secret": "old-secret",
            "customHeaders": {"X-Tenant": "acme"},
            "upstream_params": {"disable_auto_auth": {"value": "1"}},
            "scripts": {"fetchUserProfile": "function f() { res.data.user }", "getLogoutUrl": "keep me"},
        },
    )
    env["TIKTOK_SCOPES"] = "user.info.basic user.info.profile"
    result = cli(env, "setup-auth0", "--use-proxy-authorize")
    assert result.returncode == 0, result.stderr
    options = auth0.connections[connection_id]["options"]
    assert options["customHeaders"] == {"X-Tenant": "acme"}
    assert options["upstream_params"] == {"disable_auto_auth": {"value": "1"}, "client_key": {"value": CLIENT_KEY}}
    assert options["scripts"] == {"fetchUserProfile": SCRIPT, "getLogoutUrl": "keep me"}
    assert options["scope"] == "user.info.basic,user.info.profile"
    assert options["authorizationURL"] == f"{PUBLIC_URL}/proxy/authorize"
    assert options["client_secret"] == CLIENT_SECRET
    assert f'tokenURL: "https://old-proxy.example/token" -> "{PUBLIC_URL}/proxy/token"' in result.stdout
    assert "client_secret: changed (hidden)" in result.stdout
    assert "old-secret" not in result.stdout


def test_dry_run_writes_nothing(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    result = cli(env, "setup-auth0", "--dry-run", "--app", "app-one")
    assert result.returncode == 0
    assert auth0.connections == {} and auth0.writes == []
    assert "would be created" in result.stdout and "dry run: nothing was written" in result.stdout
    assert "enable for applications app-one: would be done" in result.stdout


def test_a_management_token_can_be_given_directly(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    auth0.tokens["given-token"] = set(ALL_SCOPES)
    del env["AUTH0_MGMT_CLIENT_ID"], env["AUTH0_MGMT_CLIENT_SECRET"]
    assert cli({**env, "AUTH0_MGMT_TOKEN": "given-token"}, "setup-auth0").returncode == 0
    assert len(auth0.connections) == 1


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        ("bad-credentials", "(401 Unauthorized): check AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET"),
        (
            "missing-scope",
            "(403 Insufficient scope, expected any of: create:connections): grant the Management API app",
        ),
        ("name-clash", "(409 A connection with the same name already exists)"),
        ("rate-limited", "(429 rate limit): retry in 7 seconds"),
        ("auth0-unreachable", "could not reach Auth0 at http://127.0.0.1:"),
        ("missing-tiktok-secret", "TIKTOK_CLIENT_SECRET is not set"),
        ("plain-http-public-url", "PUBLIC_URL must be https"),
        ("not-oauth2", "exists with strategy 'google-oauth2', not oauth2"),
    ],
)
def test_setup_failures_are_one_clear_line(
    auth0: Auth0StandIn, env: dict[str, str], breakage: str, fragment: str
) -> None:
    if breakage == "bad-credentials":
        env["AUTH0_MGMT_CLIENT_SECRET"] = "wrong"
    elif breakage == "missing-scope":
        auth0.scopes.discard("create:connections")
    elif breakage == "name-clash":
        auth0.add_connection("tiktok", {})  # created meanwhile by someone else
        auth0.listing_lags = True
    elif breakage == "rate-limited":
        auth0.rate_limited = True
    elif breakage == "auth0-unreachable":
        env["AUTH0_DOMAIN"] = f"http://127.0.0.1:{free_port()}"
    elif breakage == "missing-tiktok-secret":
        del env["TIKTOK_CLIENT_SECRET"]
    elif breakage == "plain-http-public-url":
        env["PUBLIC_URL"] = "http://proxy.example"
    elif breakage == "not-oauth2":
        auth0.add_connection("tiktok", {}, strategy="google-oauth2")
    result = cli(env, "setup-auth0")
    assert result.returncode == 1
    assert result.stderr.startswith("tiktok-token-proxy: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr, result.stderr
    assert "was created" not in result.stdout and "was updated" not in result.stdout  # nothing claimed


# ---------------------------------------------------------------------------------------- doctor


@pytest.fixture(scope="module")
def https_proxy(
    tmp_path_factory: pytest.TempPathFactory, stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> Iterator[tuple[str, str]]:
    """The real proxy app on https://localhost, with a CA the doctor is told to trust (SSL_CERT_FILE).

    It relays to the TikTok stand-in (doctor's probe exchange goes all the way through), behind the gate."""
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("public")
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    _, tiktok_http = stand_in_server
    settings = Settings(
        token_url=tiktok_http.url + TOKEN_PATH,
        revoke_url=tiktok_http.url + REVOKE_PATH,
        allowed_client_keys=frozenset({CLIENT_KEY}),
        proxy_secrets=frozenset({GATE_SECRET, NEW_GATE_SECRET}),
    )
    server = ServerThread(create_app(settings))
    server.server.config.ssl_certfile = str(folder / "server.pem")
    server.server.config.load()
    with server:
        yield f"https://localhost:{server.port}", str(folder / "ca.pem")


def run_doctor(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[bool, str]:
    lines: list[str] = []
    monkeypatch.setenv("SSL_CERT_FILE", env.get("SSL_CERT_FILE", ""))
    healthy = doctor(load_admin_settings(environ=env), lines.append, environ=env)
    return healthy, "\n".join(lines)


@pytest.fixture
def healthy_tenant(
    auth0: Auth0StandIn, tiktok: TikTokStandIn, env: dict[str, str], https_proxy: tuple[str, str]
) -> dict[str, str]:
    """A tenant as setup-auth0 leaves it, a proxy behind its gate, and a TikTok that behaves (`tiktok` resets it)."""
    url, ca_file = https_proxy
    env.update(PUBLIC_URL=url, SSL_CERT_FILE=ca_file, ALLOWED_CLIENT_KEYS=CLIENT_KEY, PROXY_SECRET=GATE_SECRET)
    env["TIKTOK_TOKEN_URL"], env["TIKTOK_REVOKE_URL"] = DEFAULT_TOKEN_URL, DEFAULT_REVOKE_URL
    assert cli(env, "setup-auth0", "--app", "app-one").returncode == 0
    return env


def test_doctor_on_a_healthy_setup(healthy_tenant: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    healthy, report = run_doctor(healthy_tenant, monkeypatch)
    assert healthy, report
    assert "0 problem(s), 0 warning(s)" in report
    assert "ok       the Token URL points at this proxy" in report
    assert (
        "ok       TikTok accepts the client key and secret (it refused only the made-up code: invalid_grant)" in report
    )
    assert "ok       register this redirect URI in TikTok's portal: https://127.0.0.1/login/callback" in report
    # The same from the command line, with its exit status.
    result = cli(healthy_tenant, "doctor")
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        ("no-connection", "Auth0 has no connection named tiktok"),
        ("token-url-elsewhere", "the Token URL is https://elsewhere.example/token"),
        ("v1-authorize-url", "is TikTok's retired v1"),
        ("no-client-key", "nothing adds client_key to the authorize request"),
        ("space-separated-scopes", "are space-separated"),
        ("guide-profile-script", "the one from Auth0's guide, which always fails"),
        ("no-application", "the connection is enabled for no application"),
        ("client-key-not-allowed", "neither TIKTOK_CLIENT_KEY nor in ALLOWED_CLIENT_KEYS"),
        ("proxy-unreachable", "nothing healthy answers at https://127.0.0.1:"),
        ("public-url-http", "is not https"),
        ("token-url-without-slash", "the proxy's configuration does not load: TIKTOK_TOKEN_URL must end with '/'"),
        ("redirect-uri-with-query", "breaks TikTok's rules: no query"),
        ("management-token-refused", "Auth0 refused POST /oauth/token (401 Unauthorized)"),
        ("gate-header-missing", "the connection sends no X-Proxy-Secret: the proxy's gate would refuse every login"),
        ("gate-header-wrong", "the connection's X-Proxy-Secret is not one of PROXY_SECRET's values"),
        ("gate-secret-differs", "the proxy's gate refused the probe: PROXY_SECRET here is none of the proxy's values"),
        ("wrong-tiktok-secret", "TikTok refused the client key or secret"),
        ("tiktok-failing", "the proxy could not complete the exchange with TikTok: 502"),
    ],
)
def test_doctor_finds_each_problem(
    healthy_tenant: dict[str, str],
    auth0: Auth0StandIn,
    tiktok: TikTokStandIn,
    monkeypatch: pytest.MonkeyPatch,
    breakage: str,
    fragment: str,
) -> None:
    env = healthy_tenant
    (connection,) = auth0.connections.values()
    options = connection["options"]
    if breakage == "no-connection":
        auth0.connections.clear()
    elif breakage == "token-url-elsewhere":
        options["tokenURL"] = "https://elsewhere.example/token"
    elif breakage == "v1-authorize-url":
        options["authorizationURL"] = "https://www.tiktok.com/auth/authorize/"
    elif breakage == "no-client-key":
        del options["upstream_params"]
    elif breakage == "space-separated-scopes":
        options["scope"] = "user.info.basic user.info.profile"
    elif breakage == "guide-profile-script":
        options["scripts"]["fetchUserProfile"] = "function (a, c, cb) { cb(null, {user_id: res.data.user.union_id}) }"
    elif breakage == "no-application":
        auth0.enabled[connection["id"]].clear()
    elif breakage == "client-key-not-allowed":
        options["client_id"] = "some-other-key"  # neither TIKTOK_CLIENT_KEY nor in ALLOWED_CLIENT_KEYS
    elif breakage == "proxy-unreachable":
        env["PUBLIC_URL"] = f"https://127.0.0.1:{free_port()}"
    elif breakage == "public-url-http":
        env["PUBLIC_URL"] = "http://proxy.example"
    elif breakage == "token-url-without-slash":
        env["TIKTOK_TOKEN_URL"] = "https://open.tiktokapis.com/v2/oauth/token"
    elif breakage == "redirect-uri-with-query":
        env["TIKTOK_REDIRECT_URI"] = "https://login.example.com/login/callback?x=1"
    elif breakage == "management-token-refused":
        env["AUTH0_MGMT_CLIENT_SECRET"] = "wrong"
    elif breakage == "gate-header-missing":
        del options["customHeaders"]
        header_only(env)
    elif breakage == "gate-header-wrong":
        env["PROXY_SECRET"] = "a-new-gate-secret-not-yet-written"
        header_only(env)
    elif breakage == "gate-secret-differs":
        env["PROXY_SECRET"] = f"another-gate-secret-entirely,{GATE_SECRET}"
    elif breakage == "wrong-tiktok-secret":
        env["TIKTOK_CLIENT_SECRET"] = "a-wrong-tiktok-client-secret"
    elif breakage == "tiktok-failing":
        tiktok.fault = lambda: PlainTextResponse("<h1>oops</h1>", status_code=500)
    healthy, report = run_doctor(env, monkeypatch)
    assert not healthy
    assert fragment in report, report
    assert any(line.startswith("problem") and fragment in line for line in report.splitlines()), report
    for secret in (CLIENT_SECRET, GATE_SECRET, MGMT_CLIENT_SECRET, "a-wrong-tiktok-client-secret", PROBE_CODE):
        assert secret not in report


def header_only(env: dict[str, str]) -> None:
    """The proxy as doctor reads it holds no TikTok secret: only X-Proxy-Secret keeps strangers out."""
    del env["TIKTOK_CLIENT_KEY"], env["TIKTOK_CLIENT_SECRET"]


def test_setup_writes_the_gate_header_merged_and_hidden(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    auth0.add_connection("tiktok", {"customHeaders": {"X-Team": "identity"}, "scope": "user.info.basic"})
    env["PROXY_SECRET"] = f"{GATE_SECRET},an-older-gate-secret-still-valid"
    result = cli(env, "setup-auth0")
    assert result.returncode == 0, result.stderr
    (connection,) = auth0.connections.values()
    # The first value is the one written; the existing header stays.
    assert connection["options"]["customHeaders"] == {"X-Team": "identity", "X-Proxy-Secret": GATE_SECRET}
    assert "customHeaders.X-Proxy-Secret: set (hidden)" in result.stdout
    assert GATE_SECRET not in result.stdout + result.stderr


def test_doctor_follows_a_rotation(healthy_tenant: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Step 1 of the rotation: the proxy accepts the new value and the old one; Auth0 still sends the old one.
    healthy_tenant["PROXY_SECRET"] = f"{NEW_GATE_SECRET},{GATE_SECRET}"
    proxy_env = dict(healthy_tenant)
    header_only(proxy_env)  # a proxy that holds no TikTok secret: the header is its gate
    healthy, report = run_doctor(proxy_env, monkeypatch)
    assert healthy, report
    assert "warning  the connection sends an older X-Proxy-Secret value, still accepted" in report
    # Step 2: setup-auth0 writes the new value; doctor is satisfied.
    assert cli(healthy_tenant, "setup-auth0").returncode == 0
    healthy, report = run_doctor(proxy_env, monkeypatch)
    assert "ok       the connection's X-Proxy-Secret opens the proxy's gate" in report, report


def test_without_public_url_a_proxy_path_is_not_taken_for_this_proxy(
    healthy_tenant: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    del healthy_tenant["PUBLIC_URL"]  # the old v1 sample also serves POST /proxy/token
    _, report = run_doctor(healthy_tenant, monkeypatch)
    assert "warning  the Token URL https://localhost:" in report and "the retired v1 sample's both do" in report
    assert "fix: set PUBLIC_URL so doctor can tell which" in report


def test_a_tenant_with_many_applications_is_read_to_the_last_page(
    healthy_tenant: dict[str, str], auth0: Auth0StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    (connection,) = auth0.connections.values()
    auth0.enabled[connection["id"]] |= {f"app-{n:03}" for n in range(250)}  # three pages of 100
    result = cli(healthy_tenant, "setup-auth0", "--app", "app-249")
    assert "already enabled for applications app-249" in result.stdout, result.stdout
    healthy, report = run_doctor(healthy_tenant, monkeypatch)
    assert "the connection is enabled for 251 application(s)" in report, report


def test_doctor_names_the_bad_variable_and_a_good_value(
    healthy_tenant: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    healthy_tenant["TIKTOK_TIMEOUT"] = "soon"
    healthy, report = run_doctor(healthy_tenant, monkeypatch)
    assert not healthy
    assert "problem  the proxy's configuration does not load: TIKTOK_TIMEOUT must be a number, got 'soon'" in report
    assert "fix: set TIKTOK_TIMEOUT to seconds from 0.1 to 120, e.g. 10" in report


def test_doctor_exits_non_zero_on_a_problem(healthy_tenant: dict[str, str], auth0: Auth0StandIn) -> None:
    auth0.connections.clear()
    result = cli(healthy_tenant, "doctor")
    assert result.returncode == 1
    assert "problem  Auth0 has no connection named tiktok" in result.stdout


def test_doctor_with_nothing_set_fails_and_says_it_found_no_dotenv(tmp_path: Path) -> None:
    result = cli({"PATH": os.environ["PATH"]}, "doctor", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"settings: the environment only (no .env in {tmp_path})"
    assert "problem  TIKTOK_CLIENT_KEY is not set (nor ALLOWED_CLIENT_KEYS): no TikTok app to check" in result.stdout
    assert "fix: set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET to your TikTok app's Client key" in result.stdout
    assert lines[-1].startswith("1 problem(s), ")


def test_doctor_names_its_dotenv_and_what_is_misspelt_in_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"TIKTOK_CLIENT_KEY={CLIENT_KEY}\nTIKTOK_CLIENT_SECRET={CLIENT_SECRET}\nPROXY_SECRT={GATE_SECRET}\n"
        "AUTH0_MGMT_TOKEN=t\n"
    )
    result = cli({"PATH": os.environ["PATH"], "OIDC_SIGNING_KEY": "/keys/oidc-key.pem"}, "doctor", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0] == f"settings: the environment, then {tmp_path / '.env'}"
    assert lines[1:4] == [
        "warning  OIDC_SIGNING_KEY is not a setting; did you mean OIDC_SIGNING_KEY_FILE?",
        "warning  PROXY_SECRT is not a setting; did you mean PROXY_SECRET?",
        "warning  AUTH0_MGMT_TOKEN is shorter than 16 characters, too short to be real: copy it again, whole",
    ]
    assert "TIKTOK_CLIENT_KEY is not set" not in result.stdout  # read from the .env
    assert GATE_SECRET not in result.stdout and "/keys/oidc-key.pem" not in result.stdout


# ----------------------------------------------------------------------------------- revoke-user

USER_ID = "oauth2|tiktok|afd97af1-b87b-48b9-ac98-410aghda5344"


def tiktok_user(auth0: Auth0StandIn, access_token: str | None, refresh_token: str | None = None) -> None:
    identity = {"provider": "oauth2", "connection": "tiktok", "user_id": "tiktok|afd97af1-b87b-48b9-ac98-410aghda5344"}
    identity.update({k: v for k, v in (("access_token", access_token), ("refresh_token", refresh_token)) if v})
    auth0.users[USER_ID] = {"user_id": USER_ID, "identities": [identity]}


def test_revoke_user(auth0: Auth0StandIn, tiktok: TikTokStandIn, env: dict[str, str]) -> None:
    token = tiktok.issue_access_token()
    tiktok_user(auth0, token)
    result = cli(env, "revoke-user", USER_ID)
    assert result.returncode == 0, result.stderr
    assert tiktok.revoked == [token]
    assert USER_ID in auth0.users  # not deleted without --delete-user
    assert "revoked: the app no longer appears" in result.stdout
    assert token not in result.stdout + result.stderr


def test_an_expired_access_token_is_refreshed_then_revoked(
    auth0: Auth0StandIn, tiktok: TikTokStandIn, env: dict[str, str]
) -> None:
    stale, refresh = tiktok.issue_access_token(), tiktok.issue_refresh_token()
    tiktok.expired.add(stale)
    tiktok_user(auth0, stale, refresh)
    result = cli(env, "revoke-user", USER_ID, "--delete-user")
    assert result.returncode == 0, result.stderr
    (fresh,) = tiktok.revoked
    assert fresh not in (stale, refresh)
    assert "refreshed the access token and revoked the fresh one" in result.stdout
    assert f"deleted Auth0 user {USER_ID}" in result.stdout
    assert USER_ID not in auth0.users
    for value in (stale, refresh, fresh):
        assert value not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        ("no-tiktok-identity", f"user {USER_ID} has no identity from the tiktok connection"),
        ("missing-read-users", "(403 Insufficient scope, expected any of: read:users)"),
        ("missing-idp-token-scope", "grant the Management API app read:user_idp_tokens"),
        ("tiktok-refuses", "the revoke failed: 400 invalid_request: Access token is invalid or expired."),
    ],
)
def test_revoke_user_failures(
    auth0: Auth0StandIn, tiktok: TikTokStandIn, env: dict[str, str], breakage: str, fragment: str
) -> None:
    tiktok_user(auth0, tiktok.issue_access_token())
    if breakage == "no-tiktok-identity":
        auth0.users[USER_ID]["identities"][0]["connection"] = "google-oauth2"
    elif breakage == "missing-read-users":
        auth0.scopes.discard("read:users")
    elif breakage == "missing-idp-token-scope":
        auth0.scopes.discard("read:user_idp_tokens")
    elif breakage == "tiktok-refuses":
        tiktok_user(auth0, "act.unknown-and-no-refresh-token")
    result = cli(env, "revoke-user", USER_ID, "--delete-user")
    assert result.returncode == 1
    assert fragment in result.stderr, result.stderr
    assert USER_ID in auth0.users  # never deleted when the revoke did not happen


def test_delete_waits_for_the_revoke_unless_forced(
    auth0: Auth0StandIn, tiktok: TikTokStandIn, env: dict[str, str]
) -> None:
    tiktok_user(auth0, tiktok.issue_access_token())
    env["TIKTOK_REVOKE_URL"] = f"http://127.0.0.1:{free_port()}/v2/oauth/revoke/"  # TikTok unreachable
    refused = cli(env, "revoke-user", USER_ID, "--delete-user")
    assert refused.returncode == 1
    assert "TikTok is unreachable" in refused.stderr and "--force deletes anyway" in refused.stderr
    assert USER_ID in auth0.users and "DELETE /api/v2/users/{id}" not in auth0.writes

    forced = cli(env, "revoke-user", USER_ID, "--delete-user", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "deleting anyway (--force)" in forced.stdout
    assert USER_ID not in auth0.users


# ------------------------------------------------------------------ nothing secret shown or sent in the clear


def test_a_one_letter_secret_does_not_garble_the_message(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    # Too short to be real (doctor warns about it); redacted only where it stands as a value, so the words stay.
    del env["PUBLIC_URL"]
    result = cli({**env, "AUTH0_MGMT_TOKEN": "t"}, "setup-auth0")
    assert result.returncode == 1
    assert result.stderr == "tiktok-token-proxy: PUBLIC_URL is not set (environment, .env or flag)\n"


TEAM_HEADER_SECRET = "a-team-header-value-that-is-secret"


def test_setup_prints_no_secret_and_summarizes_the_script(auth0: Auth0StandIn, env: dict[str, str]) -> None:
    env["PROXY_SECRET"] = GATE_SECRET
    created = cli(env, "setup-auth0")  # a new connection: every option is new, customHeaders included
    assert created.returncode == 0, created.stderr
    lines = len(SCRIPT.splitlines())
    assert "  customHeaders.X-Proxy-Secret: set (hidden)" in created.stdout
    assert "  client_secret: set (hidden)" in created.stdout
    assert f"  scripts.fetchUserProfile: the shipped script, {lines} lines, installed" in created.stdout
    assert f'  tokenURL: (unset) -> "{PUBLIC_URL}/proxy/token"' in created.stdout

    # An existing connection: its own customHeaders (new to this run) and an older profile script.
    (connection,) = auth0.connections.values()
    connection["options"]["customHeaders"] = {"X-Team": TEAM_HEADER_SECRET}
    connection["options"]["scripts"]["fetchUserProfile"] = "function (a, c, cb) { cb(null, {user_id: 'x'}) }"
    connection["options"]["client_secret"] = "the-previous-client-secret"
    env["PROXY_SECRET"] = NEW_GATE_SECRET
    updated = cli(env, "setup-auth0")
    assert updated.returncode == 0, updated.stderr
    assert "  customHeaders.X-Proxy-Secret: set (hidden)" in updated.stdout
    assert f"  scripts.fetchUserProfile: the shipped script, {lines} lines, changed" in updated.stdout
    assert "  client_secret: changed (hidden)" in updated.stdout
    assert connection["options"]["customHeaders"] == {"X-Team": TEAM_HEADER_SECRET, "X-Proxy-Secret": NEW_GATE_SECRET}

    output = created.stdout + created.stderr + updated.stdout + updated.stderr
    for secret in (GATE_SECRET, NEW_GATE_SECRET, CLIENT_SECRET, TEAM_HEADER_SECRET, "the-previous-client-secret"):
        assert secret not in output
    # The script is summarized, never dumped: none of its lines is in the output.
    assert not [line for line in SCRIPT.splitlines() if len(line.strip()) > 12 and line.strip() in output]


class Recorder:
    """A plain-http forward proxy stand-in that records what reaches it and answers /healthz as the proxy would."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = b"".join(name + b": " + value + b"\n" for name, value in scope["headers"])
        self.seen.append((scope["method"], scope["path"], headers + body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status": "ok"}'})


def test_doctor_sends_no_secret_over_plain_http(
    healthy_tenant: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every plain-http request doctor makes goes through this recorder (HTTP_PROXY), so what it sent is seen.
    recorder = Recorder()
    with ServerThread(recorder) as wire:
        monkeypatch.setenv("HTTP_PROXY", wire.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the Auth0 stand-in, on loopback, is reached directly
        healthy_tenant["PUBLIC_URL"] = "http://proxy.example"
        healthy, report = run_doctor(healthy_tenant, monkeypatch)
    assert not healthy  # PUBLIC_URL must be https
    assert (
        "warning  the TikTok credentials were not tried: PUBLIC_URL http://proxy.example is plain http, and the "
        "probe would send the client secret and the gate secret in the clear" in report
    ), report
    assert [(method, path) for method, path, _ in recorder.seen] == [("GET", "/healthz")]
    for _, _, sent in recorder.seen:
        for secret in (CLIENT_SECRET, GATE_SECRET, MGMT_CLIENT_SECRET):
            assert secret.encode() not in sent


def test_the_commands_send_management_credentials_over_https_only(env: dict[str, str]) -> None:
    result = cli({**env, "AUTH0_DOMAIN": "http://tenant.example"}, "setup-auth0")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "tiktok-token-proxy: AUTH0_DOMAIN must be https (http only for localhost), got http://tenant.example"
    )


@pytest.fixture(scope="module")
def own_key_proxy(https_proxy: tuple[str, str], stand_in_server: tuple[TikTokStandIn, ServerThread]) -> Iterator[str]:
    """The proxy as the README now sets it up: it holds TIKTOK_CLIENT_SECRET and checks it itself (no header)."""
    _, ca_file = https_proxy
    _, tiktok_http = stand_in_server
    settings = Settings(
        token_url=tiktok_http.url + TOKEN_PATH,
        revoke_url=tiktok_http.url + REVOKE_PATH,
        tiktok_client_key=CLIENT_KEY,
        tiktok_client_secret=CLIENT_SECRET,
    )
    server = ServerThread(create_app(settings))
    server.server.config.ssl_certfile = str(Path(ca_file).parent / "server.pem")
    server.server.config.load()
    with server:
        yield f"https://localhost:{server.port}"


def test_doctor_on_a_proxy_that_checks_the_secret_itself(
    healthy_tenant: dict[str, str], own_key_proxy: str, tiktok: TikTokStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**healthy_tenant, "PUBLIC_URL": own_key_proxy}
    for name in ("PROXY_SECRET", "ALLOWED_CLIENT_KEYS"):
        del env[name]
    assert cli(env, "setup-auth0").returncode == 0  # the Token URL now points at this proxy
    healthy, report = run_doctor(env, monkeypatch)
    assert healthy, report
    assert "ok       the proxy's gate is own_key" in report
    assert (
        "ok       the proxy checks the connection's client secret itself: logins and Token Vault's refreshes" in report
    )
    assert "TikTok accepts the client key and secret (it refused only the made-up code: invalid_grant)" in report

    env["TIKTOK_CLIENT_SECRET"] = "not-the-secret-the-proxy-holds"
    healthy, report = run_doctor(env, monkeypatch)
    assert not healthy
    assert "problem  the proxy refused TIKTOK_CLIENT_SECRET: it holds another secret for TIKTOK_CLIENT_KEY" in report
    assert "problem  the connection's Client Secret is not the proxy's TIKTOK_CLIENT_SECRET" in report
    assert not [seen for seen in tiktok.seen if seen.form.get("client_secret") == ["not-the-secret-the-proxy-holds"]]
    for secret in (CLIENT_SECRET, "not-the-secret-the-proxy-holds", MGMT_CLIENT_SECRET):
        assert secret not in report

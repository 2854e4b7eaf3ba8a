"""`python proxy.py dev`: the whole loop in one process, behind a stand-in of ngrok's Agent SDK.

ngrok's service cannot be reached from here, so `tests/stand_ins/ngrok` comes first on PYTHONPATH: its `forward`
records what dev asked for and opens a real https front door on localhost that relays to the proxy's loopback
port, so that setup-auth0 writes its address into the Auth0 stand-in and doctor's checks really go through it.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tiktok_proxy.auth0.doctor import PROBE_CODE
from tiktok_proxy.config import ConfigError, NgrokSettings, Settings, require_gate_off_loopback
from tiktok_proxy.dev import TUNNEL, refusal

from conftest import LocalhostTLS, ServerThread, free_port
from stand_ins.auth0_management import MGMT_CLIENT_ID, MGMT_CLIENT_SECRET, Auth0StandIn
from stand_ins.ngrok import AUTHTOKEN, DOMAIN
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REVOKE_PATH, TOKEN_PATH, TikTokStandIn
from test_cli import clean_env

REPO = Path(__file__).resolve().parent.parent
GATE_SECRET = "a-gate-secret-for-dev-0123456789"
WRONG_AUTHTOKEN = "2SomeoneElsesNgrokAuthtoken_9876543210zyxw"
SECRETS = (AUTHTOKEN, WRONG_AUTHTOKEN, CLIENT_SECRET, MGMT_CLIENT_SECRET, GATE_SECRET)


@pytest.fixture
def certificates(localhost_tls: LocalhostTLS) -> tuple[str, str]:
    """The front door's certificate and key (localhost), and the CA that dev's doctor is told to trust."""
    return localhost_tls.cert_file, localhost_tls.ca_file


class DevRun:
    """`python proxy.py dev` in a process of its own, its output (stdout and stderr) read as it comes."""

    def __init__(self, env: dict[str, str], cwd: Path, record: Path, arguments: tuple[str, ...]) -> None:
        self.record = record
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), "dev", *arguments],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.end()
                pytest.fail(f"dev never printed {text!r}:\n{self.output}")
            time.sleep(0.05)

    def calls(self) -> list[dict[str, object]]:
        """What the ngrok stand-in was asked to do, in order."""
        return recorded(self.record)

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        returncode = self.process.wait(timeout=30)
        self.reader.join(10)
        return returncode

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def recorded(record: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.fixture
def dev_env(
    certificates: tuple[str, str], stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path: Path
) -> Callable[..., dict[str, str]]:
    """The environment of a dev run: the ngrok stand-in first on PYTHONPATH, TikTok's stand-in, and the variables."""
    cert, ca = certificates
    _, tiktok_http = stand_in_server

    def env(**variables: str) -> dict[str, str]:
        return clean_env(
            PYTHONPATH=str(REPO / "tests" / "stand_ins"),
            NGROK_STAND_IN_CERT=cert,
            NGROK_STAND_IN_RECORD=str(tmp_path / "ngrok-calls.jsonl"),
            SSL_CERT_FILE=ca,  # doctor trusts the front door's certificate
            TIKTOK_TOKEN_URL=tiktok_http.url + TOKEN_PATH,
            TIKTOK_REVOKE_URL=tiktok_http.url + REVOKE_PATH,
            **variables,
        )

    return env


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., DevRun]]:
    runs: list[DevRun] = []

    def start(env: dict[str, str], *arguments: str) -> DevRun:
        runs.append(DevRun(env, tmp_path, tmp_path / "ngrok-calls.jsonl", arguments))
        return runs[-1]

    yield start
    for run in runs:
        run.end()


def listening_addresses(port: int) -> set[str]:
    """Where something listens on this TCP port, from the kernel's own tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            _, local, _, state, *_ = line.split()
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def trusting(certificates: tuple[str, str]) -> ssl.SSLContext:
    """A client context that trusts the front door's certificate."""
    return ssl.create_default_context(cafile=certificates[1])


def assert_nothing_secret_and_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    for secret in SECRETS:
        assert secret not in output


# ------------------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_the_whole_loop_in_one_command(
    signum: int,
    dev_env: Callable[..., dict[str, str]],
    start_dev: Callable[..., DevRun],
    auth0: Auth0StandIn,
    auth0_server: tuple[Auth0StandIn, ServerThread],
    tiktok: TikTokStandIn,
    certificates: tuple[str, str],
    tmp_path: Path,
) -> None:
    _, auth0_http = auth0_server
    port = free_port()
    # The settings as the proxy reads them: .env in the working directory, then the environment. HOST=0.0.0.0
    # (a container's) and an old PUBLIC_URL are ignored: dev listens on loopback, at the tunnel's address.
    (tmp_path / ".env").write_text(
        f"HOST=0.0.0.0\nPORT={port}\nTIKTOK_CLIENT_KEY={CLIENT_KEY}\nTIKTOK_CLIENT_SECRET={CLIENT_SECRET}\n"
        f"AUTH0_DOMAIN={auth0_http.url}\nAUTH0_MGMT_CLIENT_ID={MGMT_CLIENT_ID}\n"
        f"AUTH0_MGMT_CLIENT_SECRET={MGMT_CLIENT_SECRET}\nAUTH0_APP_CLIENT_IDS=app-one\n"
        f"NGROK_DOMAIN=https://{DOMAIN}/\nPUBLIC_URL=https://last-time.ngrok-free.app\n"  # the domain as a URL too
    )
    run = start_dev(dev_env(NGROK_AUTHTOKEN=AUTHTOKEN), "--use-proxy-authorize")
    run.wait_for(" problem(s), ")  # doctor's summary: it ran through the tunnel

    # The tunnel: to the loopback port, with the token and the static domain.
    forwarded, listening = run.calls()
    assert forwarded == {
        "call": "forward",
        "addr": f"127.0.0.1:{port}",
        "proto": "http",
        "options": {"authtoken": AUTHTOKEN, "domain": DOMAIN},
    }
    public_url = str(listening["url"])
    assert f"ngrok tunnel open: {public_url} -> 127.0.0.1:{port}" in run.output
    # Auth0: what setup-auth0 does, against the tunnel's address, printed with secrets hidden.
    (connection,) = auth0.connections.values()
    assert connection["options"]["tokenURL"] == f"{public_url}/proxy/token"
    assert connection["options"]["authorizationURL"] == f"{public_url}/proxy/authorize"
    assert connection["options"]["client_secret"] == CLIENT_SECRET
    assert auth0.enabled[connection["id"]] == {"app-one"}
    assert f'  tokenURL: (unset) -> "{public_url}/proxy/token"' in run.output
    assert "  client_secret: set (hidden)" in run.output
    # TikTok: the redirect URI to register, and the public address.
    assert "Register at TikTok (Login Kit for Web, redirect URI): https://127.0.0.1/login/callback" in run.output
    assert f"Public address: {public_url} (PUBLIC_URL for this run)" in run.output
    # doctor, through the tunnel: its probe went front door -> proxy -> TikTok's stand-in.
    assert f"ok       the proxy answers at {public_url}/healthz" in run.output
    assert "ok       the Token URL points at this proxy" in run.output
    assert "ok       the Authorization URL is v2 (through the proxy)" in run.output
    assert "TikTok accepts the client key and secret (it refused only the made-up code: invalid_grant)" in run.output
    assert "\n0 problem(s), " in run.output, run.output
    assert [seen.form.get("code") for seen in tiktok.seen] == [[PROBE_CODE]]
    # Served on loopback only (the tunnel is the only way in), kept alive longer than ngrok's agent keeps idle ones.
    assert listening_addresses(port) == {"127.0.0.1"}
    assert "KEEP_ALIVE_TIMEOUT is 95 s for this run, not 75" in run.output
    assert "keep_alive_timeout=95" in run.output  # the serving limits as the protocol applies them
    assert httpx.get(f"{public_url}/healthz", verify=trusting(certificates)).json() == {"status": "ok"}

    assert run.stop(signum) == 0
    assert "Finished server process" in run.output  # uvicorn's graceful drain
    assert run.calls()[2:] == [{"call": "close", "url": public_url}, {"call": "kill"}]
    assert run.output.rstrip().endswith("ngrok tunnel closed"), run.output
    front_door_port = int(public_url.rsplit(":", 1)[1])
    assert listening_addresses(port) == set() and listening_addresses(front_door_port) == set()
    assert_nothing_secret_and_no_traceback(run.output)


def test_without_management_credentials_it_prints_what_to_paste(
    dev_env: Callable[..., dict[str, str]],
    start_dev: Callable[..., DevRun],
    key_files: dict[str, str],
    certificates: tuple[str, str],
) -> None:
    # The OpenID Connect facade on too: its issuer is the tunnel's address, and its callback is registered at TikTok.
    env = dev_env(
        NGROK_AUTHTOKEN=AUTHTOKEN,
        PORT=str(free_port()),
        PROXY_SECRET=GATE_SECRET,
        ALLOWED_CLIENT_KEYS=CLIENT_KEY,
        AUTH0_DOMAIN="tenant.example.auth0.com",
        OIDC_SIGNING_KEY_FILE=key_files["ec"],
        OIDC_REDIRECT_URIS="https://app.example/callback",
        KEEP_ALIVE_TIMEOUT="300",  # above ngrok's already: kept
    )
    run = start_dev(env)
    run.wait_for(" problem(s), ")
    (_, listening) = run.calls()
    public_url = str(listening["url"])
    assert (
        "No Auth0 Management API credentials (AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET): paste into the "
        "connection tiktok in the Auth0 Dashboard (Authentication > Social):\n"
        f"  Token URL: {public_url}/proxy/token\n"
        f"Register at TikTok (Login Kit for Web, redirect URI): {public_url}/oidc/callback\n"
        "Register at TikTok (Login Kit for Web, redirect URI): https://tenant.example.auth0.com/login/callback\n"
        f"Public address: {public_url} (PUBLIC_URL for this run, the OpenID Connect issuer)\n"
    ) in run.output
    assert "Authorization URL" not in run.output  # TikTok's own, which never changes, unless --use-proxy-authorize
    assert "KEEP_ALIVE_TIMEOUT is" not in run.output and "keep_alive_timeout=300" in run.output
    assert "warning  no Auth0 Management API credentials: the connection was not checked" in run.output
    discovery = httpx.get(f"{public_url}/.well-known/openid-configuration", verify=trusting(certificates))
    assert discovery.json()["issuer"] == public_url  # PUBLIC_URL reached the app
    assert run.stop(signal.SIGTERM) == 0
    assert_nothing_secret_and_no_traceback(run.output)


def test_a_problem_doctor_finds_is_printed_and_the_proxy_keeps_serving(
    dev_env: Callable[..., dict[str, str]],
    start_dev: Callable[..., DevRun],
    tiktok: TikTokStandIn,
    certificates: tuple[str, str],
) -> None:
    wrong_secret = "not-the-secret-tiktok-holds-0123"
    env = dev_env(
        NGROK_AUTHTOKEN=AUTHTOKEN,
        PORT=str(free_port()),
        TIKTOK_CLIENT_KEY=CLIENT_KEY,
        TIKTOK_CLIENT_SECRET=wrong_secret,
    )
    run = start_dev(env, "--use-proxy-authorize")
    run.wait_for("Serving through ")
    assert "problem  TikTok refused the client key or secret" in run.output
    assert "\n1 problem(s), " in run.output
    (_, listening) = run.calls()
    assert (  # without Management API credentials, what to paste: the Authorization URL too, since it was asked for
        f"  Token URL: {listening['url']}/proxy/token\n  Authorization URL: {listening['url']}/proxy/authorize\n"
    ) in run.output
    code = tiktok.issue_code()
    exchange = {"grant_type": "authorization_code", "code": code, "client_id": CLIENT_KEY}
    answer = httpx.post(
        f"{listening['url']}/proxy/token",
        data={**exchange, "client_secret": CLIENT_SECRET},
        verify=trusting(certificates),
    )
    assert answer.status_code == 401  # still serving, through the tunnel: its own gate refuses TikTok's real secret
    assert run.stop(signal.SIGTERM) == 0
    assert wrong_secret not in run.output
    assert_nothing_secret_and_no_traceback(run.output)


# ------------------------------------------------------------------------------------------- refusals


NOT_SET = "NGROK_AUTHTOKEN is not set: python proxy.py dev opens its tunnel with your ngrok authtoken, from "


@pytest.mark.parametrize(
    ("case", "status", "line", "tunnel"),
    [
        (
            "no-authtoken",
            2,
            f"configuration error: {NOT_SET}https://dashboard.ngrok.com/get-started/your-authtoken",
            [],
        ),
        ("no-gate", 2, "configuration error: {gate_refusal}", []),
        ("domain-not-a-name", 2, "configuration error: NGROK_DOMAIN must be a domain name, e.g. ", []),
        ("sdk-missing", 1, "python proxy.py dev needs ngrok's Agent SDK", []),
        ("port-taken", 1, "port {port} on 127.0.0.1 is taken (Address already in use): stop what listens there", []),
        ("auth0-incomplete", 1, "set AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET", []),
        (
            "token-refused",
            1,
            "ngrok refused NGROK_AUTHTOKEN (ERR_NGROK_107): copy yours from "
            "https://dashboard.ngrok.com/get-started/your-authtoken",
            ["forward", "kill"],
        ),
        (
            "domain-not-owned",
            1,
            "ngrok refused NGROK_DOMAIN someone-else.ngrok-free.app (ERR_NGROK_320: This domain is reserved for "
            "another account.",
            ["forward", "kill"],
        ),
        (
            "offline",
            1,
            "could not reach ngrok's service (failed to establish tcp connection): check this machine's connection",
            ["forward", "kill"],
        ),
        (
            "auth0-refuses",
            1,
            "Auth0 refused POST /oauth/token (401 Unauthorized)",
            ["forward", "listening", "close", "kill"],
        ),
    ],
)
def test_bad_input_gets_one_clear_line_and_leaves_nothing_running(
    case: str,
    status: int,
    line: str,
    tunnel: list[str],
    dev_env: Callable[..., dict[str, str]],
    auth0: Auth0StandIn,
    auth0_server: tuple[Auth0StandIn, ServerThread],
    tmp_path: Path,
) -> None:
    _, auth0_http = auth0_server
    port = free_port()
    gate = {"TIKTOK_CLIENT_KEY": CLIENT_KEY, "TIKTOK_CLIENT_SECRET": CLIENT_SECRET}
    variables = {"NGROK_AUTHTOKEN": AUTHTOKEN, "PORT": str(port), **gate}
    taken = socket.socket()
    if case == "no-authtoken":
        del variables["NGROK_AUTHTOKEN"]
    elif case == "no-gate":
        for name in gate:
            del variables[name]
    elif case == "domain-not-a-name":
        variables["NGROK_DOMAIN"] = f"{DOMAIN}:443"
    elif case == "sdk-missing":  # as if `pip install ngrok` had not been run, whatever this machine has installed
        (tmp_path / "no-sdk").mkdir()
        (tmp_path / "no-sdk" / "ngrok.py").write_text("raise ModuleNotFoundError(\"No module named 'ngrok'\")\n")
    elif case == "port-taken":
        taken.bind(("127.0.0.1", port))
        taken.listen()
    elif case == "auth0-incomplete":
        variables.update(AUTH0_DOMAIN=auth0_http.url, AUTH0_MGMT_CLIENT_ID=MGMT_CLIENT_ID)
    elif case == "token-refused":
        variables["NGROK_AUTHTOKEN"] = WRONG_AUTHTOKEN
    elif case == "domain-not-owned":
        variables["NGROK_DOMAIN"] = "someone-else.ngrok-free.app"
    elif case == "offline":
        variables["NGROK_STAND_IN_OFFLINE"] = "1"
    elif case == "auth0-refuses":
        variables.update(
            AUTH0_DOMAIN=auth0_http.url, AUTH0_MGMT_CLIENT_ID=MGMT_CLIENT_ID, AUTH0_MGMT_CLIENT_SECRET="wrong-secret"
        )
    env = dev_env(**variables)
    if case == "sdk-missing":
        env["PYTHONPATH"] = str(tmp_path / "no-sdk")
    with taken:
        result = subprocess.run(
            [sys.executable, str(REPO / "proxy.py"), "dev"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    expected = line.format(port=port, gate_refusal=gate_refusal())
    assert result.returncode == status, result.stdout + result.stderr
    assert result.stderr.startswith(f"tiktok-token-proxy: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    if case == "sdk-missing":
        assert result.stderr.rstrip().endswith("install it with .venv/bin/pip install ngrok"), result.stderr
    assert [call["call"] for call in recorded(tmp_path / "ngrok-calls.jsonl")] == tunnel
    assert auth0.connections == {}
    assert listening_addresses(port) == set()
    assert_nothing_secret_and_no_traceback(result.stdout + result.stderr)


def gate_refusal() -> str:
    """config.py's refusal of a proxy with no gate where others can reach it: dev's is the very same."""
    with pytest.raises(ConfigError) as refused:
        require_gate_off_loopback(replace(Settings(), host=TUNNEL))
    return str(refused.value)


def test_ngrok_s_other_refusals_are_one_line_too_without_the_token() -> None:
    token = NgrokSettings(WRONG_AUTHTOKEN)
    session_limit = ValueError(
        "failed to connect session",
        f"Your account is limited to 1 simultaneous session.\r\n{WRONG_AUTHTOKEN}",
        "ERR_NGROK_108",
    )
    assert refusal(session_limit, token) == (
        "ngrok could not open the tunnel: failed to connect session: Your account is limited to 1 simultaneous "
        "session. (ERR_NGROK_108)"
    )
    quoting = ValueError("failed to start listener", f"no endpoint for {WRONG_AUTHTOKEN}")
    assert (
        refusal(quoting, token)
        == "ngrok could not open the tunnel: failed to start listener: no endpoint for [redacted]"
    )


def test_help_lists_dev() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "proxy.py"), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "    dev " in result.stdout and "through an ngrok tunnel" in result.stdout

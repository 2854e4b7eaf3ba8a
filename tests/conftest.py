"""Shared fixtures: real uvicorn servers on loopback, for the proxy and for the TikTok stand-in."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import uvicorn

from tiktok_proxy import metrics
from tiktok_proxy.app import create_app
from tiktok_proxy.config import Settings, load_settings
from tiktok_proxy.oidc.jose import Signer, generate_pem, private_key_bytes
from tiktok_proxy.oidc.sealing import Sealer

from stand_ins.auth0_management import Auth0StandIn
from stand_ins.tiktok import AUTHORIZE_PATH, CLIENT_KEY, REVOKE_PATH, TOKEN_PATH, USER_INFO_PATH, TikTokStandIn

PROXY_TIMEOUT = 1.5  # short, so the timeout cases stay quick; real exchanges here take milliseconds
# For the tests' httpx clients (verify=TLS), which talk plain HTTP on loopback: httpx would otherwise make each
# client a TLS context of its own, reading certifi's bundle, at 16 ms of CPU a client.
TLS = ssl.create_default_context()


class ServerThread:
    """uvicorn serving an ASGI app on 127.0.0.1 in a background thread (as httpx's own tests do)."""

    def __init__(self, app: object, http: Any = "auto") -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=1, http=http)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def wait_until_healthy(base_url: str, process: subprocess.Popen[str], seconds: float = 30) -> None:
    """Wait for a proxy started as its own process to answer /healthz; fail with its output if it died."""
    deadline = time.monotonic() + seconds
    with httpx.Client(verify=TLS) as http:
        while True:
            try:
                if http.get(base_url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                output = process.communicate()
                raise RuntimeError(f"proxy did not start: {output}")
            time.sleep(0.05)


def wait_until_listening(port: int, process: subprocess.Popen[str], name: str, seconds: float = 10) -> None:
    """Wait for a server started as its own process to accept connections; fail with its output if it died."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = "".join(part for part in process.communicate() if part)
                raise RuntimeError(f"{name} did not start: {output}") from None
            time.sleep(0.05)


def debian_command(name: str, package: str) -> str:
    """Where the command a Debian package installs is; the test fails, saying so, when it is missing."""
    # Debian puts servers in /usr/sbin (nginx, apache2), which a non-root user's PATH often lacks.
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not found:
        pytest.fail(f"{name} is not installed: scripts/setup-tests installs it (Debian package {package})")
    return found


def ports_to_hand_out() -> Iterator[int]:
    """The ports below the kernel's ephemeral range, which it gives to no connection and no bind to port 0, once
    round from a random start: the concurrent pytest processes of scripts/test walk them apart."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = range(max(1024, low - 16384), low)
    start = secrets.randbelow(len(ports))  # not `random`, which a test may have seeded
    return itertools.chain(ports[start:], ports[:start])


PORTS = ports_to_hand_out()


def free_port() -> int:
    """A port with nothing bound to it, for a server a test starts, or for a connection refused. Not the kernel's
    pick (port 0): a connection or server elsewhere could be given that port before the test's server binds it."""
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken, or left in TIME_WAIT
            return port
    raise RuntimeError("every port below the ephemeral range has been handed out")


@pytest.fixture(scope="session")
def stand_in_server() -> Iterator[tuple[TikTokStandIn, ServerThread]]:
    stand_in = TikTokStandIn()
    with ServerThread(stand_in.app()) as server:
        yield stand_in, server


@pytest.fixture
def tiktok(stand_in_server: tuple[TikTokStandIn, ServerThread]) -> TikTokStandIn:
    stand_in, _ = stand_in_server
    stand_in.reset()
    return stand_in


@pytest.fixture(scope="session")
def base_settings(stand_in_server: tuple[TikTokStandIn, ServerThread]) -> Settings:
    _, server = stand_in_server
    return Settings(token_url=server.url + TOKEN_PATH, revoke_url=server.url + REVOKE_PATH, timeout=PROXY_TIMEOUT)


@pytest.fixture(scope="session")
def proxy_server(base_settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(base_settings)) as server:
        yield server


@pytest.fixture
def client(proxy_server: ServerThread) -> Iterator[httpx.Client]:
    """An HTTP client for the proxy under uvicorn, as Auth0 would talk to it."""
    with httpx.Client(base_url=proxy_server.url, timeout=10, verify=TLS) as http:
        yield http


@pytest.fixture
def proxy_with(base_settings: Settings) -> Iterator[Callable[..., httpx.Client]]:
    """Start a proxy with some settings changed, e.g. proxy_with(allowed_client_keys=frozenset({"k"}))."""
    started: list[tuple[ServerThread, httpx.Client]] = []

    def start(**changes: object) -> httpx.Client:
        server = ServerThread(create_app(replace(base_settings, **changes))).__enter__()
        http = httpx.Client(base_url=server.url, timeout=10, verify=TLS)
        started.append((server, http))
        return http

    yield start
    for server, http in started:
        http.close()
        server.__exit__()


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start


@pytest.fixture
def failures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of upstream failure the proxy reports to its metrics, in order."""
    kinds: list[str] = []
    monkeypatch.setattr(metrics, "upstream_failed", kinds.append)
    return kinds


# ------------------------------------------------------------------------------ Auth0's Management API


@pytest.fixture(scope="module")
def auth0_server() -> Iterator[tuple[Auth0StandIn, ServerThread]]:
    stand_in = Auth0StandIn()
    with ServerThread(stand_in.app()) as server:
        yield stand_in, server


@pytest.fixture
def auth0(auth0_server: tuple[Auth0StandIn, ServerThread]) -> Auth0StandIn:
    stand_in, _ = auth0_server
    stand_in.__init__()  # type: ignore[misc]  # a clean tenant for every test
    return stand_in


# ------------------------------------------------------------------------------ browser journeys

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",  # nothing leaves this machine
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run scripts/setup-tests")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-tests (it installs Debian's chromium)")
    if shutil.which("node") is None:
        pytest.fail("Node.js is missing: the Auth0 stand-in runs the profile script with it")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Any]:
    # Way A's redirect goes through the proxy's https address, whose certificate the test CA issued.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 880, "height": 420})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("JOURNEY_ARTIFACTS") or tmp_path_factory.mktemp("journeys"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(tab: Any, artifacts: Path, name: str, docs_name: str = "") -> None:
    tab.screenshot(path=str(artifacts / f"{name}.png"))
    if docs_name and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copy(artifacts / f"{name}.png", REPO / "docs" / "screenshots" / f"{docs_name}.png")


# ------------------------------------------------------------------------- the OpenID Connect facade

RP_REDIRECT = "http://127.0.0.1:9/rp/callback"  # never contacted: the flows without a browser stop at the redirect
OTHER_CLIENT_KEY = "aw2otherclientkey"  # a second TikTok app the proxy serves
OTHER_CLIENT_SECRET = "other-Client-Secret-value"


class LateApp:
    """An ASGI app set after the server has its port, because PUBLIC_URL (the issuer) names that port."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@dataclass
class OIDCProxy:
    url: str
    settings: Settings
    http: httpx.Client  # no redirects followed: each step is looked at
    late: LateApp
    env: dict[str, str]
    key_files: dict[str, str]

    def rotate(self, key: str, previous: tuple[str, ...] = (), next: tuple[str, ...] = ()) -> None:
        """Serve the same issuer with other keys from now on: what an instance restarted in a rotation serves."""
        self.env = {**self.env, **key_env(self.key_files, key, previous, next)}
        self.settings = load_settings(self.env)
        # The running server keeps its lifespan state (the upstream client): only the app changes.
        self.late.app = create_app(self.settings)

    def sealer(self, purpose: str) -> Sealer:
        """The proxy's own sealing, to make expired or cross-purpose values a forger could not."""
        assert self.settings.oidc_key is not None
        return Sealer(purpose, [private_key_bytes(self.settings.oidc_key)])


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("oidc-keys")
    files = {}
    for name, kind in (("rsa", "rsa"), ("ec", "ec"), ("rsa-next", "rsa"), ("ec-next", "ec")):
        (folder / f"{name}.pem").write_text(generate_pem(kind))
        files[name] = str(folder / f"{name}.pem")
    return files


def key_env(
    key_files: dict[str, str], key: str, previous: tuple[str, ...] = (), next: tuple[str, ...] = ()
) -> dict[str, str]:
    """The key variables for these keys, by name: the current one, the previous ones and the next ones."""
    return {
        "OIDC_SIGNING_KEY_FILE": key_files[key],
        "OIDC_PREVIOUS_KEY_FILES": ",".join(key_files[name] for name in previous),
        "OIDC_NEXT_KEY_FILES": ",".join(key_files[name] for name in next),
    }


def oidc_env(tiktok_url: str, key_file: str, **changes: str) -> dict[str, str]:
    return {
        "TIKTOK_TOKEN_URL": tiktok_url + TOKEN_PATH,
        "TIKTOK_AUTHORIZE_URL": tiktok_url + AUTHORIZE_PATH,
        "TIKTOK_USERINFO_URL": tiktok_url + USER_INFO_PATH,
        "TIKTOK_TIMEOUT": str(PROXY_TIMEOUT),
        "ALLOWED_CLIENT_KEYS": f"{CLIENT_KEY},{OTHER_CLIENT_KEY}",
        "OIDC_SIGNING_KEY_FILE": key_file,
        "OIDC_REDIRECT_URIS": f"{RP_REDIRECT},https://app.example/other-callback",
        **changes,
    }


def answer_consent(browser: httpx.Client, page: httpx.Response, decision: str = "authorize") -> httpx.Response:
    """A click on Authorize (or Cancel) on the TikTok stand-in's consent page, as the browser got the page."""
    consent = re.search(r'name="consent" value="([^"]+)"', page.text)
    assert consent, page.text
    return browser.post(str(page.url).split("?")[0], data={"consent": consent[1], "decision": decision})


def jwt_part(token: str, index: int) -> dict[str, Any]:
    """The header (0) or the claims (1) of a compact JWS, decoded as they are, unverified."""
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def broken_signature(sign: Callable[[Signer, dict[str, Any]], str]) -> Callable[[Signer, dict[str, Any]], str]:
    """Signer.sign with one bit of the signature flipped, to prove a relying party checks it."""

    def broken(self: Signer, claims: dict[str, Any]) -> str:
        head, body, signature = sign(self, claims).split(".")
        flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
        flipped[0] ^= 1
        return f"{head}.{body}.{base64.urlsafe_b64encode(flipped).rstrip(b'=').decode()}"

    return broken


@dataclass(frozen=True)
class LocalhostTLS:
    """A certificate for localhost from a test CA, for a proxy served over https."""

    cert_file: str  # the server's key and certificate chain
    ca_file: str  # the CA's certificate, for the clients to trust

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


@pytest.fixture(scope="session")
def localhost_tls(tmp_path_factory: pytest.TempPathFactory) -> LocalhostTLS:
    folder = tmp_path_factory.mktemp("localhost-tls")
    ca = trustme.CA()
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return LocalhostTLS(str(folder / "server.pem"), str(folder / "ca.pem"))


@pytest.fixture
def start_oidc(
    stand_in_server: tuple[TikTokStandIn, ServerThread],
    tiktok: TikTokStandIn,
    key_files: dict[str, str],
    localhost_tls: LocalhostTLS,
) -> Iterator[Callable[..., OIDCProxy]]:
    """Start a proxy with the facade on: start_oidc(key="ec", next=("ec-next",), OIDC_SUBJECT="union_id", ...). With
    tls=True it is served over https, as https://localhost:<port>, under a certificate that `localhost_tls` trusts."""
    _, tiktok_server = stand_in_server
    tiktok.clients[OTHER_CLIENT_KEY] = OTHER_CLIENT_SECRET
    started: list[tuple[ServerThread, httpx.Client]] = []

    def start(
        key: str = "rsa",
        previous: tuple[str, ...] = (),
        next: tuple[str, ...] = (),
        tls: bool = False,
        **changes: str,
    ) -> OIDCProxy:
        late = LateApp()
        server = ServerThread(late)
        public_url = server.url
        if tls:
            server.server.config.ssl_certfile = localhost_tls.cert_file
            server.server.config.load()
            public_url = f"https://localhost:{server.port}"
        env = oidc_env(tiktok_server.url, key_files[key], PUBLIC_URL=public_url, **changes)
        env.update(key_env(key_files, key, previous, next))
        settings = load_settings(env)
        late.app = create_app(settings)
        server.__enter__()
        tiktok.redirect_uris.add(settings.public_url + "/oidc/callback")  # the one URI registered at TikTok
        http = httpx.Client(timeout=10, verify=localhost_tls.context() if tls else TLS)
        started.append((server, http))
        return OIDCProxy(settings.public_url, settings, http, late, env, key_files)

    yield start
    for server, http in started:
        http.close()
        server.__exit__()
    del tiktok.clients[OTHER_CLIENT_KEY]

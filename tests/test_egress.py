"""TikTok calls through a real egress proxy (Debian's tinyproxy) to a TLS stand-in of TikTok (issue 10).

The stand-in's certificate comes from a test CA that only SSL_CERT_FILE (Settings.ca_file) trusts, so every
success here also proves the CA bundle is the one configured, and TLS runs end to end through the tunnel.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tiktok_proxy.app import create_app
from tiktok_proxy.config import Settings, load_settings
from tiktok_proxy.upstream import EgressProxy, UpstreamClient, bypasses_proxy

from conftest import ServerThread, debian_command, free_port, wait_until_listening
from test_token import assert_oauth_error

GRANT = {"grant_type": "client_credentials", "client_id": "aw1egresskey", "client_secret": "egress-client-secret"}
USER, PASSWORD = "proxyuser", "s3cret-proxy-pw"  # tinyproxy accepts only [-A-Za-z0-9._] here


class TikTokOverTLS:
    """A TLS token endpoint whose certificate names localhost, signed by a CA that only ca_file trusts."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = str(folder / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
        self.requests = 0

        async def token(request: Request) -> JSONResponse:
            self.requests += 1
            return JSONResponse({"access_token": "act.egress", "expires_in": 86400, "token_type": "Bearer"})

        app = Starlette(routes=[Route("/v2/oauth/token/", token, methods=["POST"])])
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"https://localhost:{self.port}/v2/oauth/token/"
        self.server = uvicorn.Server(uvicorn.Config(app, ssl_certfile=str(folder / "server.pem"), log_config=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


class Tinyproxy:
    """tinyproxy in the foreground on a free loopback port, with its own configuration and log file."""

    def __init__(self, folder: Path, connect_port: int, *, basic_auth: bool) -> None:
        binary = debian_command("tinyproxy", "tinyproxy")
        self.port = free_port()
        self.log = folder / f"tinyproxy-{self.port}.log"
        config = folder / f"tinyproxy-{self.port}.conf"
        config.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nConnectPort {connect_port}\nTimeout 30\n"
            f'LogFile "{self.log}"\nLogLevel Connect\n' + (f"BasicAuth {USER} {PASSWORD}\n" if basic_auth else "")
        )
        self.process = subprocess.Popen(
            [binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        wait_until_listening(self.port, self.process, "tinyproxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connects(self, target: str) -> int:
        """How many CONNECT requests to target (host:port) tinyproxy has logged."""
        return len(re.findall(rf"Request \(file descriptor \d+\): CONNECT {re.escape(target)} ", self.log.read_text()))

    def close(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)


@pytest.fixture(scope="module")
def tiktok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TikTokOverTLS]:
    stand_in = TikTokOverTLS(tmp_path_factory.mktemp("tiktok"))
    yield stand_in
    stand_in.close()


@pytest.fixture(scope="module")
def tinyproxies(tiktok: TikTokOverTLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Tinyproxy]]:
    folder = tmp_path_factory.mktemp("tinyproxy")
    proxies = {
        "open": Tinyproxy(folder, tiktok.port, basic_auth=False),
        "auth": Tinyproxy(folder, tiktok.port, basic_auth=True),
    }
    yield proxies
    for proxy in proxies.values():
        proxy.close()


@pytest.fixture
def start_proxy(tiktok: TikTokOverTLS) -> Iterator[Callable[[Settings], httpx.Client]]:
    """The real proxy app under uvicorn (on uvloop, as in production) with these settings."""
    started: list[tuple[ServerThread, httpx.Client]] = []

    def start(settings: Settings) -> httpx.Client:
        server = ServerThread(create_app(replace(settings, log_level="DEBUG"))).__enter__()
        started.append((server, httpx.Client(base_url=server.url, timeout=10)))
        return started[-1][1]

    yield start
    for server, client in started:
        client.close()
        server.__exit__()


def test_the_exchange_goes_through_one_connect_tunnel(
    tiktok: TikTokOverTLS, tinyproxies: dict[str, Tinyproxy], start_proxy: Callable[[Settings], httpx.Client]
) -> None:
    proxy, target = tinyproxies["open"], f"localhost:{tiktok.port}"
    before, seen = proxy.connects(target), tiktok.requests
    # As an operator sets it: the environment variables, and a CA bundle in place of certifi's.
    settings = load_settings(
        {"TIKTOK_TOKEN_URL": tiktok.url, "HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": tiktok.ca_file}
    )
    client = start_proxy(settings)
    for _ in range(2):
        response = client.post("/proxy/token", data=GRANT)
        assert response.status_code == 200, response.text
        assert response.json()["access_token"] == "act.egress"
    assert tiktok.requests == seen + 2
    assert proxy.connects(target) == before + 1  # one tunnel, kept alive for both exchanges


@pytest.mark.parametrize("no_proxy", ["localhost", ".localhost", "*", "example.com, localhost:{port}"])
def test_no_proxy_matching_the_host_goes_direct(
    tiktok: TikTokOverTLS,
    tinyproxies: dict[str, Tinyproxy],
    start_proxy: Callable[[Settings], httpx.Client],
    no_proxy: str,
) -> None:
    proxy, target = tinyproxies["open"], f"localhost:{tiktok.port}"
    before = proxy.connects(target)
    settings = Settings(
        token_url=tiktok.url,
        egress_proxy=proxy.url,
        no_proxy=no_proxy.format(port=tiktok.port),
        ca_file=tiktok.ca_file,
    )
    assert start_proxy(settings).post("/proxy/token", data=GRANT).status_code == 200
    assert proxy.connects(target) == before


def test_a_proxy_with_basic_auth_takes_the_credentials_from_the_url(
    tiktok: TikTokOverTLS,
    tinyproxies: dict[str, Tinyproxy],
    start_proxy: Callable[[Settings], httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, target = tinyproxies["auth"], f"localhost:{tiktok.port}"
    before = proxy.connects(target)
    encoded = PASSWORD.replace("-", "%2D")  # percent-encoded in the URL, as curl allows: decoded before use
    url = f"http://{USER}:{encoded}@127.0.0.1:{proxy.port}"
    client = start_proxy(Settings(token_url=tiktok.url, egress_proxy=url, ca_file=tiktok.ca_file))
    assert client.post("/proxy/token", data=GRANT).status_code == 200
    assert proxy.connects(target) == before + 1
    start = next(record.getMessage() for record in caplog.records if "event=start" in record.getMessage())
    assert f"egress_proxy={proxy.url} " in start  # named, without its credentials
    assert_no_credentials(caplog.text)


@pytest.mark.parametrize(
    ("credentials", "refusal"),
    [("", "HTTP 407 Proxy Authentication Required"), (f"{USER}:wrong-proxy-pw@", "HTTP 401 Unauthorized")],
    ids=["none", "wrong"],  # tinyproxy answers a wrong password with 401
)
def test_a_proxy_refusing_the_tunnel_is_a_clear_502_that_shows_no_password(
    tiktok: TikTokOverTLS,
    tinyproxies: dict[str, Tinyproxy],
    start_proxy: Callable[[Settings], httpx.Client],
    caplog: pytest.LogCaptureFixture,
    failures: list[str],
    credentials: str,
    refusal: str,
) -> None:
    proxy, seen = tinyproxies["auth"], tiktok.requests
    url = f"http://{credentials}127.0.0.1:{proxy.port}"
    client = start_proxy(Settings(token_url=tiktok.url, egress_proxy=url, ca_file=tiktok.ca_file))
    response = client.post("/proxy/token", data=GRANT)
    body = assert_oauth_error(response, 502, "server_error")
    assert body["error_description"] == (
        f"TikTok is unreachable: the egress proxy {proxy.url} refused the tunnel to localhost:{tiktok.port}: {refusal}"
    )
    assert tiktok.requests == seen
    assert failures == ["connect"]
    assert_no_credentials(response.text + caplog.text)


def test_an_unreachable_proxy_is_a_clear_502(
    tiktok: TikTokOverTLS, start_proxy: Callable[[Settings], httpx.Client], failures: list[str]
) -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    client = start_proxy(Settings(token_url=tiktok.url, egress_proxy=url, ca_file=tiktok.ca_file))
    body = assert_oauth_error(client.post("/proxy/token", data=GRANT), 502, "server_error")
    assert "could not connect to localhost through the egress proxy http://127.0.0.1:" in body["error_description"]
    assert_no_credentials(body["error_description"])
    assert failures == ["connect"]


def test_an_untrusted_certificate_through_the_tunnel_still_fails_verification(
    tiktok: TikTokOverTLS,
    tinyproxies: dict[str, Tinyproxy],
    start_proxy: Callable[[Settings], httpx.Client],
    failures: list[str],
) -> None:
    proxy, target, seen = tinyproxies["open"], f"localhost:{tiktok.port}", tiktok.requests
    before = proxy.connects(target)
    # ca_file empty: certifi's bundle, which does not know the test CA (whatever SSL_CERT_FILE says here).
    client = start_proxy(Settings(token_url=tiktok.url, egress_proxy=proxy.url, ca_file=""))
    body = assert_oauth_error(client.post("/proxy/token", data=GRANT), 502, "server_error")
    assert "the TLS handshake with localhost failed (CERTIFICATE_VERIFY_FAILED)" in body["error_description"]
    assert proxy.connects(target) == before + 1  # the handshake did go through the tunnel
    assert tiktok.requests == seen
    assert failures == ["tls"]


def test_the_tunnel_on_the_standard_event_loop(tiktok: TikTokOverTLS, tinyproxies: dict[str, Tinyproxy]) -> None:
    """The app above runs on uvloop; the CLI (revoke-user) runs on asyncio's own loop."""

    async def scenario() -> None:
        client = UpstreamClient(max_body=4096, proxy=tinyproxies["open"].url, ca_file=tiktok.ca_file)
        try:
            answer = await client.post(tiktok.url, b"grant_type=client_credentials", {})
            assert (answer.status, answer.body[:17]) == (200, b'{"access_token":"')
        finally:
            await client.aclose()

    asyncio.run(scenario())


def assert_no_credentials(text: str) -> None:
    for secret in (PASSWORD, PASSWORD.replace("-", "%2D"), "wrong-proxy-pw", f"{USER}:"):
        assert secret not in text


# ---------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("open.tiktokapis.com", 443, "", False),
        ("open.tiktokapis.com", 443, "*", True),
        ("open.tiktokapis.com", 443, "tiktokapis.com", True),  # a bare domain covers its subdomains
        ("open.tiktokapis.com", 443, ".tiktokapis.com", True),
        ("tiktokapis.com", 443, ".tiktokapis.com", True),
        ("open.tiktokapis.com", 443, "apis.com", False),  # whole labels only
        ("open.tiktokapis.com", 443, "other.example, OPEN.tiktokapis.com.", True),
        ("open.tiktokapis.com", 443, "open.tiktokapis.com:443", True),
        ("open.tiktokapis.com", 443, "open.tiktokapis.com:8443", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "2.3", False),  # an address is not a domain
        ("::1", 443, "[::1]:443", True),
        ("::1", 443, "::1", True),
        ("::1", 443, "10.0.0.0/8", False),
    ],
)  # fmt: skip
def test_no_proxy_rules(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_proxy_credentials_are_percent_decoded_and_never_shown() -> None:
    proxy = EgressProxy("http://us%40er:p%40ss%3Aw0rd@proxy.internal:3128")
    assert proxy.authorization == "Proxy-Authorization: Basic dXNAZXI6cEBzczp3MHJk\r\n"  # us@er:p@ss:w0rd
    assert (proxy.address, proxy.origin) == (("proxy.internal", 3128), "http://proxy.internal:3128")
    assert "w0rd" not in repr(proxy)

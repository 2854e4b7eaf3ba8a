"""upstream.py over TLS, as it talks to the real TikTok: verified certificates, and a clear refusal otherwise."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tiktok_proxy.upstream import ConnectFailed, UpstreamClient

HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_upstream(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A TLS server whose certificate names 'localhost' and 127.0.0.1, signed by a CA only the test trusts."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))

    async def token(request: Request) -> JSONResponse:
        return JSONResponse({"access_token": "act.tls", "form": (await request.body()).decode()})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        Starlette(routes=[Route("/v2/oauth/token/", token, methods=["POST"])]),
        ssl_certfile=str(folder / "server.pem"),
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"https://localhost:{port}/v2/oauth/token/"
    server.should_exit = True
    thread.join(10)
    sock.close()


def trusting(ca: trustme.CA) -> UpstreamClient:
    client = UpstreamClient(max_body=1024)
    client.tls = ssl.create_default_context()
    ca.configure_trust(client.tls)
    return client


def test_a_verified_tls_exchange_on_a_kept_alive_connection(ca: trustme.CA, https_upstream: str) -> None:
    async def scenario() -> None:
        client = trusting(ca)
        try:
            for _ in range(3):
                answer = await client.post(https_upstream, b"grant_type=client_credentials", HEADERS)
                assert answer.status == 200
                assert answer.body == b'{"access_token":"act.tls","form":"grant_type=client_credentials"}'
            assert sum(len(pool) for pool in client.idle.values()) == 1  # one connection served all three
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url_host", "fragment"),
    [("localhost", "CERTIFICATE_VERIFY_FAILED"), ("127.0.0.2", "could not connect")],
    ids=["untrusted-ca", "nothing-listening"],
)
def test_an_unverifiable_upstream_is_refused_before_anything_is_sent(
    https_upstream: str, url_host: str, fragment: str
) -> None:
    url = https_upstream.replace("localhost", url_host)

    async def scenario() -> None:
        client = UpstreamClient(max_body=1024)  # the real trust store: certifi's CAs only
        try:
            with pytest.raises(ConnectFailed) as caught:
                await client.post(url, b"client_secret=never-sent", HEADERS)
            assert fragment in str(caught.value)
            assert "never-sent" not in str(caught.value)
        finally:
            await client.aclose()
            await asyncio.sleep(0.05)  # asyncio closes a failed TLS handshake's socket on a later loop turn

    asyncio.run(scenario())


def test_a_certificate_for_another_name_is_refused(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("wrong-name")
    ca.issue_cert("open.tiktokapis.com").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(folder / "server.pem"))

    async def scenario() -> None:
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        client = trusting(ca)
        try:
            with pytest.raises(ConnectFailed) as caught:
                await client.post(f"https://localhost:{port}/v2/oauth/token/", b"", HEADERS)
            assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        finally:
            await client.aclose()
            server.close()
            await asyncio.sleep(0.05)  # asyncio closes a failed TLS handshake's socket on a later loop turn

    asyncio.run(scenario())

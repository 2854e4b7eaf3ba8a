"""A small HTTP/1.1 client for the proxy's one hot path: a short form POSTed to TikTok, a short answer back.

Why not httpx here: on this proxy's benchmark (bench/README.md), httpx's AsyncClient spends about 200 µs of
CPU per call before any I/O, and its connection pool slows further as concurrency grows; one worker then
tops out near 500 exchanges a second. This client does only what the proxy needs, over pooled keep-alive
connections, with httptools (uvicorn's own parser, llhttp) reading the answers. TLS is the standard
library's, verified against certifi's CA bundle, as httpx does. httpx is still what the CLI and the tests use.

What it deliberately does not do: follow redirects (that would re-send the client secret), retry a sent
request (authorization codes are single-use), decompress, or speak HTTP/2.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import httptools

log = logging.getLogger("tiktok_proxy.upstream")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class UpstreamError(Exception):
    """Talking to the upstream failed. The message names what happened and never carries request data."""


class ConnectFailed(UpstreamError):
    """No connection could be made, so nothing was sent: safe to report as unreachable."""


class AnswerTooLarge(UpstreamError):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection. httptools calls the on_* methods as the answer arrives."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_message_begin()

    async def exchange(self, request: bytes) -> Answer:
        assert self.transport is not None
        # Forget the previous answer now: if the connection drops before a byte of this one arrives, its
        # state must not be mistaken for this answer (a bodiless 204 would look complete).
        self.on_message_begin()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.answer
        return Answer(self.status, self.headers, bytes(self.body))

    @property
    def reusable(self) -> bool:
        return not self.lost and self.keep_alive and self.answer is not None and self.answer.done()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self.close()  # bytes nobody asked for: this connection can no longer be trusted
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamError("the answer is not valid HTTP"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        if self.headers_done and not self.framed:  # a body delimited by the end of the connection
            self._settle()
        else:
            self._fail(UpstreamError("the connection closed before a complete answer"))

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.headers_done = self.framed = self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.framed = self.framed or key in ("content-length", "transfer-encoding")
        self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        declared = self.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.max_body:
            self._fail(AnswerTooLarge(f"the answer is over {self.max_body} bytes"))

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.max_body:
            self._fail(AnswerTooLarge(f"the answer is over {self.max_body} bytes"))

    def on_message_complete(self) -> None:
        if self.status >= 200:  # a 1xx interim answer is followed by the real one
            self._settle()

    def _settle(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        self.keep_alive = False
        self.close()


class UpstreamClient:
    """POSTs over pooled keep-alive connections, one pool per origin. Create and close it in the app's lifespan."""

    def __init__(self, *, max_body: int, keepalive_expiry: float = 5.0, max_idle: int = 128) -> None:
        self.max_body = max_body
        self.keepalive_expiry = keepalive_expiry  # below common server idle timeouts, so we close first
        self.max_idle = max_idle
        self.tls = ssl.create_default_context(cafile=certifi.where())
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
        connection = self._take_idle(origin) or await self._connect(origin)
        try:
            answer = await connection.exchange(request)
        except BaseException:  # failed, timed out or cancelled mid-answer: the connection is in an unknown state
            connection.close()
            raise
        self._give_back(origin, connection)
        return answer

    async def aclose(self) -> None:
        """Close the idle connections and wait until the sockets are released."""
        connections = [connection for pool in self.idle.values() for connection in pool]
        self.idle.clear()
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.closed for connection in connections], timeout=1)

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        connections = self.idle.get(origin)
        now = time.monotonic()
        while connections:
            connection = connections.pop()  # the most recently used: least likely to have been closed
            if not connection.lost and now - connection.idle_since < self.keepalive_expiry:
                return connection
            connection.close()
        return None

    def _give_back(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        connections = self.idle.setdefault(origin, [])
        if not connection.reusable or len(connections) >= self.max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connections.append(connection)

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls = self.tls if scheme == "https" else None
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):  # nothing was sent yet, so one retry is safe
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(self.max_body), host, port, ssl=tls, server_hostname=host if tls else None
                )
                log.debug("upstream_connect host=%s port=%d attempt=%d", host, port, attempt)
                return connection
            except ssl.SSLError as exc:
                raise ConnectFailed(
                    f"the TLS handshake with {host} failed ({exc.reason or type(exc).__name__})"
                ) from None
            except OSError as exc:
                if attempt == 2:
                    raise ConnectFailed(f"could not connect to {host} ({exc.strerror or type(exc).__name__})") from None
        raise AssertionError("unreachable")

"""A small HTTP/1.1 client for the proxy's one hot path: a short form POSTed to TikTok, a short answer back.

Why not httpx here: on this proxy's benchmark (docs/performance.md), httpx's AsyncClient spends about 200 µs of
CPU per call before any I/O, and its connection pool slows further as concurrency grows; one worker then
tops out near 500 exchanges a second. This client does only what the proxy needs, over pooled keep-alive
connections, with httptools (uvicorn's own parser, llhttp) reading the answers. TLS is the standard
library's, verified against certifi's CA bundle (or the bundle the caller names), as httpx does. httpx is
still what the CLI and the tests use.

An egress proxy is used as curl uses HTTPS_PROXY: an https origin is reached through a CONNECT tunnel, and
TLS runs end to end inside it, verified against the origin's name. Hosts matching `no_proxy` (curl's rules)
go direct, and so do plain-http origins (only ever stand-ins on this machine; curl too applies HTTPS_PROXY to
https only).

What is sent twice: a connection attempt that failed (nothing was sent), and a request written on a reused
keep-alive connection that closed before a single byte of answer came back (see UpstreamClient._send). Nothing
else: never after any byte of answer, never after a timeout, never a request that went out on a new connection
(authorization codes are single-use). It does not follow redirects (that would re-send the client secret),
decompress, or speak HTTP/2.

An answer is read as strictly as the proxy reads a request: its head (status line and headers, interim 1xx
answers included) is capped at MAX_HEAD bytes, counted as bytes arrive and before the parser sees more; the
whole answer on the wire at MAX_HEAD + max_body. It must be HTTP/1.0 or 1.1, with a status from 100 to 599; a
101 or an upgrade, or more than MAX_INTERIM interim answers, fails the exchange. The answer is taken whole when
its last byte arrives, and nothing after it can change it: a connection that delivers bytes nobody asked for,
or whose answer came before the request was fully written, is dropped, never reused.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import select
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import unquote, urlsplit

import certifi
import httptools

from .config import egress_proxy_origin

log = logging.getLogger("tiktok_proxy.upstream")

MAX_HEAD = 64 * 1024  # an answer's status line and headers, interim answers included; TikTok's are under 2 KiB
MAX_INTERIM = 10  # interim (1xx) answers before the final one: RFC 9110 sets no number, so a client must


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", " (RFC 9110 §5.3)
    body: bytes


class UpstreamError(Exception):
    """Talking to the upstream failed. The message names what happened and never carries request data."""

    kind = "unusable"  # for metrics: what failed, one of connect, tls, unusable


class ConnectFailed(UpstreamError):
    """No connection could be made, so nothing was sent: safe to report as unreachable."""

    kind = "connect"


class TLSFailed(ConnectFailed):
    """The TLS handshake failed, e.g. the certificate could not be verified. Nothing was sent."""

    kind = "tls"


class AnswerTooLarge(UpstreamError):
    pass


class NoAnswer(UpstreamError):
    """The connection closed before a single byte of the answer arrived."""


class _Refused(Exception):
    """Raised in a parser callback to stop the parser at once (feed_data then raises HttpParserCallbackError)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection. httptools calls the on_* methods as the answer arrives."""

    def __init__(self, max_body: int, max_head: int = MAX_HEAD) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.expires_at = 0.0  # when idle in the pool: reuse it only before this (time.monotonic)
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[Answer] | None = None  # holds the final answer, taken whole when complete
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._start()

    async def exchange(self, request: bytes) -> Answer:
        assert self.transport is not None
        self._start()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer

    def _start(self) -> None:
        # Forget the previous answer now: if the connection drops before a byte of this one arrives, its state
        # must not be mistaken for this answer (a bodiless 204 would look complete).
        self.seen = 0  # bytes of this answer so far, interim answers included
        self.start = b""  # its first bytes: llhttp also takes RTSP/ and ICE/ where HTTP/ belongs
        self.limit = self.max_head  # on `seen`: the head's cap until the final head is complete, then the answer's
        self.interim = 0
        self.error: UpstreamError | None = None  # why a callback stopped the parser
        self._new_message()

    @property
    def reusable(self) -> bool:
        return not self.lost and self.keep_alive and self.answer is not None and self.answer.done()

    def still_open(self) -> bool:
        """Whether an idle connection can take a request. Checked just before reuse, without blocking."""
        if self.lost or self.transport is None or self.transport.is_closing():
            return False
        # The loop may not have run since the server closed it: ask the socket. A readable idle socket holds
        # an EOF or bytes nobody asked for, and neither can be sent on. poll, unlike select, takes any fd number.
        poller = select.poll()
        poller.register(self.transport.get_extra_info("socket").fileno(), select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def drop(self) -> None:
        """Close at once, discarding anything unsent: a peer that misbehaved may never read it, nor close cleanly."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self.drop()  # bytes nobody asked for: this connection can no longer be trusted
            return
        if self.seen < 5:
            self.start += data[: 5 - self.seen]
        room = self.limit - self.seen
        if len(data) <= room:  # the usual case: all of it within the cap, fed as it is
            self.seen += len(data)
            self._feed(data)
            return
        # Over the cap: the parser sees only what fits. That part may complete the head, which raises the cap.
        limit = self.limit
        self.seen = limit
        self._feed(data[:room])
        if self.limit > limit or self.answer.done():
            self.data_received(data[room:])
        elif limit == self.max_head:
            self._fail(AnswerTooLarge(f"the answer's head is over {self.max_head} bytes"))
        else:
            self._fail(AnswerTooLarge(f"the answer is over {limit} bytes with its framing"))

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not an HttpParserError
            self._fail(UpstreamError("the answer switches protocols, which the proxy never asks for"))
        except httptools.HttpParserCallbackError:  # one of the callbacks below refused the answer
            self._fail(self.error or UpstreamError("the answer is not valid HTTP"))
        except httptools.HttpParserError as exc:  # llhttp's reasons are fixed texts, never bytes of the answer
            self._fail(UpstreamError(f"the answer is not valid HTTP ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        if self.until_close:  # a body delimited by the end of the connection
            self._take()
        elif not self.seen:
            self._fail(NoAnswer("the connection closed before any answer"))
        else:
            self._fail(UpstreamError("the connection closed before a complete answer"))

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        if self.answer is None or self.answer.done():
            # More bytes after the answer, in the same read: whatever they say, they are not its answer.
            self._refuse(UpstreamError("bytes followed the answer"))
        self._new_message()

    def _new_message(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.headers_done = self.framed = self.until_close = self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer: never merged into the head (RFC 9110 §6.5), so it cannot pose as one of its fields
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.framed = self.framed or key in ("content-length", "transfer-encoding")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0") or (not self.interim and self.start != b"HTTP/"):
            self._refuse(UpstreamError("the answer's status line is not HTTP/1.0 or 1.1"))
        if not 100 <= status <= 599:
            self._refuse(UpstreamError(f"the answer's status {status} is not an HTTP status"))
        if status == 101:
            self._refuse(UpstreamError("the answer switches protocols (HTTP 101), which the proxy never asks for"))
        if status < 200:  # an interim answer (100, 102, 103): the final one follows (RFC 9110 §15.2)
            self.interim += 1
            if self.interim > MAX_INTERIM:
                self._refuse(UpstreamError(f"the answer began with over {MAX_INTERIM} interim (1xx) answers"))
            return
        self.limit = self.max_head + self.max_body
        self.until_close = not self.framed
        declared = self.headers.get("content-length", "")  # llhttp allows one, of digits only
        if declared.isdigit() and int(declared) > self.max_body:
            self._refuse(AnswerTooLarge(f"the answer is over {self.max_body} bytes"))

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.max_body:
            self._refuse(AnswerTooLarge(f"the answer is over {self.max_body} bytes"))

    def on_message_complete(self) -> None:
        if self.status >= 200:  # an interim answer is followed by the real one
            self._take()

    def _take(self) -> None:
        """The final answer is complete: take it whole now, so that no byte after it can change it."""
        if self.answer is None or self.answer.done():
            return
        if self.transport is not None and self.transport.get_write_buffer_size():
            # Answered before the request was fully written: the rest of it must not reach the server as the
            # start of a next request.
            self.keep_alive = False
        self.answer.set_result(Answer(self.status, self.headers, bytes(self.body)))

    def _refuse(self, error: UpstreamError) -> NoReturn:
        self.error = error
        raise _Refused

    def _fail(self, error: UpstreamError) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        self.drop()


class UpstreamClient:
    """POSTs (and GETs) over pooled keep-alive connections, one pool per origin. Create and close it in the app's lifespan.

    proxy: an http://[user:password@]host:port forward proxy for https origins; no_proxy: the hosts that bypass
    it; ca_file: a PEM bundle in place of certifi's. max_body caps an answer's body, max_head its head.
    """

    def __init__(
        self,
        *,
        max_body: int,
        max_head: int = MAX_HEAD,
        keepalive_expiry: float = 5.0,
        max_idle: int = 128,
        proxy: str = "",
        no_proxy: str = "",
        ca_file: str = "",
    ) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.keepalive_expiry = keepalive_expiry  # below common server idle timeouts, so we close first
        self.max_idle = max_idle
        self.tls = ssl.create_default_context(cafile=ca_file or certifi.where())
        self.proxy = EgressProxy(proxy, no_proxy) if proxy else None
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        return await self._send("POST", url, body, headers)

    async def get(self, url: str, headers: Mapping[str, str]) -> Answer:
        """A GET with the URL's query (TikTok's user info). Never put a token in the URL: send it in a header."""
        return await self._send("GET", url, None, headers)

    async def _send(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Answer:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        request = f"{head}{length}\r\n".encode("latin-1") + (body or b"")
        connection = self._take_idle(origin)
        if connection is None:
            return await self._exchange(origin, await self._connect(origin), request)
        try:
            return await self._exchange(origin, connection, request)
        except NoAnswer:
            # The server closed this idle connection (its keep-alive timeout) just as the request went out;
            # still_open cannot see that race coming. A server closing an idle connection has not read what
            # arrives on it, so send the request once more, on a new connection. In the rare case it had read
            # it, the second try of a single-use code gets invalid_grant: the failed login the user would have
            # seen anyway. Never once any byte of answer has arrived (the server surely had the request then),
            # and never for a request sent on a new connection.
            log.debug("upstream_resend host=%s port=%d", origin[1], origin[2])
            return await self._exchange(origin, await self._connect(origin), request)

    async def aclose(self) -> None:
        """Close the idle connections and wait until the sockets are released."""
        connections = [connection for pool in self.idle.values() for connection in pool]
        self.idle.clear()
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.closed for connection in connections], timeout=1)

    async def _exchange(self, origin: tuple[str, str, int], connection: _Connection, request: bytes) -> Answer:
        try:
            answer = await connection.exchange(request)
        except BaseException:  # failed, timed out or cancelled mid-answer: the connection is in an unknown state
            connection.drop()
            raise
        self._give_back(origin, connection)
        return answer

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        connections = self.idle.get(origin)
        now = time.monotonic()
        while connections:
            connection = connections.pop()  # the most recently used: least likely to have been closed
            if now >= connection.expires_at:
                connection.close()
            elif connection.still_open():
                return connection
            else:
                connection.drop()  # closed by the server, or holding bytes nobody asked for
        return None

    def _give_back(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        connections = self.idle.setdefault(origin, [])
        if not connection.reusable:
            connection.drop()
            return
        if len(connections) >= self.max_idle:
            connection.close()
            return
        lifetime = self.keepalive_expiry
        server_timeout = keep_alive_timeout(connection.headers.get("keep-alive", ""))
        if server_timeout is not None:  # retire it before the server does: a second early, or halfway if shorter
            lifetime = min(lifetime, server_timeout - min(1.0, server_timeout / 2))
        connection.expires_at = time.monotonic() + lifetime
        connections.append(connection)

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls = self.tls if scheme == "https" else None
        # As in curl, HTTPS_PROXY is for https origins; a plain-http one is only ever a stand-in on this machine.
        proxy = self.proxy if tls and self.proxy and self.proxy.used_for(host, port) else None
        loop = asyncio.get_running_loop()
        protocol = partial(_Connection, self.max_body, self.max_head)
        for attempt in (1, 2):  # nothing was sent yet, so one retry is safe
            try:
                if proxy is None:
                    _, connection = await loop.create_connection(
                        protocol, host, port, ssl=tls, server_hostname=host if tls else None
                    )
                else:
                    sock = await proxy.tunnel(host, port)
                    # TLS end to end, inside the tunnel. The loop now owns the socket, and closes it on failure.
                    _, connection = await loop.create_connection(protocol, sock=sock, ssl=tls, server_hostname=host)
                log.debug(
                    "upstream_connect host=%s port=%d attempt=%d via=%s",
                    host, port, attempt, proxy.origin if proxy else "-",
                )  # fmt: skip
                return connection
            except ssl.SSLError as exc:
                raise TLSFailed(f"the TLS handshake with {host} failed ({exc.reason or type(exc).__name__})") from None
            except OSError as exc:
                if attempt == 2:
                    reason = exc.strerror or str(exc) or type(exc).__name__
                    via = f" through the egress proxy {proxy.origin}" if proxy else ""
                    raise ConnectFailed(f"could not connect to {host}{via} ({reason})") from None
        raise AssertionError("unreachable")


def keep_alive_timeout(value: str) -> int | None:
    """The seconds of `Keep-Alive: timeout=5, max=100`: how long the server keeps an idle connection open."""
    for param in value.split(","):
        name, _, number = param.partition("=")
        number = number.strip().strip('"')
        if name.strip().lower() == "timeout" and re.fullmatch(r"[0-9]{1,9}", number):  # int() refuses 4,301 digits
            return int(number)
    return None


# ------------------------------------------------------------------------------------- egress proxy


class EgressProxy:
    """An HTTP forward proxy, reached with CONNECT. Messages name it by origin only, never with credentials."""

    def __init__(self, url: str, no_proxy: str = "") -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "", parts.port or 80)
        self.origin = egress_proxy_origin(url)
        self.no_proxy = no_proxy
        self.authorization = ""
        if parts.username is not None:  # percent-encoded in the URL, as curl reads it
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.authorization = f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"

    def __repr__(self) -> str:
        return f"EgressProxy({self.origin})"

    def used_for(self, host: str, port: int) -> bool:
        return not bypasses_proxy(host, port, self.no_proxy)

    async def tunnel(self, host: str, port: int) -> socket.socket:
        """A socket connected to host:port through the proxy, ready for the TLS handshake."""
        loop = asyncio.get_running_loop()
        sock = await _open_socket(loop, *self.address)
        try:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{self.authorization}\r\n"
            await loop.sock_sendall(sock, request.encode())
            status = _status(await _read_head(loop, sock))
            if status is None:
                raise ConnectFailed(f"the egress proxy {self.origin} did not answer CONNECT in HTTP")
            if not 200 <= status < 300:
                raise ConnectFailed(
                    f"the egress proxy {self.origin} refused the tunnel to {target}: {_describe(status)}"
                )
        except BaseException:
            sock.close()
            raise
        return sock


async def _open_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket, trying each address the name resolves to."""
    error = OSError(f"{host} resolved to no address")
    for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
    raise error


MAX_PROXY_HEAD = 16 * 1024


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The proxy's answer up to its blank line. One byte at a time: what follows belongs to the TLS layer."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise ConnectionResetError("the egress proxy closed the connection during CONNECT")
        head += byte
        if len(head) > MAX_PROXY_HEAD:
            raise ConnectFailed(f"the egress proxy's answer to CONNECT is over {MAX_PROXY_HEAD} bytes")
    return bytes(head)


def _status(head: bytes) -> int | None:
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or not words[0].startswith(b"HTTP/1.") or not re.fullmatch(rb"[0-9]{3}", words[1]):
        return None
    return int(words[1])


def _describe(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """curl's NO_PROXY: comma-separated names, where a leading dot or a bare domain also covers its subdomains;
    `*` covers every host. An entry may add :port, and an IP range may be written as CIDR."""
    host = host.lower().strip("[]").rstrip(".")
    for entry in no_proxy.lower().split(","):
        name, entry_port = _split_port(entry.strip())
        name = name.lstrip(".").rstrip(".")
        if name == "*":
            return True
        if not name or (entry_port is not None and entry_port != port):
            continue
        if host == name or (host.endswith("." + name) and not _is_ip(host)) or _in_network(host, name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:443
        name, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:  # example.com:443 (a bare IPv6 address has more colons)
        name, _, port = entry.partition(":")
    else:
        name, port = entry, ""
    return name, int(port) if re.fullmatch(r"[0-9]{1,5}", port) else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _in_network(host: str, name: str) -> bool:
    if "/" not in name:
        return False
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False)
    except ValueError:
        return False

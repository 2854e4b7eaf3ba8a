"""A raw TCP upstream that misbehaves on purpose, below what any HTTP framework would let it do.

Each behaviour is a coroutine that gets the connection after the request was read. The server counts the
requests it received, so a test can prove the proxy neither retried nor followed a redirect.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TOKEN = json.dumps({"access_token": "act.fault", "expires_in": 86400, "token_type": "Bearer"}).encode()


class FaultyUpstream:
    def __init__(self, *, idle_timeout: float | None = None) -> None:
        self.behaviour: Behaviour = answer(200, TOKEN)
        self.idle_timeout = idle_timeout  # close a kept-alive connection after this many idle seconds, as servers do
        self.requests = 0
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/oauth/token/"

    def __enter__(self) -> FaultyUpstream:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
        self.loop.close()

    def _run(self) -> None:
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        await self.stopping.wait()
        server.close()
        handlers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in handlers:  # the ones still hanging on purpose
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0.05)  # closed transports release their sockets on a later loop turn

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:  # keep-alive: one behaviour per request on this connection
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                except TimeoutError:
                    return  # without reading what may have arrived meanwhile: the close then sends a reset
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests += 1
                await self.behaviour(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


# ---- behaviours


def answer(
    status: int, body: bytes, *, headers: str = "", chunked: bool = False, close_delimited: bool = False
) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{headers}"
        if chunked:
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            for start in range(0, len(body), 7):
                piece = body[start : start + 7]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            writer.write(b"0\r\n\r\n")
        elif close_delimited:
            writer.write(f"{head}Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
            writer.close()
            return
        else:
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()

    return behave


def answer_then_hang_up(status: int, body: bytes) -> Behaviour:
    """A keep-alive answer, then the server closes the idle connection (as servers do after their idle timeout)."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(status, body)(reader, writer)
        writer.close()

    return behave


def interim_then(status: int, body: bytes) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await answer(status, body)(reader, writer)

    return behave


def slowly(seconds: float, status: int, body: bytes) -> Behaviour:
    """A correct answer that takes a while, well within the deadline."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        await answer(status, body)(reader, writer)

    return behave


def never_answer() -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    return behave


def headers_then_silence() -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    return behave


def drip(body: bytes, seconds_per_byte: float) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        for byte in body:
            await writer.drain()
            await asyncio.sleep(seconds_per_byte)
            writer.write(bytes([byte]))
        await writer.drain()

    return behave


def reset_mid_body() -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"access_to')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        writer.transport.abort()

    return behave


def huge(size: int, *, declared: bool) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framing = f"Content-Length: {size}" if declared else "Transfer-Encoding: chunked"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode())
        block = b"a" * 65536
        try:
            for _ in range(size // len(block)):
                writer.write(block if declared else f"{len(block):x}\r\n".encode() + block + b"\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the proxy hung up once it had seen enough

    return behave


def garbage() -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02 not http at all\r\n\r\n")
        await writer.drain()

    return behave


def raw(*pieces: bytes, pause: float = 0.0, close: bool = False) -> Behaviour:
    """These bytes and nothing else, whatever HTTP says: each piece written on its own, `pause` seconds apart
    (0: all of them in one write, so that the proxy reads them together); then the connection closes if `close`."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for number, piece in enumerate(pieces if pause else [b"".join(pieces)]):
            if number:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        if close:
            writer.close()

    return behave


def endless(start: bytes, filler: bytes, *, up_to: int = 256 * 1024 * 1024) -> Behaviour:
    """`start`, then `filler` again and again until the proxy hangs up: a head, a chunk-size line or a trailer
    that never ends."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(start)
        try:
            for _ in range(up_to // len(filler)):
                writer.write(filler)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy hung up once it had seen enough

    return behave

"""upstream.py reading answers however the bytes are cut, and an answer that comes before the request is fully
written. Real sockets: UpstreamClient against a raw asyncio server on loopback, in one event loop."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest

from tiktok_proxy.upstream import AnswerTooLarge, UpstreamClient, UpstreamError

HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN = b'{"access_token":"act.pieces","token_type":"Bearer"}'
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


async def in_pieces(writer: asyncio.StreamWriter, data: bytes, seed: int) -> None:
    """Write data 1 to 3 bytes at a time, each in its own segment, so that the client reads it in pieces."""
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sizes = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = sizes.randint(1, 3)
        writer.write(data[offset : offset + size])
        await writer.drain()
        await asyncio.sleep(0.0005)
        offset += size


def run(serve: Serve, scenario: Callable[[UpstreamClient, str], Awaitable[None]], **client_options: int) -> None:
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await serve(reader, writer)
            await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v2/oauth/token/"
        client = UpstreamClient(max_body=1024 * 1024, **client_options)
        try:
            await asyncio.wait_for(scenario(client, url), 20)
        finally:
            await client.aclose()
            server.close()
            for handler in handlers:
                handler.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()
            await asyncio.sleep(0.05)  # closed transports release their sockets on a later loop turn

    asyncio.run(main())


def pooled(client: UpstreamClient) -> int:
    return sum(len(pool) for pool in client.idle.values())


@pytest.mark.parametrize("seed", range(3))
def test_an_answer_cut_in_pieces_of_a_few_bytes_is_read_whole(seed: int) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Tt-Logid: 202206221854370101130062072500FFA2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(TOKEN), TOKEN)
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            await in_pieces(writer, answer, seed)

    async def scenario(client: UpstreamClient, url: str) -> None:
        for _ in range(2):
            answer = await client.post(url, b"grant_type=client_credentials", HEADERS)
            assert (answer.status, answer.body) == (200, TOKEN)
            assert answer.headers["x-tt-logid"] == "202206221854370101130062072500FFA2"
        assert pooled(client) == 1  # one kept-alive connection served both

    run(serve, scenario)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(("over", "error"), [(0, None), (1, "the answer's head is over 512 bytes")])
def test_the_head_cap_holds_however_the_head_is_cut(seed: int, over: int, error: str | None) -> None:
    """An interim answer's head counts too; the cap is reached exactly, or passed by one byte."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    start = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Padding: " % len(TOKEN)
    head = interim + start + b"a" * (512 + over - len(interim) - len(start) - 4) + b"\r\n\r\n"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await in_pieces(writer, head + TOKEN, seed)

    async def scenario(client: UpstreamClient, url: str) -> None:
        if error is None:
            answer = await client.post(url, b"grant_type=client_credentials", HEADERS)
            assert (answer.status, answer.body) == (200, TOKEN)
            return
        with pytest.raises(AnswerTooLarge, match=error):
            await client.post(url, b"grant_type=client_credentials", HEADERS)
        assert pooled(client) == 0

    run(serve, scenario, max_head=512)


def test_a_status_line_cut_after_one_byte_is_still_checked_for_http() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await in_pieces(writer, b"RTSP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(TOKEN), TOKEN), 0)

    async def scenario(client: UpstreamClient, url: str) -> None:
        with pytest.raises(UpstreamError, match="status line is not HTTP/1.0 or 1.1"):
            await client.post(url, b"grant_type=client_credentials", HEADERS)

    run(serve, scenario)


def test_an_answer_before_the_request_was_fully_written_is_taken_and_its_connection_dropped() -> None:
    """A server may answer (and refuse) before it has read the whole request. The answer stands; the rest of the
    request must never reach that server as if it were the start of another one, so the connection goes."""
    big = b"x" * (64 * 1024 * 1024)  # more than loopback's socket buffers hold
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is left unread, for now
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        await asyncio.sleep(0.5)  # the answer is out; the client has had time to take it
        try:
            while await reader.read(1024 * 1024):  # what was written of the request, then the end of it
                pass
        except ConnectionError:
            pass
        closed.set()

    async def scenario(client: UpstreamClient, url: str) -> None:
        answer = await asyncio.wait_for(client.post(url, big, HEADERS), 10)
        assert (answer.status, answer.body) == (413, b"no")
        assert pooled(client) == 0  # not given back
        await asyncio.wait_for(closed.wait(), 5)  # and really closed: the server saw it go

    run(serve, scenario)

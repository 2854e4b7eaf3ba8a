"""A stand-in for ngrok's Agent SDK (the `ngrok` package on PyPI), for `python proxy.py dev` in the tests.

ngrok's service cannot be reached from the test machine. With `tests/stand_ins` first on PYTHONPATH, `import ngrok`
finds this module before the real one. It has the part of the SDK's surface that dev uses, as the SDK has it:
`forward(addr, proto, **options)` returns a Listener whose `url()` is its https address and whose `close()` is a
coroutine; `kill()` closes them all and ends the session; a refusal is a ValueError(step, ngrok's message[, ERR_NGROK_code]); and, as the SDK does, it runs
`asyncio.run` inside, so it cannot be called from a running event loop.

In place of ngrok's edge, forward() starts a front door on this machine: https on localhost (certificate and key
from NGROK_STAND_IN_CERT), relaying every connection to `addr`, so that what goes through the "tunnel" really
reaches the proxy. Its address is always https://localhost:<port>: a domain asked for is checked and recorded.

The stand-in's ngrok account: AUTHTOKEN is its authtoken, DOMAIN its static domain; another token or domain is
refused as ngrok refuses them (ngrok's message quotes a refused token, as ngrok's does). NGROK_STAND_IN_OFFLINE=1:
ngrok's service cannot be reached. Every call is appended to NGROK_STAND_IN_RECORD, one JSON object a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import threading
from typing import Any

AUTHTOKEN = "2StandInNgrokAuthtoken_0123456789abcdefABCDEF"
DOMAIN = "proxy-dev.ngrok-free.app"

_listeners: list[Listener] = []  # as the SDK keeps its own: a listener lives until closed


def forward(addr: str | int | None = None, proto: str | None = None, **options: Any) -> Listener:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("ngrok's forward() returns a Task, not a Listener, inside a running event loop")
    record(call="forward", addr=addr, proto=proto, options=options)
    if os.environ.get("NGROK_STAND_IN_OFFLINE") == "1":
        raise ValueError("failed to connect session", "failed to establish tcp connection")  # as the SDK says it
    token = str(options.get("authtoken", ""))
    if token != AUTHTOKEN:
        raise ValueError(
            "failed to connect session",
            f"The authtoken you specified is properly formed, but it is invalid.\r\nYour authtoken: {token}\r\n"
            "Check your dashboard for the right one.\r\n\r\nERR_NGROK_107\r\n",
            "ERR_NGROK_107",
        )
    domain = options.get("domain")
    if domain not in (None, DOMAIN):
        raise ValueError(
            "failed to start listener",
            f"This domain is reserved for another account. Could not create an endpoint with the domain {domain}.",
            "ERR_NGROK_320",
        )
    host, _, port = str(addr).rpartition(":")
    listener = Listener((host or "localhost", int(port)))
    _listeners.append(listener)
    record(call="listening", url=listener.url())
    return listener


def kill() -> None:
    """Closes every listener and ends the session, as the SDK's kill() does (a plain function, not a coroutine)."""
    record(call="kill")
    for listener in list(_listeners):
        asyncio.run(listener.close())


class Listener:
    """ngrok's edge for one endpoint, played by a TLS-terminating relay on localhost, in a thread of its own."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(os.environ["NGROK_STAND_IN_CERT"])
        self.loop = asyncio.new_event_loop()
        self.connections: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, name="ngrok-stand-in", daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self.context)

    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def close(self) -> None:
        """Closes the endpoint: the front door stops listening and drops its connections, as ngrok's edge does."""
        record(call="close", url=self.url())
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        _listeners.remove(self)

    async def _stop(self) -> None:
        self.server.close()
        for writer in list(self.connections):
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:  # nothing listens: ngrok's edge would answer 502 ERR_NGROK_8012
            client_writer.close()
            return
        self.connections |= {client_writer, upstream_writer}
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        self.connections -= {client_writer, upstream_writer}


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():  # plain TCP to the proxy: a half close, as the client sent
            writer.write_eof()
        else:  # TLS cannot half-close
            writer.close()


def record(**call: Any) -> None:
    path = os.environ.get("NGROK_STAND_IN_RECORD")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps(call) + "\n")

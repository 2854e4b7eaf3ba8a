"""Serving limits: uvicorn's httptools protocol with a request deadline, a head cap, a connection cap, and a
lingering close after an early answer (README: Serving limits).

uvicorn gets it by reference (`http="tiktok_proxy.serving:LimitedHttpToolsProtocol"`), so that each worker
process builds it from its own environment; `protocol_for(settings)` builds one for given settings (tests).
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from . import metrics
from .config import Settings, settings_or_exit
from .errors import OAuthError
from .inbound import CUT_BY_DEADLINE
from .logs import log, log_event

MAX_HEAD_BYTES = 16 * 1024  # request line and headers; Auth0's are under 2 KiB
# After an early answer (413, 431, 503...), what the client still sends is read and dropped, within these bounds.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
RETRY_AFTER_SECONDS = 5
WARN_EVERY_SECONDS = 5.0  # at most one "connections refused" line this often


@dataclass
class Limits:
    """One server's limits, and the connections it refused since its last warning."""

    request_timeout: float
    max_connections: int
    keep_alive_timeout: int
    refused: int = 0
    warned_at: float = -math.inf
    warning: asyncio.TimerHandle | None = None

    def count_refusal(self, loop: asyncio.AbstractEventLoop) -> None:
        self.refused += 1
        wait = self.warned_at + WARN_EVERY_SECONDS - time.monotonic()
        if wait <= 0:
            self.warn()
        elif self.warning is None:  # the refusals until then go into one line, written then
            self.warning = loop.call_later(wait, self.warn)

    def flush(self) -> None:
        if self.warning is not None:
            self.warning.cancel()
            self.warn()

    def warn(self) -> None:
        log_event(logging.WARNING, event="refused", reason="full", status=503, connections_refused=self.refused,
                  max_connections=self.max_connections)  # fmt: skip
        self.refused, self.warned_at, self.warning = 0, time.monotonic(), None


class LimitedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol, plus the limits. Every close goes through `_close`, via the transport wrapper."""

    limits: ClassVar[Limits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # KEEP_ALIVE_TIMEOUT, however the server was started: uvicorn's own default (5 s) is below every front
        # door's idle timeout, and a front door that reuses a connection as it closes loses a POST (a 502).
        self.timeout_keep_alive = self.limits.keep_alive_timeout
        self.deadline: asyncio.TimerHandle | None = None
        self.in_head = True  # the next bytes received belong to a request head
        self.head_bytes = 0
        self.lingering: asyncio.TimerHandle | None = None
        self.discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.raw = transport
        # uvicorn closes the transport itself (after a `Connection: close` answer, a parse error...): the
        # wrapper routes those closes through _close, which lingers when the client may still be sending.
        super().connection_made(_ClosesThrough(transport, self))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # the cap counts connections being served, not those refused
            self._answer(503, "temporarily_unavailable", "the proxy has too many open connections; retry shortly",
                         {"Retry-After": str(RETRY_AFTER_SECONDS)})  # fmt: skip
            metrics.refused("full")
            self.limits.count_refusal(self.loop)
            self._linger()  # the client's request may be in flight: read it, or the close would reset the 503
            return
        self._arm_deadline()

    def shutdown(self) -> None:
        self.limits.flush()  # the server is stopping: the refusals not yet in a warning go in one now
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.deadline, self.lingering):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.discarded += len(data)
            if self.discarded > LINGER_BYTES:
                self.raw.close()
            return
        if self.deadline is None and self._can_answer():
            self._arm_deadline()  # a new request on a kept-alive connection: its time starts now
        # The parser buffers a header line that never ends, so it gets at most MAX_HEAD_BYTES of a head; the rest
        # goes in slices too, so that a request ending mid-read leaves at most one slice of the next head uncounted.
        while data and not self.transport.is_closing():
            room = MAX_HEAD_BYTES - self.head_bytes if self.in_head else MAX_HEAD_BYTES
            if room == 0:
                self._refuse_head()
                return
            piece, data = data[:room], data[room:]
            if self.in_head:
                self.head_bytes += len(piece)
            super().data_received(piece)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None and self._can_answer():
            self._arm_deadline()  # a request that began in the same read as the previous one ended

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.in_head, self.head_bytes = True, 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self.in_head and not self.pipeline:
            self.transport.close()  # answered before the whole body arrived (413, 401...): end, lingering
        super().on_response_complete()
        if not self.transport.is_closing() and (self.head_bytes or not self.in_head) and self.deadline is None:
            self._unset_keepalive_if_required()  # not idle: the next request began while this one was answered
            self._arm_deadline()

    def _can_answer(self) -> bool:
        """No other answer is under way on this connection, so one can be written without cutting into it."""
        cycle: Any = self.cycle  # None until the first head is complete
        return not self.pipeline and (
            cycle is None or cycle.response_complete or not (self.in_head or cycle.response_started)
        )

    def _arm_deadline(self) -> None:
        # Armed once per request and not reset by incoming data: a client that drips its request is cut too.
        self.deadline = self.loop.call_later(self.limits.request_timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self.deadline = None
        phase = "body" if not self.in_head else "head" if self.head_bytes else "nothing"
        seconds = self.limits.request_timeout
        if self._can_answer():
            description = f"the whole request must arrive within {seconds:g} s (REQUEST_TIMEOUT)"
            self._answer(408, "invalid_request", description)
        if not self.in_head:  # the app is waiting for the rest of the body: tell it why it will not come
            self.cycle.scope.setdefault("state", {})[CUT_BY_DEADLINE] = True
        log_event(logging.WARNING, event="refused", reason="deadline", status=408, phase=phase, request_timeout=seconds)
        metrics.refused("deadline")
        self.raw.close()  # no lingering: the client has had its time

    def _refuse_head(self) -> None:
        if self._can_answer():
            self._answer(431, "invalid_request", f"the request head is over {MAX_HEAD_BYTES} bytes")
        log_event(logging.WARNING, event="refused", reason="head", status=431, max_head_bytes=MAX_HEAD_BYTES)
        metrics.refused("head")
        self.transport.close()  # lingering: the client is still sending its head

    def _answer(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        """Write a whole OAuth error answer (errors.OAuthError's JSON) straight to the transport."""
        response = OAuthError(status, error, description, headers={**(headers or {}), "Connection": "close"}).response()
        fields = self.server_state.default_headers + response.raw_headers
        head = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
        self.raw.write(STATUS_LINE[status] + head + b"\r\n" + response.body)

    def _close(self) -> None:
        if self.lingering is not None or self.raw.is_closing():
            return
        if self.in_head and not self.head_bytes:
            self.raw.close()  # between requests: nothing is left unread
        else:
            self._linger()

    def _linger(self) -> None:
        """Stop writing, read and drop what the client still sends, then close. Closing with unread data makes
        the kernel reset the connection, and a client still sending its request often never reads the answer."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self._unset_keepalive_if_required()
        if not self.raw.can_write_eof():  # TLS cannot half-close
            self.raw.close()
            return
        self.raw.write_eof()  # sent once the answer is out
        self.flow.resume_reading()
        self.lingering = self.loop.call_later(LINGER_SECONDS, self.raw.close)


class _ClosesThrough:
    """The transport as uvicorn sees it: `close()` goes through the protocol's `_close`."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedProtocol) -> None:
        self.transport, self.protocol = transport, protocol

    def close(self) -> None:
        self.protocol._close()

    def is_closing(self) -> bool:
        return self.protocol.lingering is not None or self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


DEFAULT_MAX_CONNECTIONS = 1000
SPARE_FILES = 64  # the listening socket, logs, the metrics files, a few idle connections to TikTok


def automatic_max_connections(open_file_limit: int) -> int:
    """MAX_CONNECTIONS unset: 1000, or fewer where the open-file limit is low (1024 on many laptops). A connection
    can hold a second one, to TikTok, and past the open-file limit accepting fails with no answer at all."""
    return max(1, min(DEFAULT_MAX_CONNECTIONS, (open_file_limit - SPARE_FILES) // 2))


def protocol_for(settings: Settings) -> type[LimitedProtocol]:
    """The protocol class for these settings, with its own count of refusals; logs the limits once."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = soft == resource.RLIM_INFINITY
    max_connections = settings.max_connections or (
        DEFAULT_MAX_CONNECTIONS if unlimited else automatic_max_connections(soft)
    )
    # Under `uvicorn proxy:app`, nothing handles the proxy's logger until the app starts: say it through uvicorn's.
    out = log if log.hasHandlers() else logging.getLogger("uvicorn.error")
    log_event(logging.INFO, out, event="serving_limits", request_timeout=settings.request_timeout,
              keep_alive_timeout=settings.keep_alive_timeout, max_connections=max_connections, open_file_limit="unlimited" if unlimited else soft,
              max_head_bytes=MAX_HEAD_BYTES)  # fmt: skip
    if not unlimited and 2 * max_connections > soft:
        out.warning(
            f"MAX_CONNECTIONS={max_connections} is not well below this process's open-file limit ({soft}): "
            "each connection can hold a second one to TikTok, so the limit can be hit first and connections then fail "
            "without an answer; raise the limit (ulimit -n) or lower MAX_CONNECTIONS"
        )

    class LimitedHttpToolsProtocol(LimitedProtocol):
        limits = Limits(settings.request_timeout, max_connections, settings.keep_alive_timeout)

    return LimitedHttpToolsProtocol


def __getattr__(name: str) -> Any:
    """`LimitedHttpToolsProtocol`, built on first use from the environment and `.env`: importing this module
    reads no configuration, and each uvicorn worker builds its own when it starts."""
    if name == "LimitedHttpToolsProtocol":
        globals()[name] = protocol_for(settings_or_exit())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Serving limits: uvicorn's httptools protocol with a request deadline, a head cap, a connection cap, and a
lingering close after an early answer (docs/operations/serving-limits.md).

uvicorn gets it by reference (`http="tiktok_proxy.serving:LimitedHttpToolsProtocol"`), so that each worker
process builds it from its own environment; `protocol_for(settings)` builds one for given settings (tests).
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import select
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from . import metrics
from .config import Settings, settings_or_exit
from .errors import OAuthError
from .inbound import CUT_BY_DEADLINE
from .logs import log, log_event

MAX_HEAD_BYTES = 16 * 1024  # request line and headers, and any trailer fields; Auth0's are under 2 KiB
# Pipelined requests parsed ahead of their answers, at most (nginx parses one at a time); the rest of what was read
# waits unparsed, and nothing more is read, until their turn comes.
PIPELINE_DEPTH = 4
# After an early answer (413, 431, 503...), what the client still sends is read and dropped, within these bounds.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
RETRY_AFTER_SECONDS = 5
WARN_EVERY_SECONDS = 5.0  # at most one "connections refused" line this often
IDLE_CHECKS = 8  # idle connections looked at, at most, to admit one new connection at MAX_CONNECTIONS


@dataclass
class Limits:
    """One server's limits, its idle connections, and the connections it refused since its last warning."""

    request_timeout: float
    max_connections: int
    keep_alive_timeout: int
    max_lingering: int  # refused connections being read before their close, at most
    lingering: int = 0
    # Kept-alive connections waiting for their next request, the longest idle first.
    idle: dict[LimitedProtocol, None] = field(default_factory=dict)
    refused: int = 0
    warned_at: float = -math.inf
    warning: asyncio.TimerHandle | None = None

    def close_longest_idle(self) -> bool:
        """At MAX_CONNECTIONS, make room as nginx does: close the connection idle the longest, unless what it has
        sent is already waiting to be read (a request on its way). False when no connection is idle."""
        for connection in list(self.idle)[:IDLE_CHECKS]:
            del self.idle[connection]
            if connection.raw.is_closing() or _readable(connection.raw):
                continue
            connection.connections.discard(connection)  # its place goes to the new connection now
            log_event(logging.DEBUG, event="closed", reason="idle_at_max_connections")
            connection.raw.close()
            return True
        return False

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
    """HttpToolsProtocol, plus the limits. Every close goes through `_close`, via the transport wrapper.

    Answers go out in request order: a refusal for a later, pipelined request (400, 431) waits until the answers
    before it are written (`held`), and nothing more is read meanwhile. At most PIPELINE_DEPTH pipelined requests
    wait parsed; what else was read waits unparsed (`unread`), and nothing more is read, until their turn. Answers
    the client does not take for REQUEST_TIMEOUT (writing paused) end the connection."""

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
        self.head_bytes = 0  # raw bytes received of the current head, counted before the parser sees them
        self.head_size = 0  # the parsed head's size, exact even when a pipelined head shares a read with its elder
        self.upgrade_refused = False
        self.keep_alive_once_read = False  # what the request asked for, granted once its whole body is in
        self.close_when_answered = False  # shutting down, or the client half-closed: end after the answers due
        self.held: bytes | None = None  # a refusal waiting for the answers before it
        self.unread, self.unread_at = b"", 0  # read but not parsed yet (from unread_at on): the queue was full
        self.stalled: asyncio.TimerHandle | None = None  # runs while answers wait for the client to read them
        # A chunk header with no data after it yet: the last chunk has none, and trailer fields follow it, which
        # count toward the head cap as they arrive (trailer_bytes) and once parsed (on_chunk_complete).
        self.maybe_trailers = False
        self.trailer_bytes = 0
        self.fields = 0  # the request's header fields, before any trailer field
        self.answering: Any = None  # the pipelined request being answered, which uvicorn's connection_lost misses
        self.refused = False  # over MAX_CONNECTIONS: answered 503, not among the connections served
        self.lingering: asyncio.TimerHandle | None = None
        self.discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.raw = transport
        # Writing pauses as soon as the kernel will not take an answer whole: the client is not reading it.
        transport.set_write_buffer_limits(high=0)
        # uvicorn closes the transport itself (after a `Connection: close` answer, a parse error...): the
        # wrapper routes those closes through _close, which lingers when the client may still be sending.
        super().connection_made(_ClosesThrough(transport, self))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections and not self.limits.close_longest_idle():
            self.connections.discard(self)  # the cap counts connections being served, not those refused
            self.refused = True
            self._answer(503, "temporarily_unavailable", "the proxy has too many open connections; retry shortly",
                         {"Retry-After": str(RETRY_AFTER_SECONDS)})  # fmt: skip
            metrics.refused("full")
            self.limits.count_refusal(self.loop)
            self._linger()  # the client's request may be in flight: read it, or the close would reset the 503
            return
        # Not idle yet: only a kept-alive connection, which has had its answer, gives up its place. A new one may
        # have its first request on the way, and the deadline cuts one that sends nothing.
        self._arm_deadline()

    def shutdown(self) -> None:
        self.limits.flush()  # the server is stopping: the refusals not yet in a warning go in one now
        if self.lingering is not None:
            self.raw.close()  # its answer is out, and what the client still sends is only being dropped
        elif self.in_head and not self.head_bytes and self._can_answer() and self.held is None:
            super().shutdown()  # idle: close now
        else:  # a request is arriving or being answered: it gets its answer within the grace period, then the end
            self._close_when_answered()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows a bool
        # A client may half-close once its requests are sent: stay open to answer them, then close.
        owed = self.lingering is None and self.in_head and (not self._can_answer() or self.held is not None)
        if not owed:
            return None  # nothing to answer, or a request that can no longer complete: close
        self._close_when_answered()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.deadline, self.lingering, self.stalled):
            if timer is not None:
                timer.cancel()
        # uvicorn cancels its keep-alive timer only for a clean end: after a reset, the timer would hold this
        # connection's memory for KEEP_ALIVE_TIMEOUT, and clients that connect, ask and reset would pile it up.
        self._unset_keepalive_if_required()
        if self.lingering is not None and self.refused:
            self.limits.lingering -= 1
        self.limits.idle.pop(self, None)
        if self.answering is not None and not self.answering.response_complete:
            self.answering.disconnected = True  # or its answer would be written to the closed transport
            self.answering.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.discarded += len(data)
            if self.discarded > LINGER_BYTES:
                self.raw.close()
            return
        self.limits.idle.pop(self, None)
        if self.deadline is None and self._can_answer():
            self._arm_deadline()  # a new request on a kept-alive connection: its time starts now
        self._parse(data)

    def _parse(self, data: bytes, start: int = 0) -> None:
        """Feed the parser data[start:], in slices:
        - at most MAX_HEAD_BYTES of a head, or of trailer fields: the parser buffers a header line that never ends.
          The rest goes in slices too, so that a request ending mid-slice leaves at most one slice uncounted.
        - one head at a time when a slice holds several (pipelining), so that the queue is looked at between
          them: past PIPELINE_DEPTH requests waiting, the rest waits in `unread`, and reading pauses."""
        size = len(data)
        while start < size and self.held is None and not self.transport.is_closing():
            if len(self.pipeline) >= PIPELINE_DEPTH:
                self.unread, self.unread_at = data, start
                self.raw.pause_reading()
                return
            if self.in_head:
                room = MAX_HEAD_BYTES - self.head_bytes
            elif self.maybe_trailers:
                room = MAX_HEAD_BYTES - self.head_size - self.trailer_bytes
            else:
                room = MAX_HEAD_BYTES
            if room <= 0:
                self._refuse_head()
                return
            stop = min(size, start + room)
            end = data.find(b"\r\n\r\n", start, stop) + 4  # every head ends so (the parser requires CRLF)
            if end > 3 and data.find(b"\r\n\r\n", end, stop) != -1:
                stop = end  # another head may end in this slice: this one first
            if self.in_head:
                self.head_bytes += stop - start
            elif self.maybe_trailers:
                self.trailer_bytes += stop - start
            super().data_received(data[start:stop])
            start = stop

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None and self._can_answer():
            self._arm_deadline()  # a request that began in the same read as the previous one ended

    def on_headers_complete(self) -> None:
        # The raw count in data_received cannot see where a pipelined head begins inside a read; the parsed head can.
        self.head_size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if self.head_size > MAX_HEAD_BYTES:
            raise Refused  # stops the parser; uvicorn calls send_400_response, which answers 431
        if self.parser.should_upgrade():
            # The parser would take the rest of the connection for the new protocol, a body included: a POST would
            # reach the app without its body. The proxy speaks HTTP/1.1 only (h2c, WebSocket...), so it refuses.
            self.upgrade_refused = True
            raise Refused
        self.in_head = False
        super().on_headers_complete()
        # Keep-alive is earned by reading the whole request: an answer that goes out before the body is all in
        # (the gate's 401, a 413, a 404) carries `Connection: close`, and the connection ends after it.
        if self.cycle is not None:
            self.keep_alive_once_read = self.cycle.keep_alive and not self.close_when_answered
            self.cycle.keep_alive = False

    def on_chunk_header(self) -> None:
        self.maybe_trailers, self.trailer_bytes, self.fields = True, 0, len(self.headers)

    def on_body(self, body: bytes) -> None:
        self.maybe_trailers = False
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        if not self.maybe_trailers:
            return
        # The trailer section is complete. uvicorn adds its fields to the request's headers, where the app would
        # take them for header fields: drop them (RFC 9112, 7.1.2 allows it), and count them toward the head cap.
        self.maybe_trailers = False
        trailers = self.headers[self.fields :]
        del self.headers[self.fields :]
        self.head_size += sum(len(name) + len(value) + 4 for name, value in trailers)
        if self.head_size > MAX_HEAD_BYTES:
            raise Refused  # send_400_response answers 431

    def on_message_complete(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.in_head, self.head_bytes = True, 0
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = self.keep_alive_once_read and not self.close_when_answered
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.pipeline:
            self.answering = self.pipeline[-1][0]
        super().on_response_complete()  # starts the next pipelined request, if one is waiting
        if self.transport.is_closing():
            return
        if self.unread:  # a place in the queue is free: parse what waits, and read again once none waits
            data, self.unread = self.unread, b""
            self._parse(data, self.unread_at)
            if not self.flow.read_paused:
                self.transport.resume_reading()
        if self.transport.is_closing() or not self._can_answer():
            return
        if self.held is not None:  # the answers before the refusal are out: now the refusal, then the end
            self.raw.write(self.held)
            self._linger()
        elif self.close_when_answered:
            self.transport.close()
        elif self.head_bytes and self.deadline is None:
            self._unset_keepalive_if_required()  # not idle: the next request began while this one was answered
            self._arm_deadline()
        elif not self.head_bytes:
            self.limits.idle[self] = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.stalled is None:
            self.stalled = self.loop.call_later(self.limits.request_timeout, self._not_reading)

    def resume_writing(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        super().resume_writing()

    def _not_reading(self) -> None:
        """The client has not taken its answers for REQUEST_TIMEOUT: drop them and end the connection (a close would
        wait for them to be read)."""
        self.stalled = None
        log_event(logging.WARNING, event="closed", reason="not_reading", request_timeout=self.limits.request_timeout)
        self.raw.abort()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP/1.1 (text/plain there): an OAuth error in JSON here."""
        if self.head_size > MAX_HEAD_BYTES:
            self._refuse_head()
            return
        if self.upgrade_refused:
            log_event(logging.WARNING, event="refused", reason="upgrade", status=400)
            metrics.refused("upgrade")
            self._refuse(400, "invalid_request", "this proxy speaks HTTP/1.1 only: send the request without Upgrade")
            return
        log_event(logging.WARNING, event="refused", reason="malformed", status=400)
        metrics.refused("malformed")
        self._refuse(400, "invalid_request", "the request is not valid HTTP/1.1")

    def _can_answer(self) -> bool:
        """No other answer is under way on this connection, so one can be written without cutting into it."""
        cycle: Any = self.cycle  # None until the first head is complete
        return not self.pipeline and (
            cycle is None or cycle.response_complete or not (self.in_head or cycle.response_started)
        )

    def _close_when_answered(self) -> None:
        self.close_when_answered = True
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = False

    def _arm_deadline(self) -> None:
        # Armed once per request and not reset by incoming data: a client that drips its request is cut too.
        self.deadline = self.loop.call_later(self.limits.request_timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self.deadline = None
        seconds = self.limits.request_timeout
        if self.in_head and not self.head_bytes:
            # Not a request: close without a word, as nginx does. A front door that opened this connection ahead
            # of time would take an unsolicited 408 for the answer to the request it is just sending.
            log_event(logging.DEBUG, event="closed", reason="no_request", request_timeout=seconds)
            self.raw.close()
            return
        phase = "body" if not self.in_head else "head"
        if self._can_answer():
            description = f"the whole request must arrive within {seconds:g} s (REQUEST_TIMEOUT)"
            self._answer(408, "invalid_request", description)
        if not self.in_head:
            self._cut_body()
        log_event(logging.WARNING, event="refused", reason="deadline", status=408, phase=phase, request_timeout=seconds)
        metrics.refused("deadline")
        self.raw.close()  # no lingering: the client has had its time

    def _cut_body(self) -> None:
        """The app is waiting for the rest of the body, which will not come: tell it that this was answered and
        logged here, so that the disconnect it sees is not logged again."""
        self.cycle.scope.setdefault("state", {})[CUT_BY_DEADLINE] = True

    def _refuse_head(self) -> None:
        log_event(logging.WARNING, event="refused", reason="head", status=431, max_head_bytes=MAX_HEAD_BYTES)
        metrics.refused("head")
        self._refuse(431, "invalid_request", f"the request head is over {MAX_HEAD_BYTES} bytes")

    def _refuse(self, status: int, error: str, description: str) -> None:
        """Answer with this error and end the connection, after the answers owed to the requests before it."""
        if not self.in_head:  # e.g. a malformed chunk, or trailer fields past the head cap
            self._cut_body()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self._can_answer():
            self._answer(status, error, description)
            self._linger()  # the client may still be sending
        else:
            self.held = self._answer_bytes(status, error, description)
            self.raw.pause_reading()  # nothing more is read until the answers before it are out

    def _answer(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        self.raw.write(self._answer_bytes(status, error, description, headers))

    def _answer_bytes(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> bytes:
        """A whole OAuth error answer (errors.OAuthError's JSON) that ends the connection."""
        response = OAuthError(status, error, description, headers={**(headers or {}), "Connection": "close"}).response()
        fields = self.server_state.default_headers + response.raw_headers
        head = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
        return STATUS_LINE[status] + head + b"\r\n" + response.body

    def _close(self) -> None:
        if self.lingering is not None or self.raw.is_closing():
            return
        if self.in_head and not self.head_bytes:
            self.raw.close()  # between requests: nothing is left unread
        else:
            self._linger()

    def _linger(self) -> None:
        """Stop writing, read and drop what the client still sends, then close. Closing with unread data makes
        the kernel reset the connection, and a client still sending its request often never reads the answer.

        Refused connections linger outside MAX_CONNECTIONS, so their number is capped too (`max_lingering`): past
        it they close at once, and the open files stay below the limit (`lingering_budget`)."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self._unset_keepalive_if_required()
        self.limits.idle.pop(self, None)
        if not self.raw.can_write_eof():  # TLS cannot half-close
            self.raw.close()
            return
        if self.refused:
            if self.limits.lingering >= self.limits.max_lingering:
                self.raw.close()
                return
            self.limits.lingering += 1
        self.raw.write_eof()  # sent once the answer is out
        self.raw.resume_reading()
        self.lingering = self.loop.call_later(LINGER_SECONDS, self.raw.close)


class Refused(Exception):
    """Raised in a parser callback to stop the parser; send_400_response then answers what the protocol noted."""


class _ClosesThrough:
    """The transport as uvicorn sees it: `close()` goes through the protocol's `_close`."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedProtocol) -> None:
        self.transport, self.protocol = transport, protocol
        # What uvicorn calls on every request, bound once here rather than found through __getattr__ each time.
        self.write = transport.write
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading

    def resume_reading(self) -> None:
        """uvicorn resumes reading after each answer and each read of a body; not while a refusal waits for the
        answers before it, nor while what was read waits unparsed."""
        if self.protocol.held is None and not self.protocol.unread:
            self.transport.resume_reading()

    def close(self) -> None:
        self.protocol._close()

    def is_closing(self) -> bool:
        return self.protocol.lingering is not None or self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _readable(transport: asyncio.Transport) -> bool:
    """Whether bytes (or an EOF) wait on this connection's socket, without blocking."""
    poller = select.poll()
    poller.register(transport.get_extra_info("socket").fileno(), select.POLLIN)
    return bool(poller.poll(0))


DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_BACKLOG = 2048  # uvicorn's
MAX_LINGERING = 1000  # refused connections read before their close, at most, however high the open-file limit
SPARE_FILES = 64  # the listening socket, the event loop's, logs, the metrics files


@dataclass(frozen=True)
class OpenFiles:
    """How a worker shares its open-file limit, so that it never reaches it. Past it, accepted exchanges can no
    longer connect to TikTok, and uvloop stops accepting altogether: the listening socket fills and is never
    read again (seen under a flood at `ulimit -n 256`).

    - backlog: connections waiting to be accepted. The event loop accepts every one waiting before the protocol
      can refuse (and close) any, so a flood takes this many files at once. Past it, the kernel holds new
      connections back until there is room.
    - max_connections: each connection served can hold a second one, to TikTok.
    - lingering: refused connections still being read before their close.
    """

    limit: float
    backlog: int
    max_connections: int
    lingering: int

    @classmethod
    def share(cls, limit: float, max_connections: int = 0) -> OpenFiles:
        """max_connections 0: 1000, or fewer where the limit is low (1024 on many laptops), leaving a quarter as
        many again for lingering."""
        usable = limit - SPARE_FILES
        backlog = int(min(DEFAULT_BACKLOG, max(16, usable // 4)))
        if not max_connections:
            max_connections = int(max(1, min(DEFAULT_MAX_CONNECTIONS, (usable - backlog) * 4 // 9)))
        lingering = int(max(0, min(MAX_LINGERING, usable - backlog - 2 * max_connections)))
        return cls(limit, backlog, max_connections, lingering)

    @property
    def too_tight(self) -> bool:
        return self.lingering < self.max_connections // 4


def open_files(settings: Settings) -> OpenFiles:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFiles.share(math.inf if soft == resource.RLIM_INFINITY else soft, settings.max_connections)


def drain_seconds(settings: Settings) -> int:
    """The longest a stop on SIGTERM takes while the requests under way finish: one still arriving has up to
    REQUEST_TIMEOUT to come in whole, then its exchange with TikTok up to TIKTOK_TIMEOUT. A container's grace
    period must cover it (deploy/kubernetes)."""
    return math.ceil(settings.request_timeout + settings.timeout) + 1


def raise_open_file_limit() -> None:
    """The soft open-file limit up to the hard one, as Go programs do by themselves: many systems start processes
    at 1024 however high the hard limit is. Called by `python proxy.py` before uvicorn starts; workers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # some systems cap it below the hard limit (macOS): the budget then follows the soft one


def protocol_for(settings: Settings) -> type[LimitedProtocol]:
    """The protocol class for these settings, with its own count of refusals; logs the limits once."""
    files = open_files(settings)
    # Under `uvicorn proxy:app`, nothing handles the proxy's logger until the app starts: say it through uvicorn's.
    out = log if log.hasHandlers() else logging.getLogger("uvicorn.error")
    log_event(logging.INFO, out, event="serving_limits", request_timeout=settings.request_timeout,
              keep_alive_timeout=settings.keep_alive_timeout, max_connections=files.max_connections,
              open_file_limit="unlimited" if files.limit == math.inf else files.limit, backlog=files.backlog,
              max_head_bytes=MAX_HEAD_BYTES)  # fmt: skip
    if files.too_tight:
        out.warning(
            f"MAX_CONNECTIONS={files.max_connections} is not well below this process's open-file limit "
            f"({files.limit:g}): each connection can hold a second one to TikTok, so the limit can be hit first and "
            "connections then fail without an answer; raise the limit (ulimit -n) or lower MAX_CONNECTIONS"
        )

    class LimitedHttpToolsProtocol(LimitedProtocol):
        limits = Limits(settings.request_timeout, files.max_connections, settings.keep_alive_timeout, files.lingering)

    return LimitedHttpToolsProtocol


def __getattr__(name: str) -> Any:
    """`LimitedHttpToolsProtocol`, built on first use from the environment and `.env`: importing this module
    reads no configuration, and each uvicorn worker builds its own when it starts."""
    if name == "LimitedHttpToolsProtocol":
        globals()[name] = protocol_for(settings_or_exit())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

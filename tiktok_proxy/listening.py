"""The addresses this process really listens on, and the gate's fail-closed check on them.

config.py refuses to start without a gate when HOST (or `python proxy.py --host`) is not loopback. uvicorn's own
command line binds what it is told (`uvicorn proxy:app --host 0.0.0.0`, `--fd`, `--workers`) without HOST, so the
app checks the listening sockets themselves, found among the process's open files: uvicorn binds its own right
after the app's startup, and a parent process (several workers, `--fd`) before it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from dataclasses import replace
from typing import Any

from .config import STARTUP_FAILURE, ConfigError, Settings, has_gate, print_error, require_gate_off_loopback

OPEN_FILES = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
WATCH_SECONDS = 1.0  # how long to wait, at most, for uvicorn to listen once the app has started


def listening_sockets() -> list[tuple[socket.AddressFamily, Any]]:
    """The family and address of each socket this process listens on: (host, port) for TCP, 0.0.0.0 or ::
    standing for every address; a path for a Unix socket."""
    found = []
    for name in os.listdir(OPEN_FILES):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            sock = socket.socket(fileno=int(name))  # its real family, whatever the process took it for
        except (ValueError, OSError):
            continue  # not a file descriptor, or closed meanwhile
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                found.append((sock.family, sock.getsockname()))
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor stays open: it is someone else's
    return found


def require_gate_where_listening(settings: Settings) -> None:
    """From the app's startup: stop the process, with config.py's one line and uvicorn's startup-failure status, if
    it listens off loopback with no gate. A Unix socket is local: whoever reaches it is on this machine.

    Looked at now (a socket bound before the app started), and then at each turn of the event loop until the
    process listens: every turn, so that no request can be read, let alone relayed, before the check."""
    if has_gate(settings) or settings.allow_open_relay:
        return
    loop = asyncio.get_running_loop()
    until = loop.time() + WATCH_SECONDS

    def check() -> None:
        listening = listening_sockets()
        try:
            for family, address in listening:
                if family in (socket.AF_INET, socket.AF_INET6):
                    require_gate_off_loopback(replace(settings, host=address[0]))
        except ConfigError as err:
            print_error(err)
            # At once, before any request is read. uvicorn has no quiet way to stop a server from inside: raised, this
            # would come out as tracebacks. Its startup-failure status stops its supervisor of several workers too.
            os._exit(STARTUP_FAILURE)
        if not listening and loop.time() < until:
            loop.call_soon(check)

    check()

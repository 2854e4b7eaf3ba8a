"""How `python proxy.py` stops: uvicorn's graceful shutdown, then an exit status that says whether it was complete.

On SIGTERM (or SIGINT) uvicorn stops accepting, lets the requests under way finish within its grace period
(`timeout_graceful_shutdown`), and cancels whatever is left then. uvicorn 0.54 then raises the signal again, so the
process dies of it (status -15, or 143 in a shell) whether the drain was complete or not, and its supervisor of
several workers exits 0 whatever its workers did. Here instead:

- 0: every request under way got its answer;
- CUT_SHORT (1): the grace period ran out and requests were cancelled, or a worker died otherwise;
- uvicorn's own statuses otherwise (3: the app could not start).

`uvicorn proxy:app` runs uvicorn's own server, whose status stays uvicorn's (docs/operations/deploy.md#stopping).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import HANDLED_SIGNALS
from uvicorn.supervisors import multiprocess

CUT_SHORT = 1


def serve(config: uvicorn.Config) -> None:
    """Serve until stopped, in one process or in `config.workers` workers; then exit with the status above."""
    if config.workers == 1:
        DrainingServer(config).run()
        return
    # uvicorn's supervisor makes each worker as `multiprocess.Process(config, sockets)`, by that name: this process
    # runs nothing else, so the name can be given to the worker that serves with a DrainingServer.
    multiprocess.Process = Worker  # type: ignore[misc]
    Workers(config, sockets=[config.bind_socket()]).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, ending with CUT_SHORT when the drain did not finish, and otherwise normally: status 0."""

    drained = False

    async def _wait_tasks_to_complete(self) -> None:
        # uvicorn cancels this wait when the grace period runs out: `drained` then stays False.
        await super()._wait_tasks_to_complete()
        self.drained = not self.force_exit  # a second Ctrl+C skips the wait

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handling of the stopping signals, without raising the signal again once stopped."""
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        if not self.started:
            sys.exit(STARTUP_FAILURE)  # as uvicorn.run() does
        if not self.drained:
            sys.exit(CUT_SHORT)


class Worker(multiprocess.Process):
    """One of uvicorn's worker processes, serving with a DrainingServer: its exit status is the server's."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class Workers(multiprocess.Multiprocess):
    """uvicorn's supervisor of several workers, ending with the first status other than 0 among its workers'."""

    def run(self) -> None:
        super().run()
        for process in self.processes:
            status = process.exitcode or 0
            if status != 0:
                sys.exit(status if status > 0 else CUT_SHORT)  # below 0: it died of a signal

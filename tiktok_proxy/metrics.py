"""Prometheus metrics. (Interface first: the calls the rest of the proxy makes; recording comes with issue 10.)

Labels never carry a secret, a code or a token: only routes, grants, OAuth error codes, statuses and kinds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def exchange(route: str, grant: str | None, outcome: str, status: int) -> None:
    """One relayed exchange ended: route (token, revoke, authorize), grant, outcome (ok or the OAuth error)."""


def upstream_answered(seconds: float) -> None:
    """TikTok answered (anything at all) after this many seconds."""


def upstream_failed(kind: str) -> None:
    """The exchange with TikTok failed: kind is connect, tls, timeout or unusable."""


def refused(status: int, reason: str) -> None:
    """The gate or a serving limit refused a request: 401 gate, 408 deadline, 413 body, 431 head, 503 full."""


@contextlib.contextmanager
def in_flight() -> Iterator[None]:
    """Counts the requests being served while the block runs."""
    yield

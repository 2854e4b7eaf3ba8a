"""Prometheus metrics: what the proxy counts, and the text GET /metrics serves.

Nothing is recorded until `setup()` runs (create_app calls it when METRICS_TOKEN is set): with metrics off,
each call here costs one check. Labels never carry a secret, a code, a token or a client key, and each label
takes its value from a fixed set (anything else counts as "other"), so the number of series stays bounded.

Several workers: prometheus_client decides at its first import whether values live in memory (one process)
or in per-process files under PROMETHEUS_MULTIPROC_DIR, which a scrape sums. So it is imported only inside
the functions below, never when this module loads: `python proxy.py` calls `share_between_workers()` before
uvicorn starts its workers, and each worker imports the client after the variable is set.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
ROUTES = frozenset({"token", "revoke", "authorize", "oidc_authorize", "oidc_callback", "oidc_token", "oidc_userinfo"})
GRANTS = frozenset({"authorization_code", "refresh_token", "client_credentials"})
# The OAuth error codes (RFC 6749 §4.1.2.1 and §5.2, RFC 6750, RFC 7009) and those TikTok documents. TikTok
# may send any string of up to 64 characters: one label value each would let it grow the series without bound.
OUTCOMES = frozenset(
    {
        "ok", "redirect", "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
        "unsupported_grant_type", "invalid_scope", "access_denied", "unsupported_response_type", "server_error",
        "temporarily_unavailable", "invalid_token", "unsupported_token_type", "access_token_invalid",
        "internal_error", "invalid_params", "rate_limit_exceeded", "scope_not_authorized", "scope_permission_missed",
        "request_not_supported", "request_uri_not_supported", "login_required",
    }
)  # fmt: skip
FAILURE_KINDS = ("connect", "tls", "timeout", "unusable")
ID_TOKEN_OUTCOMES = ("issued", "omitted")
REFUSALS = {"malformed": 400, "upgrade": 400, "gate": 401, "deadline": 408, "body": 413, "head": 431, "full": 503}
# TikTok usually answers in 0.1 to 0.5 s; the proxy gives up at TIKTOK_TIMEOUT (10 s by default).
ANSWER_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)

log = logging.getLogger("tiktok_proxy")


class _Counted:
    """A labelled counter that keeps its children: labels() takes a lock and formats strings at every call."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.children: dict[tuple[str | int, ...], Counter] = {}

    def inc(self, *labels: str | int) -> None:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.counter.labels(*labels)
        child.inc()


class _Recorder:
    def __init__(self, workers: int) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
            multiprocess,
            values,
        )

        disable_created_metrics()  # type: ignore[no-untyped-call]  # they double the series; multiprocess has none
        self.registry = CollectorRegistry()
        # What the client chose at its first import, not what the environment says now: the two differ when
        # something imported it before PROMETHEUS_MULTIPROC_DIR was set, and a scrape would then read nothing.
        self.shared = shared = bool(getattr(values.ValueClass, "_multiprocess", False))
        if shared:
            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]  # sums the workers
            _forget_dead_workers(os.environ[MULTIPROC_DIR])
        elif workers > 1 or os.environ.get(MULTIPROC_DIR):
            log.warning(
                "metrics: the workers do not share their counts, so a scrape of /metrics sees only the worker that "
                "answers it; serve with `python proxy.py`, or set PROMETHEUS_MULTIPROC_DIR to a fresh, empty "
                "directory before uvicorn starts (docs/operations/metrics.md)"
            )
        home = None if shared else self.registry  # shared values live in files: nothing to register

        def counter(name: str, text: str, labels: list[str]) -> _Counted:
            return _Counted(Counter(name, text, labels, registry=home))

        self.exchanges = counter(
            "tiktok_proxy_exchanges",
            "Exchanges answered, by route, grant, outcome (ok, redirect or the OAuth error) and HTTP status",
            ["route", "grant", "outcome", "status"],
        )
        self.failures = counter("tiktok_proxy_upstream_failures", "Exchanges with TikTok that failed", ["kind"])
        self.refusals = counter("tiktok_proxy_refusals", "Requests refused by the gate or a serving limit",
                                ["status", "reason"])  # fmt: skip
        self.refresh_id_tokens = counter(
            "tiktok_proxy_oidc_refresh_id_tokens",
            "OpenID Connect refreshes answered, with a new ID token (issued) or without one, TikTok's user info "
            "having failed (omitted)",
            ["id_token"],
        )
        self.answer_time = Histogram(
            "tiktok_proxy_upstream_answer_seconds", "Time TikTok took to answer", buckets=ANSWER_BUCKETS, registry=home
        )
        in_flight = Gauge("tiktok_proxy_requests_in_flight", "Token and revoke requests being served",
                          multiprocess_mode="livesum", registry=home)  # fmt: skip
        self.in_flight = in_flight.track_inprogress()
        # Known series start at zero, so that rate() and alerts see them before the first failure.
        for kind in FAILURE_KINDS:
            self.failures.counter.labels(kind)
        for reason, status in REFUSALS.items():
            self.refusals.counter.labels(status, reason)
        for outcome in ID_TOKEN_OUTCOMES:
            self.refresh_id_tokens.counter.labels(outcome)


_recorder: _Recorder | None = None
_IDLE = nullcontext()


def setup(workers: int = 1) -> None:
    """Start recording. Once per process: the tests build many apps in one."""
    global _recorder
    if _recorder is None:
        _recorder = _Recorder(workers)


def render() -> tuple[bytes, str]:
    """The body and content type of GET /metrics: this process's values, or every worker's, summed."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    setup()
    assert _recorder is not None
    return generate_latest(_recorder.registry), CONTENT_TYPE_LATEST


def share_between_workers() -> None:
    """Run by `python proxy.py` before uvicorn starts its workers: a directory where each writes its values.

    Fresh at each start, because values left from an earlier run would be summed in; removed at exit."""
    path = tempfile.mkdtemp(prefix="tiktok-proxy-metrics-")
    os.environ[MULTIPROC_DIR] = path  # the workers inherit it, and import prometheus_client after this
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def worker_stopped() -> None:
    """This worker stops: its requests in flight leave the sum. (Its counters stay: they are history.)"""
    if _recorder is not None and _recorder.shared:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _forget_dead_workers(path: str) -> None:
    """Drop the in-flight count of workers that died without saying so (uvicorn SIGKILLs a hung worker)."""
    from prometheus_client import multiprocess

    for name in os.listdir(path):
        pid = name.removeprefix("gauge_livesum_").removesuffix(".db")
        if name.startswith("gauge_livesum_") and pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def exchange(route: str, grant: str | None, outcome: str, status: int) -> None:
    """One exchange ended: route (token, revoke, authorize), grant, outcome (ok, redirect or the OAuth error)."""
    if _recorder is not None:
        _recorder.exchanges.inc(
            route if route in ROUTES else "other",
            grant if grant in GRANTS else "none",
            outcome if outcome in OUTCOMES else "other",
            status,
        )


def refresh_id_token(issued: bool) -> None:
    """An OpenID Connect refresh was answered with TikTok's tokens, and a new ID token or none (OIDC Core §12.2)."""
    if _recorder is not None:
        _recorder.refresh_id_tokens.inc("issued" if issued else "omitted")


def upstream_answered(seconds: float) -> None:
    """TikTok answered (anything at all) after this many seconds."""
    if _recorder is not None:
        _recorder.answer_time.observe(seconds)


def upstream_failed(kind: str) -> None:
    """The exchange with TikTok failed: kind is connect, tls, timeout or unusable."""
    if _recorder is not None:
        _recorder.failures.inc(kind if kind in FAILURE_KINDS else "other")


def refused(reason: str) -> None:
    """The gate or a serving limit refused a request: one of REFUSALS, which gives its status."""
    if _recorder is not None:
        _recorder.refusals.inc(REFUSALS[reason], reason)


def in_flight() -> AbstractContextManager[None]:
    """Counts the requests being served while the block runs."""
    return _IDLE if _recorder is None else _recorder.in_flight

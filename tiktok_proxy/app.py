"""The ASGI app: the routes, the rules every relayed request goes through, and the lifespan."""

from __future__ import annotations

import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import metrics, tiktok
from .config import GATE_ADVICE, Settings, egress_proxy_origin, has_gate, is_loopback, settings_or_exit
from .errors import NO_STORE, OAuthError, json_bytes, missing
from .inbound import (
    CUT_BY_DEADLINE,
    GATE_HEADER,
    KNOWN_PARAMS,
    check_allowed,
    check_client,
    check_gate_before_body,
    client_credentials,
    gate_mode,
    one_of,
    parse_params,
    parse_query,
    read_body,
    unique_params,
)
from .listening import require_gate_where_listening
from .logs import formatter, log, log_event, log_outcome, use_format_everywhere
from .upstream import UpstreamClient


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


async def relay(
    settings: Settings, upstream: UpstreamClient, to: tiktok.Relay, scope: Scope, receive: Receive
) -> Answer | None:
    """Every rule of a relayed request, in order: parse, authenticate, allow, send once, normalize, log.

    None when serving.py has already answered: it cut the body at REQUEST_TIMEOUT, answered 408 and logged it."""
    headers = Headers(scope=scope)
    started = time.perf_counter()
    fields: dict[str, Any] = {"grant": None, "client_key": None, "upstream_status": None, "log_id": None}
    relayed_grant = None  # the metric's grant: only once the form for TikTok is built, so "none" means not relayed
    try:
        check_gate_before_body(settings, headers)  # a caller without the header costs no body read, when it decides
        params = parse_params(headers.get("content-type", ""), await read_body(headers, receive))
        fields["grant"] = tiktok.grant_asked(params)  # the log's grant: what was asked, refused or not
        if log.isEnabledFor(logging.DEBUG):
            # Known names only: an unknown "name" can hold anything, e.g. a whole JSON body sent as a form.
            known = sorted(name for name in params if name in KNOWN_PARAMS)
            log_event(logging.DEBUG, event=f"{to.event}_request", params=",".join(known), unknown_params=len(params) - len(known),
                      authorization_header="authorization" in headers)  # fmt: skip
        client_key, client_secret = client_credentials(headers, params)
        fields["client_key"] = client_key
        check_client(settings, headers, client_key, client_secret)
        form = to.build_form(params, client_key, client_secret)
        relayed_grant = form.get("grant_type")
        reply = await tiktok.post_form(upstream, to.url(settings), form, settings.timeout)
        fields["upstream_status"], fields["log_id"] = reply.status, reply.log_id
        answer = Answer(200, to.answer(reply, form), NO_STORE)
        outcome = "ok"
    except OAuthError as err:
        answer, outcome = Answer(err.status, err.body(), err.answer_headers()), err.error
        fields["log_id"] = err.log_id or fields["log_id"]
    if scope.get("state", {}).get(CUT_BY_DEADLINE):
        return None
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    # Whether X-Proxy-Secret came (never its value): shows, for example, whether Token Vault's refreshes carry
    # the connection's customHeaders.
    gate_header = "sent" if GATE_HEADER in headers else "absent"
    log_outcome(answer.status, event=to.event, outcome=outcome, **fields, duration_ms=duration_ms,
                after_status={"gate_header": gate_header})  # fmt: skip
    metrics.exchange(to.event, relayed_grant, outcome, answer.status)
    return answer


class RelayedRoutes:
    """POST /proxy/token and POST /proxy/revoke as plain ASGI, in front of Starlette, which serves every other
    request. The hot path then skips Starlette's router, middleware, Request and Response: a sixth of the CPU of
    an exchange (docs/performance.md). So this class does their part for these two routes: 405 for another
    method, and a JSON 500 for an unexpected exception."""

    def __init__(self, app: Starlette, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.relayed = {path: to for base, to in RELAYED.items() for path in (base, base + "/")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        to = self.relayed.get(scope["path"]) if scope["type"] == "http" else None
        if to is None:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            description = "method not allowed here; allowed: POST"
            body = {"error": "invalid_request", "error_description": description}
            await send_json(send, Answer(405, body, {**NO_STORE, "Allow": "POST"}))
        else:
            try:
                with metrics.in_flight():
                    answer = await relay(self.settings, scope["state"]["upstream"], to, scope, receive)
            except Exception:
                log.exception(f"unexpected error in POST {scope['path']}")  # the traceback, as uvicorn would log it
                answer = Answer(500, UNEXPECTED, NO_STORE)
            if answer is not None:
                await send_json(send, answer)


RELAYED = {"/proxy/token": tiktok.TOKEN, "/proxy/revoke": tiktok.REVOKE}
UNEXPECTED = {"error": "server_error", "error_description": "unexpected error in the proxy; see its log"}


async def send_json(send: Send, answer: Answer) -> None:
    """The answer as Starlette's JSONResponse would send it: the same bytes and the same headers."""
    content = json_bytes(answer.body)
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
    headers += [(b"content-length", b"%d" % len(content)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def authorize_endpoint(request: Request) -> Response:
    """GET /proxy/authorize: redirect to TikTok's v2 authorize page, rewritten the way TikTok wants it."""
    settings: Settings = request.app.state.settings
    client_key = None
    try:
        params = unique_params(parse_query(request.url.query))
        client_key = one_of(params, "client_id", "client_key")
        if client_key is None:
            raise missing("client_id")
        check_allowed(settings, client_key)
        query = tiktok.authorize_query(params, client_key, settings.scopes)
    except OAuthError as err:
        log_outcome(err.status, event="authorize", outcome=err.error, client_key=client_key)
        metrics.exchange("authorize", None, err.error, err.status)
        return err.response()
    log_outcome(302, event="authorize", outcome="redirect", client_key=client_key)
    metrics.exchange("authorize", None, "redirect", 302)
    # Only ever the configured TikTok URL: nothing in the request can choose where the browser goes.
    location = f"{settings.authorize_url}?{urlencode(query)}"
    return RedirectResponse(location, status_code=302, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics, served when METRICS_TOKEN is set: Prometheus's text, to `Authorization: Bearer <it>` only."""
    expected: str = request.app.state.settings.metrics_token
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # In constant time, so that how much of a guess matched does not show in the answer's timing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), expected.encode()):
        description = "GET /metrics needs the header Authorization: Bearer <METRICS_TOKEN>"
        bearer = {"WWW-Authenticate": 'Bearer realm="metrics"'}
        return OAuthError(401, "invalid_token", description, headers=bearer).response()
    body, content_type = metrics.render()
    return Response(body, media_type=content_type, headers=NO_STORE)


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 as OAuth-style JSON, like every other answer (Starlette's default is plain text)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        description = f"method not allowed here; allowed: {(exc.headers or {}).get('Allow', '')}"
    elif exc.status_code == 404:
        description = "no such endpoint; the token endpoint is POST /proxy/token"
    else:
        description = "the request could not be handled"
    body = {"error": "invalid_request", "error_description": description}
    return JSONResponse(body, status_code=exc.status_code, headers={**NO_STORE, **(exc.headers or {})})


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Last resort: a JSON answer, never an HTML page. (uvicorn still logs the traceback.)"""
    return JSONResponse(UNEXPECTED, status_code=500, headers=NO_STORE)


def warn_about_the_gate(settings: Settings) -> None:
    """Startup warnings for a gate that is off or partial (config.py refuses no gate at all off loopback)."""
    if not has_gate(settings):
        if settings.allow_open_relay and not is_loopback(settings.host):
            log.warning(
                f"OPEN RELAY: ALLOW_OPEN_RELAY=true and no gate, on {settings.host}: anyone who reaches this proxy "
                f"can relay token requests to TikTok through it; {GATE_ADVICE} (docs/gate-modes.md)"
            )
        else:
            log.warning(
                "the proxy has no gate: anyone who reaches it can relay token requests to TikTok through it; "
                f"{GATE_ADVICE} (docs/gate-modes.md)"
            )
    elif not settings.allowed_client_keys and not settings.tiktok_client_key:
        log.warning(
            "PROXY_SECRET is set but ALLOWED_CLIENT_KEYS is empty: the proxy relays for any client key that sends "
            "X-Proxy-Secret; list your TikTok apps' client keys in ALLOWED_CLIENT_KEYS"
        )


def create_app(settings: Settings | None = None) -> RelayedRoutes:
    """The ASGI app: the relayed routes, in front of Starlette for the rest."""
    settings = settings or settings_or_exit()
    # Now, not in the lifespan: under `uvicorn proxy:app` uvicorn logs its first lines before the lifespan runs.
    use_format_everywhere(settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        log.setLevel(settings.log_level)
        # uvicorn's access log prints query strings, where a careless client may put a secret; the proxy's own
        # line per exchange replaces it, however the server was started.
        logging.getLogger("uvicorn.access").disabled = True
        if not logging.getLogger().handlers:  # e.g. under `uvicorn proxy:app`, which configures only its own
            handler = logging.StreamHandler()
            handler.setFormatter(formatter(settings.log_format))
            logging.basicConfig(level=settings.log_level, handlers=[handler])
        log_event(logging.INFO, event="start", token_url=settings.token_url, revoke_url=settings.revoke_url,
                  timeout=settings.timeout, allowed_client_keys=len(settings.allowed_client_keys),
                  egress_proxy=egress_proxy_origin(settings.egress_proxy) or None,
                  gate=gate_mode(settings), metrics="on" if settings.metrics_token else "off", **oidc,
                  oidc_gate=gate_mode(settings, header=False) if settings.oidc_key else None)  # fmt: skip
        for warning in settings.warnings:  # a misspelt name, a secret that cannot be real (config.py)
            log.warning(warning)
        warn_about_the_gate(settings)
        require_gate_where_listening(settings)  # however it was started: `uvicorn proxy:app --host 0.0.0.0` too
        # Everything allocated so far lives for the whole process: keep the collector from rescanning it,
        # which otherwise shows up as latency spikes under load.
        gc.freeze()
        client = tiktok.upstream_client(settings)
        try:
            yield {"upstream": client}
        finally:
            await client.aclose()
            metrics.worker_stopped()  # here: under `uvicorn proxy:app` a worker dies of SIGTERM, so atexit never runs

    # TikTok's own URLs end in '/', so users may paste ours that way too (RelayedRoutes does the same).
    routes = [Route(path, authorize_endpoint, methods=["GET"]) for path in ("/proxy/authorize", "/proxy/authorize/")]
    if settings.metrics_token:  # otherwise GET /metrics is the ordinary 404
        metrics.setup(settings.workers)
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    oidc: dict[str, Any] = {"oidc": "off"}
    if settings.oidc_key is not None:  # the OpenID Connect facade; otherwise its paths are the ordinary 404
        from .oidc import facade  # only then: it loads cryptography, which the token route never needs
        from .oidc.provider import Provider

        provider = Provider(settings)
        routes += facade.routes(provider)
        oidc = {"oidc": settings.public_url, **provider.kids()}
    app = Starlette(
        routes=[*routes, Route("/healthz", healthz, methods=["GET"])],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a 307 would make the client re-send its secret; answer or 404
    app.state.settings = settings
    return RelayedRoutes(app, settings)

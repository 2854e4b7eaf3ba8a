"""The ASGI app: the routes, the rules every relayed request goes through, and the lifespan."""

from __future__ import annotations

import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from . import metrics, oidc, tiktok
from .config import Settings, egress_proxy_origin, has_gate, is_loopback, settings_or_exit
from .errors import NO_STORE, OAuthError, missing
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
from .logs import formatter, log, log_event, log_outcome, use_format_everywhere


async def relay(request: Request, to: tiktok.Relay) -> Response:
    """Every rule of a relayed request, in order: parse, authenticate, allow, send once, normalize, log."""
    settings: Settings = request.app.state.settings
    started = time.perf_counter()
    fields: dict[str, Any] = {"grant": None, "client_key": None, "upstream_status": None, "log_id": None}
    try:
        check_gate_before_body(settings, request)  # a caller without the header costs no body read, when it decides
        params = parse_params(request.headers.get("content-type", ""), await read_body(request))
        if log.isEnabledFor(logging.DEBUG):
            # Known names only: an unknown "name" can hold anything, e.g. a whole JSON body sent as a form.
            known = sorted(name for name in params if name in KNOWN_PARAMS)
            log_event(logging.DEBUG, event=f"{to.event}_request", params=",".join(known), unknown_params=len(params) - len(known),
                      authorization_header="authorization" in request.headers)  # fmt: skip
        client_key, client_secret = client_credentials(request, params)
        fields["client_key"] = client_key
        check_client(settings, request, client_key, client_secret)
        form = to.build_form(params, client_key, client_secret)
        fields["grant"] = form.get("grant_type")
        reply = await tiktok.post_form(request.state.upstream, to.url(settings), form, settings.timeout)
        fields["upstream_status"], fields["log_id"] = reply.status, reply.log_id
        response: Response = JSONResponse(to.answer(reply, form), headers=NO_STORE)
        outcome = "ok"
    except OAuthError as err:
        response, outcome = err.response(), err.error
        fields["log_id"] = err.log_id or fields["log_id"]
    if getattr(request.state, CUT_BY_DEADLINE, False):
        return response  # serving.py cut the body at REQUEST_TIMEOUT, and has answered 408 and logged it
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    # Whether X-Proxy-Secret came (never its value): shows, for example, whether Token Vault's refreshes carry
    # the connection's customHeaders.
    gate_header = "sent" if GATE_HEADER in request.headers else "absent"
    log_outcome(response.status_code, event=to.event, outcome=outcome, **fields, duration_ms=duration_ms,
                after_status={"gate_header": gate_header})  # fmt: skip
    metrics.exchange(to.event, fields["grant"], outcome, response.status_code)
    return response


async def token_endpoint(request: Request) -> Response:
    """POST /proxy/token: Auth0's token request in, TikTok's answer normalized out."""
    with metrics.in_flight():
        return await relay(request, tiktok.TOKEN)


async def revoke_endpoint(request: Request) -> Response:
    """POST /proxy/revoke: an RFC 7009 revocation, relayed to TikTok's revoke endpoint."""
    with metrics.in_flight():
        return await relay(request, tiktok.REVOKE)


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
    body = {"error": "server_error", "error_description": "unexpected error in the proxy; see its log"}
    return JSONResponse(body, status_code=500, headers=NO_STORE)


def warn_about_the_gate(settings: Settings) -> None:
    """Startup warnings for a gate that is off or partial (config.py refuses no gate at all off loopback)."""
    if not has_gate(settings):
        if settings.allow_open_relay and not is_loopback(settings.host):
            log.warning(
                f"OPEN RELAY: ALLOW_OPEN_RELAY=true and no gate, on {settings.host}: anyone who reaches this proxy "
                "can relay token requests to TikTok through it (set PROXY_SECRET, see docs/gate-modes.md)"
            )
        else:
            log.warning(
                "neither PROXY_SECRET nor ALLOWED_CLIENT_KEYS (nor TIKTOK_CLIENT_KEY with TIKTOK_CLIENT_SECRET) is "
                "set: anyone can relay token requests through this proxy (set PROXY_SECRET, see docs/gate-modes.md)"
            )
    elif not settings.allowed_client_keys and not settings.tiktok_client_key:
        log.warning("ALLOWED_CLIENT_KEYS is empty: the proxy relays for any client key (set it in production)")


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app."""
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
                  gate=gate_mode(settings), metrics="on" if settings.metrics_token else "off",
                  oidc=settings.public_url if settings.oidc_key else "off")  # fmt: skip
        warn_about_the_gate(settings)
        # Everything allocated so far lives for the whole process: keep the collector from rescanning it,
        # which otherwise shows up as latency spikes under load.
        gc.freeze()
        client = tiktok.upstream_client(settings)
        try:
            yield {"upstream": client}
        finally:
            await client.aclose()
            metrics.worker_stopped()  # here: uvicorn ends a worker by re-raising SIGTERM, so atexit never runs

    routes = [
        Route(path, endpoint, methods=[method])
        for base, endpoint, method in [
            ("/proxy/token", token_endpoint, "POST"),
            ("/proxy/revoke", revoke_endpoint, "POST"),
            ("/proxy/authorize", authorize_endpoint, "GET"),
        ]
        for path in (base, base + "/")  # TikTok's own URLs end in '/', so users may paste ours that way too
    ]
    if settings.metrics_token:  # otherwise GET /metrics is the ordinary 404
        metrics.setup(settings.workers)
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    if settings.oidc_key is not None:  # the OpenID Connect facade; otherwise its paths are the ordinary 404
        routes += oidc.Facade(settings).routes()
    app = Starlette(
        routes=[*routes, Route("/healthz", healthz, methods=["GET"])],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a 307 would make the client re-send its secret; answer or 404
    app.state.settings = settings
    return app

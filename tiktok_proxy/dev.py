"""`python proxy.py dev`: the developer's whole loop behind an ngrok tunnel, in one command.

In order: the settings (`.env` in the working directory, then the environment) and NGROK_AUTHTOKEN; the gate,
checked before anything is public; the tunnel, opened with ngrok's Agent SDK (the `ngrok` package, which needs no
ngrok binary) to the proxy's loopback port; the Auth0 connection pointed at it (what setup-auth0 does), or the URLs
to paste; what to register at TikTok. Then the proxy serves on loopback only, the tunnel being the only way in;
doctor checks it through the tunnel once it answers; and Ctrl-C or SIGTERM drains it, closes the tunnel and exits 0.

The SDK is optional: the proxy's serving set (requirements.txt) never needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import Any, NoReturn

import httpx

from .auth0.doctor import doctor
from .auth0.management import AdminError, AdminSettings, load_admin_settings, require
from .auth0.setup import desired_options, setup_auth0
from .config import (
    NGROK_AUTHTOKEN_PAGE,
    ConfigError,
    NgrokSettings,
    Settings,
    load_dotenv_from_working_directory,
    load_ngrok_settings,
    load_settings,
    print_error,
    require_gate_off_loopback,
)
from .logs import redact
from .oidc.provider import CALLBACK_PATH

LOOPBACK = "127.0.0.1"
TUNNEL = "the ngrok tunnel"  # where the proxy is reachable from, for the gate's rule and its refusal
INSTALL_SDK = ".venv/bin/pip install ngrok"
# ngrok's agent is a Go program, and Go's http.Transport drops idle connections after 90 s: the proxy must keep
# them longer, so that ngrok, never the proxy, closes one (docs/operations/front-doors.md).
NGROK_KEEP_ALIVE_TIMEOUT = 95
ANSWER_SECONDS = 30  # how long doctor waits for the proxy to answer through the tunnel
CLOSE_SECONDS = 5  # how long ending the tunnel may take when ngrok's service has gone quiet

Serve = Callable[[str | None, int | None], None]


class DevError(Exception):
    """A failure `dev` reports in one line, before it exits 1."""


class Stopped(BaseException):
    """Ctrl-C or SIGTERM, raised in the main thread wherever it is, so that every step ends the same way."""


def stop(signum: int, frame: FrameType | None) -> None:
    ignore_signals()
    raise Stopped


def ignore_signals() -> None:
    """While the tunnel closes: a second Ctrl-C must not cut the closing short (it is bounded anyway)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def develop(args: argparse.Namespace, serve: Serve) -> NoReturn:
    """The whole loop, then the end of the process. `serve` is how `python proxy.py` serves (cli.serve)."""
    try:
        status = the_loop(args, serve)
    except Stopped:  # a signal while a refusal was being printed: the tunnel is closed all the same
        status = 0
    # Without finalizing the interpreter: the SDK's Rust threads outlive it and can abort its finalization, even
    # once the session has ended (ngrok 1.4.0, after a refused token: SIGABRT or SIGSEGV in about one run in six).
    # Everything is closed by now; what is left to write is flushed first.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def the_loop(args: argparse.Namespace, serve: Serve) -> int:
    """The steps, in order; the exit status."""
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # its lines among the log's, in order
    # doctor's and setup-auth0's own requests (the proxy's upstream client is not httpx): one log line each would
    # only repeat what they print.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    secrets: list[str] = []
    sdk: Any = None
    listener: Any = None
    try:
        settings, tunnel, admin = read_settings(args)
        secrets = [tunnel.authtoken, *admin.secrets()]
        port = args.port or settings.port
        require_free(port)
        sdk = agent_sdk()
        listener = open_tunnel(sdk, tunnel, port)
        public_url = str(listener.url()).rstrip("/")
        print(f"ngrok tunnel open: {public_url} -> {LOOPBACK}:{port}")
        admin = replace(admin, public_url=public_url)
        point_auth0(admin, args.use_proxy_authorize)
        tell_what_to_register(settings, admin)
        for_this_run(settings, public_url)
        threading.Thread(target=check_through_the_tunnel, args=(admin,), name="doctor", daemon=True).start()
        serve(LOOPBACK, port)
    except ConfigError as err:
        print_error(err)
        return 2
    except (AdminError, DevError) as err:
        print(f"tiktok-token-proxy: {redact(str(err), secrets)}", file=sys.stderr)
        return 1
    except SystemExit as refused:  # serve()'s own: a bad setting, or uvicorn failing to start
        return refused.code if isinstance(refused.code, int) else 1
    except Stopped:
        pass
    finally:
        ignore_signals()
        if sdk is not None:
            end_tunnel(sdk, listener)
    return 0


def read_settings(args: argparse.Namespace) -> tuple[Settings, NgrokSettings, AdminSettings]:
    """Everything checked before the tunnel opens: a mistake found later would leave Auth0 pointing at it."""
    load_dotenv_from_working_directory()
    # The tunnel's address becomes PUBLIC_URL: until it is known, a placeholder stands in, for the OpenID Connect
    # facade, which needs one.
    settings = load_settings({**os.environ, "HOST": LOOPBACK, "PUBLIC_URL": "https://ngrok.invalid"})
    tunnel = load_ngrok_settings(os.environ)
    # Reachable from anywhere through the tunnel: the rule, and the refusal, of a proxy listening on a public address.
    require_gate_off_loopback(replace(settings, host=TUNNEL))
    admin = load_admin_settings(vars(args))
    if manages_auth0(admin):
        require(admin, "auth0_base", "tiktok_client_key", "tiktok_client_secret")
    return settings, tunnel, admin


def manages_auth0(admin: AdminSettings) -> bool:
    return bool(admin.mgmt_token or admin.mgmt_client_id or admin.mgmt_client_secret)


def require_free(port: int) -> None:
    """A proxy already listening there would make dev fail only after Auth0 points at the tunnel."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            raise DevError(
                f"port {port} on {LOOPBACK} is taken ({exc.strerror}): stop what listens there, or use --port"
            ) from None


def agent_sdk() -> Any:
    try:
        import ngrok
    except ImportError:
        raise DevError(
            f"python proxy.py dev needs ngrok's Agent SDK (the Python package ngrok, no ngrok binary), which the "
            f"proxy itself does not: install it with {INSTALL_SDK}"
        ) from None
    return ngrok


def open_tunnel(sdk: Any, tunnel: NgrokSettings, port: int) -> Any:
    """The SDK's listener for an https endpoint forwarding to the loopback port; one clear line if ngrok refuses."""
    options = {"authtoken": tunnel.authtoken, **({"domain": tunnel.domain} if tunnel.domain else {})}
    try:
        return sdk.forward(f"{LOOPBACK}:{port}", "http", **options)
    except ValueError as err:  # the SDK's one exception: ValueError(step, ngrok's message[, ERR_NGROK_code])
        raise DevError(refusal(err, tunnel)) from None


def refusal(err: ValueError, tunnel: NgrokSettings) -> str:
    step, message, code = (*[str(arg) for arg in err.args], "", "", "")[:3]
    # ngrok's own message may quote the authtoken (ERR_NGROK_105, 107): never shown as it is.
    message = redact(message.strip().splitlines()[0] if message.strip() else "", [tunnel.authtoken])
    if code in ("ERR_NGROK_105", "ERR_NGROK_106", "ERR_NGROK_107"):
        return f"ngrok refused NGROK_AUTHTOKEN ({code}): copy yours from {NGROK_AUTHTOKEN_PAGE}"
    if step == "failed to start listener" and tunnel.domain:
        return (
            f"ngrok refused NGROK_DOMAIN {tunnel.domain} ({code or 'no code'}: {message}): set it to your account's "
            "domain, as ngrok's dashboard lists it under Domains, or leave it empty for a new address at every run"
        )
    if step == "failed to connect session" and not code:
        return f"could not reach ngrok's service ({message}): check this machine's connection to the internet"
    return f"ngrok could not open the tunnel: {step}: {message}" + (f" ({code})" if code else "")


def point_auth0(admin: AdminSettings, use_proxy_authorize: bool) -> None:
    """What setup-auth0 does, against the tunnel's address; or, without Management API credentials, what to paste."""
    if manages_auth0(admin):
        setup_auth0(admin, dry_run=False, use_proxy_authorize=use_proxy_authorize, out=print)
        return
    urls = desired_options(admin, use_proxy_authorize)
    print(
        "No Auth0 Management API credentials (AUTH0_MGMT_CLIENT_ID and AUTH0_MGMT_CLIENT_SECRET): paste into the "
        f"connection {admin.connection_name} in the Auth0 Dashboard (Authentication > Social):"
    )
    print(f"  Token URL: {urls['tokenURL']}")
    if use_proxy_authorize:
        print(f"  Authorization URL: {urls['authorizationURL']}")


def tell_what_to_register(settings: Settings, admin: AdminSettings) -> None:
    uris = [admin.public_url + CALLBACK_PATH] if settings.oidc_key is not None else []
    uris += [admin.redirect_uri] if admin.redirect_uri else []
    for uri in uris or ["https://<your Auth0 domain>/login/callback (set AUTH0_DOMAIN to have it printed here)"]:
        print(f"Register at TikTok (Login Kit for Web, redirect URI): {uri}")
    issuer = ", the OpenID Connect issuer" if settings.oidc_key is not None else ""
    print(f"Public address: {admin.public_url} (PUBLIC_URL for this run{issuer})")


def for_this_run(settings: Settings, public_url: str) -> None:
    """The settings serve() and the app read from the environment, as every run of the proxy does."""
    os.environ["PUBLIC_URL"] = public_url
    # One process: the tunnel and doctor's thread live in it, and a developer's logins need no more.
    os.environ["WEB_CONCURRENCY"] = "1"
    if settings.keep_alive_timeout < NGROK_KEEP_ALIVE_TIMEOUT:
        os.environ["KEEP_ALIVE_TIMEOUT"] = str(NGROK_KEEP_ALIVE_TIMEOUT)
        print(
            f"KEEP_ALIVE_TIMEOUT is {NGROK_KEEP_ALIVE_TIMEOUT} s for this run, not {settings.keep_alive_timeout}: "
            "above ngrok's idle timeout, so that ngrok, never the proxy, closes an idle connection"
        )


def check_through_the_tunnel(admin: AdminSettings) -> None:
    """doctor, once the proxy answers at the public address. A problem is printed; the proxy keeps serving."""
    deadline = time.monotonic() + ANSWER_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{admin.public_url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    print(f"doctor, through {admin.public_url}:")
    doctor(admin, print)
    print(f"Serving through {admin.public_url} until Ctrl-C.")


def end_tunnel(sdk: Any, listener: Any) -> None:
    """Close the tunnel, then end ngrok's session, so that ngrok's service sees the agent leave at once. In a thread
    of its own, given CLOSE_SECONDS: ngrok's service may have gone quiet, and this process must end all the same."""
    ended = threading.Event()

    async def closing() -> None:
        await listener.close()  # a coroutine, and uvicorn's event loop has ended: it gets one of its own

    def end() -> None:
        if listener is not None:
            with contextlib.suppress(ValueError):  # ngrok's failure to close it: ending the session closes it too
                asyncio.run(closing())
        with contextlib.suppress(ValueError):
            sdk.kill()
        ended.set()

    threading.Thread(target=end, name="ngrok-end", daemon=True).start()
    if not ended.wait(CLOSE_SECONDS):
        print(
            "tiktok-token-proxy: ngrok did not answer the closing of the tunnel: it ends with this process",
            file=sys.stderr,
        )
    elif listener is not None:
        print("ngrok tunnel closed")

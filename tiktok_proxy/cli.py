"""The command line: with no command it serves; `setup-auth0`, `doctor` and `revoke-user` manage Auth0;
`oidc-keygen` makes a signing key for the OpenID Connect facade; `dev` serves through an ngrok tunnel (dev.py).

It sits on top of everything: the serving side never imports it, and it loads the Auth0 tooling only for
those commands.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from . import metrics, serving, shutdown
from .config import ConfigError, settings_or_exit
from .logs import logging_config, redact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="TikTok Login Kit for identity platforms. With no command it serves: the token proxy for Auth0's "
        "custom social connections and, when OIDC_SIGNING_KEY_FILE is set, the OpenID Connect facade, an OIDC "
        "provider in front of TikTok for Cognito, Entra, Keycloak, authentik and every other OIDC platform. "
        "Settings come from the environment or .env (docs/configuration.md)."
    )
    parser.add_argument("--host", help="address to listen on (default: HOST, or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT, or 3333)")
    commands = parser.add_subparsers(dest="command", metavar="command")
    setup = commands.add_parser("setup-auth0", help="create or update the Auth0 connection through the Management API")
    setup.add_argument("--dry-run", action="store_true", help="show the changes without writing them")
    doctor = commands.add_parser("doctor", help="check the proxy, the tunnel and the Auth0 connection")
    dev = commands.add_parser(
        "dev",
        help="serve on loopback through an ngrok tunnel (NGROK_AUTHTOKEN), point the Auth0 connection at it as "
        "setup-auth0 does, and check it with doctor; Ctrl-C stops it",
    )
    dev.add_argument("--port", type=int, default=argparse.SUPPRESS, help="port to listen on (default: PORT, or 3333)")
    revoke = commands.add_parser("revoke-user", help="revoke an Auth0 user's TikTok grant (account deletion)")
    revoke.add_argument("user_id", help="the Auth0 user id, e.g. oauth2|tiktok|<open_id>")
    revoke.add_argument("--delete-user", action="store_true", help="then delete the Auth0 user, once the revoke worked")
    revoke.add_argument("--force", action="store_true", help="with --delete-user: delete even if the revoke failed")
    keygen = commands.add_parser("oidc-keygen", help="make a new signing key for OIDC_SIGNING_KEY_FILE (PEM)")
    keygen.add_argument("--type", choices=("rsa", "ec"), default="rsa", help="rsa: RS256 (default); ec: ES256")
    keygen.add_argument(
        "--out", metavar="FILE", help="write it to FILE, readable by its owner only, never over an existing file"
    )
    for command in (setup, dev):
        command.add_argument(
            "--use-proxy-authorize", action="store_true", help="Authorization URL: PUBLIC_URL/proxy/authorize"
        )
        command.add_argument(
            "--app", action="append", metavar="CLIENT_ID", help="enable the connection for this Auth0 application"
        )
    for command in (setup, doctor, revoke, dev):
        command.add_argument("--domain", help="Auth0 domain (default: AUTH0_DOMAIN)")
        command.add_argument("--connection", help="connection name (default: AUTH0_CONNECTION_NAME, or tiktok)")
    for command in (setup, doctor):
        command.add_argument("--public-url", help="where Auth0 reaches the proxy (default: PUBLIC_URL)")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error("--port must be between 1 and 65535")
    if args.command == "dev" and args.host:
        parser.error("dev listens on 127.0.0.1 only: the tunnel is the only way in (no --host)")
    if args.command == "oidc-keygen":
        raise SystemExit(oidc_keygen(args.type, args.out))
    if args.command == "dev":
        from .dev import develop  # here: the tunnel and the Auth0 tooling load only for this command

        develop(args, serve)
    if args.command:
        raise SystemExit(run_command(args))
    serve(args.host, args.port)


def oidc_keygen(key_type: str, out: str | None) -> int:
    """A new signing key, to FILE or to stdout; the exit status."""
    from .oidc.jose import generate_pem  # here: it loads cryptography, which serving never needs

    pem = generate_pem(key_type)
    if out is None:
        print(pem, end="")
        return 0
    try:
        # Created with mode 0600, never chmod'ed after: at no moment can another user read the key. O_EXCL: an
        # existing file (a key in use, or a link planted in its place) is never written through.
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(
            f"tiktok-token-proxy: {out} exists; oidc-keygen never overwrites a key (choose another --out)",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"tiktok-token-proxy: cannot create {out}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(descriptor, "w") as file:
        file.write(pem)
    return 0


def serve(host: str | None, port: int | None) -> None:
    if host:
        # --host overrides HOST. Through the environment, so that the gate check (config.py) and every worker,
        # which reads its settings afresh, see the address really listened on.
        os.environ["HOST"] = host
    settings = settings_or_exit()
    serving.raise_open_file_limit()
    if settings.metrics_token and settings.workers > 1:
        # Now, before uvicorn starts the workers: each reads the variable when it first imports prometheus_client.
        metrics.share_between_workers()
    config = uvicorn.Config(
        "proxy:app",
        host=settings.host,
        port=port or settings.port,
        workers=settings.workers,
        log_config=logging_config(settings.log_level, settings.log_format),
        timeout_keep_alive=settings.keep_alive_timeout,  # serving.py applies it too, under any start
        access_log=False,  # access lines would carry query strings; the proxy logs one line per exchange
        # On SIGTERM: stop accepting, let the requests under way finish.
        timeout_graceful_shutdown=serving.drain_seconds(settings),
        # REQUEST_TIMEOUT, MAX_CONNECTIONS and the head cap, in each worker (docs/operations/serving-limits.md).
        http="tiktok_proxy.serving:LimitedHttpToolsProtocol",
        # A flood takes this many open files at once, before any refusal: serving.OpenFiles keeps it in budget.
        backlog=serving.open_files(settings).backlog,
        server_header=False,
        proxy_headers=False,
    )
    shutdown.serve(config)  # exits 0 once every request under way has its answer (docs/operations/deploy.md#stopping)


def run_command(args: argparse.Namespace) -> int:
    """Run `setup-auth0`, `doctor` or `revoke-user`; the exit status."""
    # The Auth0 tooling loads only here: serving never needs it.
    from .auth0.doctor import doctor
    from .auth0.management import AdminError, AdminSettings, load_admin_settings
    from .auth0.revoke_user import revoke_user
    from .auth0.setup import setup_auth0

    settings: AdminSettings | None = None
    try:
        settings = load_admin_settings(vars(args))
        if args.command == "setup-auth0":
            setup_auth0(settings, dry_run=args.dry_run, use_proxy_authorize=args.use_proxy_authorize, out=print)
        elif args.command == "doctor":
            return 0 if doctor(settings, print) else 1
        elif args.command == "revoke-user":
            revoke_user(settings, args.user_id, delete_user=args.delete_user, force=args.force, out=print)
    except (AdminError, ConfigError) as err:
        print(f"tiktok-token-proxy: {redact(str(err), settings.secrets() if settings else [])}", file=sys.stderr)
        return 1
    return 0

"""TikTok token proxy for Auth0, and an OpenID Connect facade in front of TikTok: the entry point.

    python proxy.py                  serve (HOST, PORT, WEB_CONCURRENCY from the environment or .env): the token
                                     proxy for Auth0's custom social connections, and, when OIDC_SIGNING_KEY_FILE
                                     is set, the OpenID Connect facade for every other platform (docs/oidc.md)
    python proxy.py <command>        setup-auth0, doctor, revoke-user, oidc-keygen (see --help)
    uvicorn proxy:app                the same app under uvicorn's own command line
    python proxy.py dev              serve through an ngrok tunnel, with setup-auth0 and doctor against it

The code lives in the `tiktok_proxy` package; docs/architecture.md maps it.
"""

from __future__ import annotations

from typing import Any

from tiktok_proxy.cli import main


def __getattr__(name: str) -> Any:
    """`proxy:app` for uvicorn, built on first use: importing this module reads no configuration."""
    if name == "app":
        from tiktok_proxy.app import create_app

        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()

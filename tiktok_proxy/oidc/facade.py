"""The facade's routes, each step bound to the one Provider built from the settings."""

from __future__ import annotations

from functools import partial

from starlette.routing import Route

from .authorize import authorize, callback
from .provider import CALLBACK_PATH, Provider
from .token import token, userinfo


def routes(provider: Provider) -> list[Route]:
    return [
        Route("/.well-known/openid-configuration", provider.configuration, methods=["GET"]),
        Route("/oidc/jwks", provider.keys, methods=["GET"]),
        Route("/oidc/authorize", partial(authorize, provider), methods=["GET"]),
        Route(CALLBACK_PATH, partial(callback, provider), methods=["GET"]),
        Route("/oidc/token", partial(token, provider), methods=["POST"]),
        Route("/oidc/userinfo", partial(userinfo, provider), methods=["GET", "POST"]),
    ]

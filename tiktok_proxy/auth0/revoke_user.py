"""`revoke-user`: revoke a user's TikTok grant, through the same code the proxy's routes use, then maybe delete."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .. import tiktok
from ..config import Settings, load_settings
from ..errors import OAuthError
from .management import AdminError, AdminSettings, management, require


def revoke_user(
    settings: AdminSettings, user_id: str, *, delete_user: bool, force: bool, out: Callable[[str], None]
) -> None:
    require(settings, "auth0_base", "tiktok_client_key", "tiktok_client_secret")
    proxy_settings = load_settings()
    api, http = management(settings)
    with http:
        path = f"/api/v2/users/{quote(user_id, safe='')}"
        user = api.call("GET", path)
        identity = next(
            (i for i in (user or {}).get("identities", []) if i.get("connection") == settings.connection_name), None
        )
        if identity is None:
            raise AdminError(f"user {user_id} has no identity from the {settings.connection_name} connection")
        out(f"user {user_id}: TikTok identity {identity.get('user_id', '?')}")
        access_token, refresh_token = identity.get("access_token"), identity.get("refresh_token")
        if not access_token and not refresh_token:
            raise AdminError(
                "Auth0 returned no TikTok token for this user: grant the Management API app read:user_idp_tokens"
            )
        failure = asyncio.run(revoke_at_tiktok(settings, proxy_settings, access_token, refresh_token, out))
        if failure is None:
            out("revoked: the app no longer appears in the user's TikTok app permissions")
        elif not (delete_user and force):
            raise AdminError(
                f"the revoke failed: {failure}"
                + (" (the Auth0 user was not deleted; --force deletes anyway)" if delete_user else "")
            )
        else:
            out(f"the revoke failed: {failure}; deleting anyway (--force)")
        if delete_user:
            api.call("DELETE", path)
            out(f"deleted Auth0 user {user_id}")


async def revoke_at_tiktok(
    settings: AdminSettings,
    proxy_settings: Settings,
    access_token: str | None,
    refresh_token: str | None,
    out: Callable[[str], None],
) -> str | None:
    """Revoke through the same code the proxy's routes use. None on success, else what went wrong."""
    client = tiktok.upstream_client(proxy_settings)
    key, secret = settings.tiktok_client_key, settings.tiktok_client_secret

    async def call(to: tiktok.Relay, params: dict[str, str]) -> dict[str, Any]:
        form = to.build_form(params, key, secret)
        reply = await tiktok.post_form(client, to.url(proxy_settings), form, proxy_settings.timeout)
        return to.answer(reply, form)

    try:
        if access_token:
            try:
                await call(tiktok.REVOKE, {"token": access_token})
                return None
            except OAuthError as err:
                if not (refresh_token and 400 <= err.status < 500 and err.status != 429):
                    return describe(err)
                out(f"TikTok refused the stored access token ({err.error}); refreshing it first")
        if not refresh_token:
            return "no access token and no refresh token to revoke with"
        try:
            fresh = await call(tiktok.TOKEN, {"grant_type": "refresh_token", "refresh_token": refresh_token})
            await call(tiktok.REVOKE, {"token": fresh["access_token"]})
        except OAuthError as err:
            return describe(err)
        out("refreshed the access token and revoked the fresh one")
        return None
    finally:
        await client.aclose()


def describe(err: OAuthError) -> str:
    return f"{err.status} {err.error}: {err.description}" + (f" (log_id {err.log_id})" if err.log_id else "")

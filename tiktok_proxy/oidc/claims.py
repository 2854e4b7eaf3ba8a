"""Scopes and claims: OpenID Connect's names for what TikTok grants and gives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# OpenID scopes → TikTok's. Any other scope is taken as a TikTok scope name and passes through (video.list).
# TikTok has no email or phone, and its refresh token comes with every grant, so offline_access maps to nothing.
SCOPES: dict[str, str | None] = {
    "openid": "user.info.basic",
    "profile": "user.info.profile",
    "email": None,
    "phone": None,
    "address": None,
    "offline_access": None,
}
# Standard claims from TikTok's user fields (tiktok.USER_FIELDS asks for them).
PROFILE_CLAIMS = {
    "name": "display_name",
    "picture": "avatar_url",
    "preferred_username": "username",
    "profile": "profile_deep_link",
}


def mapped_to_tiktok(scopes: list[str]) -> list[str]:
    """TikTok's scope names for the requested scopes, each once, in order."""
    mapped = [SCOPES[scope] if scope in SCOPES else scope for scope in scopes]
    return list(dict.fromkeys(scope for scope in mapped if scope))


def openid_scopes(granted: list[str]) -> list[str]:
    """TikTok's granted scopes in the relying party's words: openid and profile for the user.info ones."""
    back = {tiktok_scope: scope for scope, tiktok_scope in SCOPES.items() if tiktok_scope}
    return list(dict.fromkeys(back.get(scope, scope) for scope in granted))


def profile_claims(user: Mapping[str, Any]) -> dict[str, str]:
    return {
        claim: user[field]
        for claim, field in PROFILE_CLAIMS.items()
        if isinstance(user.get(field), str) and user[field]
    }

"""Scopes and claims: OpenID Connect's names for what TikTok grants and gives."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# OpenID scopes → TikTok's. TikTok has no email or phone, and its refresh token comes with every grant, so
# offline_access maps to nothing. (With OIDC_EMAIL_DOMAIN, the facade itself grants email: facade_scopes.)
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


# TikTok's own scope names are dotted (user.info.stats, video.list): those pass through to TikTok.
TIKTOK_SCOPE_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
# A subject that can be the local part of an address as it is (RFC 5322 dot-atom, at most 64 characters).
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL_LOCAL_PART = re.compile(rf"(?=.{{1,64}}$){ATEXT}(\.{ATEXT})*")


def tiktok_scope(scope: str) -> str | None:
    """TikTok's name for one requested scope: OpenID's mapped, TikTok's own as it is, and None for any other
    (groups, roles): OIDC Core §3.1.2.1 says to ignore unknown scopes, and TikTok would refuse the whole request."""
    if scope in SCOPES:
        return SCOPES[scope]
    return scope if TIKTOK_SCOPE_NAME.fullmatch(scope) else None


def mapped_to_tiktok(scopes: list[str]) -> list[str]:
    """TikTok's scope names for the requested scopes, each once, in order."""
    return list(dict.fromkeys(filter(None, map(tiktok_scope, scopes))))


def facade_scopes(scopes: list[str], email_domain: str) -> list[str]:
    """The requested scopes the facade grants itself, TikTok having nothing for them: email, with a domain."""
    return ["email"] if email_domain and "email" in scopes else []


def openid_scopes(granted: list[str]) -> list[str]:
    """TikTok's granted scopes in the relying party's words: openid and profile for the user.info ones."""
    back = {tiktok_scope: scope for scope, tiktok_scope in SCOPES.items() if tiktok_scope}
    return list(dict.fromkeys(back.get(scope, scope) for scope in granted))


def email_claims(subject: str, email_domain: str) -> dict[str, Any]:
    """<sub>@<OIDC_EMAIL_DOMAIN>, never verified: nothing ever checked that this user receives mail there.
    Nothing for a subject that cannot be an address's local part (TikTok's ids can: this is only a guard)."""
    if not email_domain or not EMAIL_LOCAL_PART.fullmatch(subject):
        return {}
    return {"email": f"{subject}@{email_domain}", "email_verified": False}


def profile_claims(user: Mapping[str, Any]) -> dict[str, str]:
    return {
        claim: user[field]
        for claim, field in PROFILE_CLAIMS.items()
        if isinstance(user.get(field), str) and user[field]
    }

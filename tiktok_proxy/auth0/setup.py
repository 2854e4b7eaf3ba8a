"""`setup-auth0`: create or update the custom social connection, merging into what is there."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import DEFAULT_AUTHORIZE_URL
from ..inbound import GATE_HEADER
from .management import AdminError, AdminSettings, management, require

PROFILE_SCRIPT = Path(__file__).resolve().parent / "fetch-user-profile.js"


def desired_options(settings: AdminSettings, use_proxy_authorize: bool) -> dict[str, Any]:
    authorize = f"{settings.public_url}/proxy/authorize" if use_proxy_authorize else DEFAULT_AUTHORIZE_URL
    return {
        "authorizationURL": authorize,
        "tokenURL": f"{settings.public_url}/proxy/token",
        "scope": settings.scopes,  # comma-separated: TikTok's separator (quirk Q2)
        "client_id": settings.tiktok_client_key,
        "client_secret": settings.tiktok_client_secret,
        # Auth0 adds this to the authorize request; harmless when /proxy/authorize renames client_id anyway.
        "upstream_params": {"client_key": {"value": settings.tiktok_client_key}},
        "scripts": {"fetchUserProfile": PROFILE_SCRIPT.read_text()},
        # Auth0 sends these with every token request: the proxy's gate lets only this tenant through.
        **({"customHeaders": {GATE_HEADER: settings.proxy_secret}} if settings.proxy_secret else {}),
    }


def merge_options(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A PATCH replaces `options` wholesale, so keep every option and sub-option we do not set."""
    merged = dict(existing)
    for key, value in desired.items():
        if isinstance(value, dict) and isinstance(existing.get(key), dict):
            merged[key] = {**existing[key], **value}
        else:
            merged[key] = value
    return merged


# The only values the change summary prints; every other value is reported as set, changed or removed, never
# shown: client_secret, customHeaders (the gate's and any other), and whatever else a tenant keeps in options.
SHOWN_VALUES = frozenset({"authorizationURL", "tokenURL", "scope", "client_id", "upstream_params.client_key.value"})
PROFILE_SCRIPT_OPTION = "scripts.fetchUserProfile"


def describe_changes(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One line per option that differs, by its dotted name. Secrets are never printed (SHOWN_VALUES)."""
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        name = f"{prefix}{key}"
        if isinstance(old, dict) or isinstance(new, dict):
            # A side that is missing (a new connection, new customHeaders) is an empty object, never a dump.
            lines += describe_changes(
                old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}, f"{name}."
            )
        elif name in SHOWN_VALUES:
            lines.append(f"  {name}: {json.dumps(old) if old is not None else '(unset)'} -> {json.dumps(new)}")
        elif name == PROFILE_SCRIPT_OPTION and new == PROFILE_SCRIPT.read_text():
            lines.append(f"  {name}: the shipped script, {len(new.splitlines())} lines, {state(old, new, 'installed')}")
        else:
            lines.append(f"  {name}: {state(old, new)} (hidden)")
    return lines


def state(old: Any, new: Any, added: str = "set") -> str:
    return added if old is None else "removed" if new is None else "changed"


def setup_auth0(
    settings: AdminSettings, *, dry_run: bool, use_proxy_authorize: bool, out: Callable[[str], None]
) -> None:
    require(settings, "auth0_base", "tiktok_client_key", "tiktok_client_secret", "public_url")
    if not settings.public_url.startswith("https://"):
        raise AdminError(
            f"PUBLIC_URL must be https (Auth0 calls the Token URL over the internet), got {settings.public_url!r}"
        )
    api, http = management(settings)
    with http:
        desired = desired_options(settings, use_proxy_authorize)
        existing = api.connection_named(settings.connection_name)
        verb = "would be" if dry_run else "was"
        # Each change is reported once it is written (or, in a dry run, as what would be written).
        if existing is None:
            if not dry_run:
                body = {
                    "name": settings.connection_name,
                    "display_name": "TikTok",
                    "strategy": "oauth2",
                    "options": desired,
                }
                existing = api.call("POST", "/api/v2/connections", body=body)
            out(f"connection {settings.connection_name}: {verb} created (strategy oauth2)")
            out("\n".join(describe_changes({}, desired)))
        else:
            if existing.get("strategy") != "oauth2":
                raise AdminError(
                    f"connection {settings.connection_name} exists with strategy {existing.get('strategy')!r}, not oauth2"
                )
            options = existing.get("options") or {}
            merged = merge_options(options, desired)
            if merged == options:
                out(f"connection {settings.connection_name} ({existing['id']}): already up to date")
            else:
                if not dry_run:
                    api.call("PATCH", f"/api/v2/connections/{existing['id']}", body={"options": merged})
                out(f"connection {settings.connection_name} ({existing['id']}): {verb} updated")
                out("\n".join(describe_changes(options, merged)))
        if settings.app_client_ids and existing is None:  # a dry run of a connection not created yet
            out(f"enable for applications {', '.join(settings.app_client_ids)}: would be done")
        elif settings.app_client_ids:
            assert existing is not None
            enabled = set(api.enabled_clients(existing["id"]))
            missing = [client for client in settings.app_client_ids if client not in enabled]
            if missing:
                if not dry_run:
                    changes = [{"client_id": client, "status": True} for client in missing]
                    api.call("PATCH", f"/api/v2/connections/{existing['id']}/clients", body=changes)
                out(f"enable for applications {', '.join(missing)}: {'would be done' if dry_run else 'done'}")
            else:
                out(f"already enabled for applications {', '.join(settings.app_client_ids)}")
        if dry_run:
            out("dry run: nothing was written")

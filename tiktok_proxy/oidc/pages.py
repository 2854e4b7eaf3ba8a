"""What the browser gets from the facade: a redirect (to TikTok, or back to the relying party) or a refusal page;
and the one log line and count of each step."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import metrics
from ..errors import NO_STORE, OAuthError
from ..logs import log_outcome


def finish(event: str, status: int, outcome: str, client_key: str | None, **more: Any) -> None:
    """One log line and one count per step, naming the outcome only: never a code, a token or the query."""
    log_outcome(status, event=event, outcome=outcome, client_key=client_key, **more)
    metrics.exchange(event, None, outcome, status)


def redirect(location: str) -> Response:
    return RedirectResponse(location, status_code=302, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


def back_to_client(
    redirect_uri: str, answer: dict[str, str], state: str | None, event: str, client_id: str | None
) -> Response:
    """The browser back to the relying party's (trusted) redirect_uri, with its own state."""
    query = {**answer, **({"state": state} if state is not None else {})}
    finish(event, 302, answer.get("error", "ok" if event == "oidc_callback" else "redirect"), client_id)
    return redirect(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(query)}")


def refused_page(err: OAuthError, event: str, client_id: str | None) -> Response:
    """A request that cannot be sent back to a trusted redirect_uri: a page for the person, never a redirect."""
    finish(event, 400, err.error, client_id)
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><title>Sign-in failed</title><style>{PAGE_STYLE}</style><main>"
        f'<h1>Sign-in failed</h1><p id="error">{escape(err.description)}</p>'
        "<p>Go back to the application and sign in again. If this keeps happening, tell its administrator.</p></main>",
        status_code=400,
        headers={**NO_STORE, **PAGE_HEADERS},
    )


# The page shows no script and loads nothing but its inline style, and no other site may frame it (clickjacking):
# CSP's frame-ancestors, and X-Frame-Options for browsers without it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#f4f4f6;color:#161823;margin:0;display:grid;"
    "place-items:center;min-height:100vh}main{background:#fff;padding:2rem 2.5rem;border-radius:12px;"
    "max-width:36rem}#error{background:#fff0f1;border-left:4px solid #fe2c55;padding:.8rem 1rem}"
)

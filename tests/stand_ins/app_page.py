"""The look of the small relying-party applications in the browser journeys (Auth0's and the OIDC facade's)."""

from __future__ import annotations

from starlette.responses import HTMLResponse, Response

STYLE = """
body { font-family: system-ui, sans-serif; background: #f4f4f6; margin: 0; display: grid; place-items: center;
       min-height: 100vh; color: #161823; }
main { background: #fff; padding: 2.5rem 3rem; border-radius: 14px; box-shadow: 0 4px 24px #0001;
       min-width: 22rem; max-width: 44rem; }
h1 { margin-top: 0; font-size: 1.5rem; }
a.tiktok { display: inline-block; background: #161823; color: #fff; padding: .8rem 1.4rem; border-radius: 8px;
           text-decoration: none; font-weight: 600; }
a.tiktok::before { content: "\\266A  "; color: #25f4ee; }
.error { background: #fff0f1; border-left: 4px solid #fe2c55; padding: .8rem 1rem; border-radius: 4px; }
code { font-weight: 600; }
.muted { color: #6b6d76; font-size: .9rem; white-space: nowrap; }
"""


def page(title: str, body: str) -> Response:
    return HTMLResponse(f"<!doctype html><title>{title}</title><style>{STYLE}</style><main>{body}</main>")

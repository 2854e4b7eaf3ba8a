"""An ASGI app whose GET /slow answers after a minute: a request that outlasts any grace period, so that a test
can cut a drain short. Every other path answers at once. Served as `slow_app:app` (with this folder on the path),
so that uvicorn's workers can import it too."""

from __future__ import annotations

import asyncio
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"  # served with lifespan="off"
    if scope["path"] == "/slow":
        await asyncio.sleep(60)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})

"""The proxy with another upstream client swapped in, so bench/run.py can measure the designs side by side.

    python bench/variants.py VARIANT PORT     (VARIANT: httpx, httpx2 or aiohttp)

Everything but the upstream call is the real proxy.py. These clients need bench/requirements.txt.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tiktok_proxy import app, tiktok  # noqa: E402
from tiktok_proxy.logs import logging_config  # noqa: E402

clients: dict[str, Any] = {}


async def via_httpx(module_name: str, url: str, body: bytes) -> tuple[int, bytes, Mapping[str, str]]:
    httpx_module = __import__(module_name)
    if module_name not in clients:
        limits = httpx_module.Limits(max_connections=256, max_keepalive_connections=256)
        transport = httpx_module.AsyncHTTPTransport(retries=1, limits=limits)
        clients[module_name] = httpx_module.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)
    response = await clients[module_name].post(url, content=body, headers=tiktok.UPSTREAM_HEADERS)
    return response.status_code, response.content, response.headers


async def via_aiohttp(url: str, body: bytes) -> tuple[int, bytes, Mapping[str, str]]:
    import aiohttp

    if "aiohttp" not in clients:
        clients["aiohttp"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), auto_decompress=False)
    async with clients["aiohttp"].post(
        url, data=body, headers=tiktok.UPSTREAM_HEADERS, allow_redirects=False
    ) as response:
        return response.status, await response.read(), response.headers


def install(variant: str) -> None:
    async def post_form(client: object, url: str, form: Mapping[str, str], timeout: float) -> tiktok.UpstreamReply:
        body = urlencode(form).encode()
        async with asyncio.timeout(timeout):
            if variant == "aiohttp":
                status, content, headers = await via_aiohttp(url, body)
            else:
                status, content, headers = await via_httpx(variant, url, body)
        return tiktok.UpstreamReply(url, status, content, headers.get("x-tt-logid"), headers.get("retry-after"))

    tiktok.post_form = post_form  # the relay looks it up at call time


if __name__ == "__main__":
    variant, port = sys.argv[1], int(sys.argv[2])
    install(variant)
    # The same logging as `python proxy.py`, so every variant pays for its log line per exchange.
    uvicorn.run(app.create_app(), host="127.0.0.1", port=port, log_config=logging_config("INFO"), access_log=False)

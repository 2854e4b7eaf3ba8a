"""The container image: scripts/container-test builds it and runs it against a TikTok stand-in started here, then
plays the Kubernetes Deployment (deploy/kubernetes/base) on it with `podman kube play`.

The first run on a machine also builds a Debian base image (about a minute); later runs reuse podman's layer cache.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from starlette.requests import Request
from starlette.responses import Response

from conftest import ServerThread
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, TikTokStandIn

pytestmark = pytest.mark.alone  # builds an image: CPU-heavy

REPO = Path(__file__).resolve().parent.parent
SLOW_CLIENT_KEY = "aw1slowclientkey"
SLOW_SECONDS = 3.0  # long enough to still be in flight when the container gets SIGTERM, a second after it starts


class SlowForOneKey(TikTokStandIn):
    """The TikTok stand-in, answering SLOW_CLIENT_KEY's token requests only after SLOW_SECONDS."""

    async def token(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode())  # Starlette keeps the body for token() to read again
        if form.get("client_key") == [SLOW_CLIENT_KEY]:
            await asyncio.sleep(SLOW_SECONDS)
        return await super().token(request)


def test_the_container_image_serves_and_stops_cleanly() -> None:
    stand_in = SlowForOneKey(clients={CLIENT_KEY: CLIENT_SECRET, SLOW_CLIENT_KEY: CLIENT_SECRET})
    with ServerThread(stand_in.app()) as tiktok:
        result = subprocess.run(
            [str(REPO / "scripts" / "container-test")],
            env={
                **os.environ,
                "TIKTOK_STAND_IN_URL": tiktok.url,
                "TIKTOK_STAND_IN_CLIENT_KEY": CLIENT_KEY,
                "TIKTOK_STAND_IN_CLIENT_SECRET": CLIENT_SECRET,
                "TIKTOK_STAND_IN_SLOW_CLIENT_KEY": SLOW_CLIENT_KEY,
                "PYTHON": sys.executable,
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
    report = [line for line in result.stdout.splitlines() if line.startswith("container-test:")]
    print("\n".join(report))  # shown with -s, or when the test fails
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert report[-1] == "container-test: passed"
    # Every exchange went through to the stand-in: the container's two, the slow one included, then the pod's two,
    # the second during its preStop.
    assert [seen.form["client_key"] for seen in stand_in.seen] == [[CLIENT_KEY], [SLOW_CLIENT_KEY]] + [[CLIENT_KEY]] * 2

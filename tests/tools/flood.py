"""A flood of token exchanges against a proxy on loopback, in a process of its own (so that the load does not
starve the stand-ins living in the test process). Bounded in time; prints one JSON object.

    python tests/tools/flood.py PORT SECONDS FLOODERS

FLOODERS connections at a time, each reconnecting as soon as it has its outcome, beside two clients making
one exchange after the other. An outcome is the answer's status, "closed" (closed with no answer), the name of
the error, or "held back": no outcome within CONNECT_SECONDS of connecting, or no connection at all. That is
the kernel's doing when the listening socket's accept queue is full: it drops the handshake's last step, so the
client believes it is connected while the server has not accepted it yet, and TCP retries later.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

FORM = b"grant_type=client_credentials&client_id=aw1testclientkey&client_secret=s3cr3t-Client-Secret-value"
REQUEST = (
    b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(FORM), FORM)
)


CONNECT_SECONDS = 5


async def one_exchange(port: int) -> tuple[str, float]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_SECONDS)
    except TimeoutError:
        return "held back", 0
    except ConnectionError as exc:
        return type(exc).__name__, 0
    started = time.monotonic()
    try:
        writer.write(REQUEST)
        answer = await asyncio.wait_for(reader.read(), CONNECT_SECONDS)
        writer.close()
    except TimeoutError:
        return "held back", time.monotonic() - started
    except ConnectionError as exc:
        return type(exc).__name__, time.monotonic() - started
    if answer.startswith(b"HTTP/1.1 200 ") and b'"access_token":"clt.' not in answer:
        return "200 without a token", time.monotonic() - started
    return (answer.split(b" ", 2)[1].decode() if answer else "closed"), time.monotonic() - started


async def flood(port: int, seconds: float, flooders: int) -> dict[str, object]:
    until = time.monotonic() + seconds
    flooded: list[tuple[str, float]] = []
    clients: list[tuple[str, float]] = []

    async def keep_going(results: list[tuple[str, float]], pause: float) -> None:
        while time.monotonic() < until:
            results.append(await one_exchange(port))
            await asyncio.sleep(pause)

    await asyncio.gather(*(keep_going(flooded, 0) for _ in range(flooders)),
                         *(keep_going(clients, 0.01) for _ in range(2)))  # fmt: skip
    return {
        "flooded": Counter(what for what, _ in flooded),
        "clients": Counter(what for what, _ in clients),
        "slowest": max(seconds for what, seconds in flooded + clients if what != "held back"),
    }


if __name__ == "__main__":
    port, seconds, flooders = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(flood(port, seconds, flooders))))

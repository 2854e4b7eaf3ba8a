"""Slow clients and bloated heads against the proxy's serving limits, while legitimate exchanges go on.

    .venv/bin/python bench/attack.py            # about 25 seconds
    .venv/bin/python bench/attack.py --quick    # about 11 seconds, smaller numbers (tests/test_serving.py runs it)

It starts the TikTok stand-in (tests/stand_ins/tiktok.py) and the proxy (`python proxy.py`, one worker) with
MAX_CONNECTIONS and REQUEST_TIMEOUT set, then attacks it well beyond MAX_CONNECTIONS: first with bloated heads
(a header line that never ends), then with slow drips as well (one header line a second; each attacker
reconnects when cut or refused). Meanwhile a few clients make client_credentials exchanges, each on a new
connection, one after the other. Then the attackers go quiet without closing their sockets, and the clients
keep going until full service is back (ten exchanges served in a row).

It prints what the legitimate clients got (served, 503, failed), what the attackers got, the proxy's log
lines and peak RSS, how long after the attack full service came back, and when the proxy had cut the last
attacker that went quiet. It exits 1 if any legitimate exchange failed (anything but a 200 or a 503) or if
either took longer than REQUEST_TIMEOUT + 3 s. Everything runs on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAND_IN = (
    "import sys, uvicorn; sys.path.insert(0, 'tests'); from stand_ins.tiktok import TikTokStandIn; "
    "uvicorn.run(TikTokStandIn().app(), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')"
)
FORM = b"grant_type=client_credentials&client_key=aw1testclientkey&client_secret=s3cr3t-Client-Secret-value"
EXCHANGE = (
    b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(FORM), FORM)
)


@dataclass
class Plan:
    max_connections: int
    request_timeout: int
    drippers: int  # slow-drip connections kept open at once (they reconnect when cut or refused)
    bloaters: int  # bloated-head connections at once
    clients: int  # legitimate clients, each one exchange at a time
    bloat_seconds: float  # bloated heads alone first
    drip_seconds: float  # then slow drips as well


FULL = Plan(max_connections=200, request_timeout=5, drippers=500, bloaters=40, clients=4, bloat_seconds=6,
            drip_seconds=12)  # fmt: skip
QUICK = Plan(max_connections=20, request_timeout=2, drippers=60, bloaters=8, clients=2, bloat_seconds=1.5,
             drip_seconds=3)  # fmt: skip


class Attack:
    stop: asyncio.Future[None]  # done when the attack stops

    def __init__(self, port: int, plan: Plan) -> None:
        self.port, self.plan = port, plan
        self.running = True  # attackers send; then they go quiet, their sockets left open
        self.quiet: list[tuple[asyncio.Task[str], asyncio.StreamWriter]] = []
        self.seen: Counter[str] = Counter()  # what the attackers got
        self.phase = "bloated heads"
        self.got: dict[str, Counter[str]] = {"bloated heads": Counter(), "slow drips": Counter()}  # legit clients

    async def answer(self, reader: asyncio.StreamReader) -> str:
        """The status of what the server sent before closing, or how the connection ended."""
        try:
            data = await reader.read(65536)
        except ConnectionError:
            return "reset"
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"

    async def drip(self) -> None:
        await asyncio.sleep(random.uniform(0, self.plan.request_timeout))  # staggered: cut at different times
        while self.running:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.seen["drip connections"] += 1
            writer.write(b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\n")
            answered, line = asyncio.create_task(self.answer(reader)), 0
            while not answered.done() and self.running:  # one header line a second, until answered or closed
                await asyncio.wait([answered, self.stop], timeout=1, return_when=asyncio.FIRST_COMPLETED)
                if not answered.done() and self.running:
                    writer.write(b"X-Drip-%d: 1\r\n" % line)
                    line += 1
            if not answered.done():
                self.quiet.append((answered, writer))  # gone quiet, socket left open: the deadline must cut it
                return
            self.seen[f"drip got {answered.result()}"] += 1
            writer.close()
            await asyncio.sleep(random.uniform(0.1, 0.3))

    async def bloat(self) -> None:
        while self.running:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.seen["bloated heads"] += 1
            answered = asyncio.create_task(self.answer(reader))
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nX-Bloat: ")
                for _ in range(32):  # up to 1 MiB of one header line, unless answered first
                    if answered.done():
                        break
                    writer.write(b"a" * 32768)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                self.seen[f"bloat got {await asyncio.wait_for(answered, 5)}"] += 1
            except (ConnectionError, TimeoutError):
                self.seen["bloat got reset"] += 1
            writer.close()
            await asyncio.sleep(0.2)

    async def exchange(self) -> str:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 10)
            writer.write(EXCHANGE)
            status = await asyncio.wait_for(self.answer(reader), 10)
            writer.close()
            return status
        except (OSError, TimeoutError) as err:
            return type(err).__name__

    async def client(self) -> None:
        while self.running:
            status = await self.exchange()
            self.got[self.phase][status] += 1
            if status == "503":
                await asyncio.sleep(0.1)  # a retry, sooner than Retry-After asks

    async def recovery(self) -> float:
        """Seconds from the end of the attack until ten exchanges in a row are served."""
        stopped, in_a_row = time.monotonic(), 0
        while in_a_row < 10:
            if time.monotonic() - stopped > self.plan.request_timeout + 30:
                return float("inf")
            in_a_row = in_a_row + 1 if await self.exchange() == "200" else 0
            if not in_a_row:
                await asyncio.sleep(0.05)
        return time.monotonic() - stopped

    async def last_cut(self, stopped: float) -> float:
        """Seconds from the end of the attack until the proxy has cut every attacker that went quiet."""
        cuts = await asyncio.wait_for(asyncio.gather(*(answered for answered, _ in self.quiet)), 30)
        self.seen.update(f"quiet drip got {status}" for status in cuts)
        return time.monotonic() - stopped

    async def run(self) -> tuple[float, float]:
        plan, self.stop = self.plan, asyncio.get_running_loop().create_future()
        tasks = [asyncio.create_task(self.bloat()) for _ in range(plan.bloaters)]
        tasks += [asyncio.create_task(self.client()) for _ in range(plan.clients)]
        await asyncio.sleep(plan.bloat_seconds)
        self.phase = "slow drips"
        tasks += [asyncio.create_task(self.drip()) for _ in range(plan.drippers)]
        await asyncio.sleep(plan.drip_seconds)
        self.running, stopped = False, time.monotonic()
        self.stop.set_result(None)
        recovered = await self.recovery()
        await asyncio.wait(tasks, timeout=10)
        all_cut = await self.last_cut(stopped)
        for _, writer in self.quiet:
            writer.close()
        # The proxy's last "refused" warning is due at most 5 s after the one before.
        await asyncio.sleep(max(0.0, stopped + 5.5 - time.monotonic()))
        return recovered, all_cut


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"attack: nothing listens on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller numbers, about 11 seconds")
    plan = QUICK if parser.parse_args().quick else FULL
    stand_in_port, proxy_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "TIKTOK_TOKEN_URL": f"http://127.0.0.1:{stand_in_port}/v2/oauth/token/",
        "MAX_CONNECTIONS": str(plan.max_connections),
        "REQUEST_TIMEOUT": str(plan.request_timeout),
        "LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryDirectory() as scratch, open(Path(scratch) / "proxy.log", "w+b") as log:
        stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN, str(stand_in_port)], cwd=REPO)
        proxy = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), "--port", str(proxy_port)], env=env, cwd=scratch, stderr=log
        )
        try:
            wait_until_listening(stand_in_port, stand_in)
            wait_until_listening(proxy_port, proxy)
            before = peak_rss_mib(proxy.pid)
            attack = Attack(proxy_port, plan)
            recovered, all_cut = asyncio.run(attack.run())
            peak = peak_rss_mib(proxy.pid)
        finally:
            proxy.terminate()
            stand_in.terminate()
            proxy.wait(15)
            stand_in.wait(15)
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()

    refused = sum(int(line.split("connections_refused=")[1].split()[0]) for line in lines if "reason=full" in line)
    print(
        f"attack against MAX_CONNECTIONS={plan.max_connections} REQUEST_TIMEOUT={plan.request_timeout}: "
        f"{plan.bloaters} bloated-head connections at once for {plan.bloat_seconds:g} s, then also "
        f"{plan.drippers} slow-drip connections for {plan.drip_seconds:g} s"
    )
    others: Counter[str] = Counter()
    for phase, got in attack.got.items():
        failed = {status: count for status, count in got.items() if status not in ("200", "503")}
        others.update(failed)
        print(f"legitimate exchanges during {phase}: {got['200']} served, {got['503']} refused with 503, "
              f"{sum(failed.values())} failed {failed or ''}")  # fmt: skip
    print("attackers got:", ", ".join(f"{name}: {count}" for name, count in sorted(attack.seen.items())))
    print(
        f"proxy log: {sum('reason=deadline' in line for line in lines)} deadline (408) lines, "
        f"{sum('reason=head' in line for line in lines)} head (431) lines, "
        f"{sum('reason=full' in line for line in lines)} full (503) warning lines counting {refused} refusals, "
        f"{sum('Traceback' in line for line in lines)} tracebacks"
    )
    print(f"proxy peak RSS: {peak:.1f} MiB (before the attack: {before:.1f} MiB)")
    print(
        f"full service back {recovered:.1f} s after the attack stopped (bound: REQUEST_TIMEOUT + 3 s); the last of "
        f"the {len(attack.quiet)} attackers that went quiet was cut {all_cut:.1f} s after"
    )
    return 1 if others or max(recovered, all_cut) > plan.request_timeout + 3 else 0


if __name__ == "__main__":
    raise SystemExit(main())

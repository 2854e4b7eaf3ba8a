"""Memory floods against the proxy's serving protocol: what one worker's memory does under each, measured.

    .venv/bin/python bench/floods.py                       # this build, about 40 seconds
    .venv/bin/python bench/floods.py --compare GIT_REF     # and an older build (a git worktree), side by side

For each build and each flood it starts a fresh proxy (`python proxy.py`, one worker, REQUEST_TIMEOUT=5) in an
empty directory, with none of the proxy's variables from this environment, and reads its resident memory (VmRSS)
before the flood and a second after it has ended:

- trailers: one connection sends a chunked POST /proxy/token, then 8 MiB of trailer fields (`a:b`);
- pipelined: one connection sends 8 MiB of pipelined GET /healthz and never reads an answer, for 15 s at most,
  while another connection asks GET /healthz every 0.1 s (the slowest of its answers is shown);
- resets: 20,000 connections, one after the other, each asking GET /healthz and closing with a reset (RST).

Everything runs on 127.0.0.1. No TikTok is called: the trailers' body is not a valid form.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tiktok_proxy.config import OWN_PREFIXES, VARIABLES  # noqa: E402

EIGHT_MIB = 8 * 1024 * 1024
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"
CHUNKED_POST = (
    b"POST /proxy/token HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_proxy(tree: Path, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    inherited = {name: value for name, value in os.environ.items()
                 if name not in VARIABLES and not name.upper().startswith(OWN_PREFIXES)}  # fmt: skip
    env = {**inherited, "REQUEST_TIMEOUT": "5", "LOG_LEVEL": "WARNING",
           "TIKTOK_TOKEN_URL": f"http://127.0.0.1:{free_port()}/v2/oauth/token/"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(tree / "proxy.py"), "--port", str(port)],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if ask_healthz(port) is not None:
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"floods: the proxy in {tree} did not start")


def ask_healthz(port: int) -> float | None:
    """Seconds GET /healthz took on a new connection, or None if it got no 200."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HEALTHZ)
        ok = sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    return time.monotonic() - started if ok else None


def trailers(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(CHUNKED_POST)
        sent = 0
        try:
            while sent < EIGHT_MIB:
                sock.sendall(b"a:b\r\n" * 13107)  # 64 KiB
                sent += 13107 * 5
            sock.sendall(b"\r\n")
        except OSError:
            pass  # the proxy stopped reading and closed: its answer is already there
        try:
            answer = sock.recv(65536)
        except OSError:
            answer = b""
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"
    return f"answered {status} after {sent / 1024 / 1024:.2f} MiB sent"


def pipelined(port: int) -> str:
    slowest = [0.0]
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            took = ask_healthz(port)
            slowest[0] = max(slowest[0], took if took is not None else float("inf"))
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    payload, sent, started, cut = HEALTHZ * (EIGHT_MIB // len(HEALTHZ)), 0, time.monotonic(), None
    while time.monotonic() - started < 15 and cut is None:
        try:
            if sent < len(payload):
                sent += sock.send(payload[sent : sent + 65536])
            else:
                sock.recv(1, socket.MSG_PEEK)  # never reads: only sees whether the proxy reset the connection
                time.sleep(0.05)
        except BlockingIOError:
            time.sleep(0.05)
        except OSError:
            cut = time.monotonic() - started
    sock.close()
    done.set()
    prober.join()
    ending = f"cut after {cut:.1f} s" if cut is not None else "still open after 15 s"
    return f"{ending}, {sent / 1024 / 1024:.1f} MiB sent; /healthz elsewhere: {slowest[0] * 1000:.0f} ms at worst"


def resets(port: int) -> str:
    started = time.monotonic()
    for _ in range(20_000):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(HEALTHZ)
            sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return f"20,000 in {time.monotonic() - started:.1f} s"


FLOODS: dict[str, Callable[[int], str]] = {"trailers": trailers, "pipelined": pipelined, "resets": resets}


def measure(label: str, tree: Path, folder: Path) -> None:
    for name, flood in FLOODS.items():
        process, port = start_proxy(tree, folder)
        try:
            before = rss_mib(process.pid)
            what = flood(port)
            time.sleep(1)
            after = rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(30)
        print(f"{label:<22}{name:<11}{before:>7.1f}{after:>8.1f}{after - before:>+9.1f}   {what}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", metavar="GIT_REF", help="also measure the proxy as it was at this commit")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, one worker, REQUEST_TIMEOUT=5; RSS in MiB, a second after each flood")
    print(f"{'build':<22}{'flood':<11}{'before':>7}{'after':>8}{'growth':>9}   what happened")
    with tempfile.TemporaryDirectory() as folder:
        measure("this build", REPO, Path(folder))
        if args.compare:
            tree = Path(folder) / "compare"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.compare], cwd=REPO, check=True)
            try:
                measure(f"@ {args.compare}"[:21], tree, Path(folder))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)


if __name__ == "__main__":
    main()

"""Benchmark the proxy against the same upstream called directly, in one run.

    apt-get install -y nginx wrk              # once
    .venv/bin/python bench/run.py             # about 2 minutes
    .venv/bin/python bench/run.py --variants  # also the rejected designs (pip install -r bench/requirements.txt)
    .venv/bin/python bench/run.py --soak 1000000   # memory over a million exchanges
    .venv/bin/python bench/run.py --compare HEAD~3 --rounds 3 --connections 32   # this build against an older one

It starts nginx as a fast TikTok stand-in (a fixed v2 token answer) and as a plain `proxy_pass` hop in front
of it (the cost floor of one HTTP hop on this machine), starts the proxy (`python proxy.py`, one worker)
pointed at the stand-in, and drives each with wrk: a form-encoded POST like Auth0's, at 1, 32 and 128
connections. Everything runs on 127.0.0.1, and stops when the bench does, Ctrl-C included.

Each proxy runs in an empty directory, with none of the proxy's variables from this environment: a `.env`
from the quick start (its TIKTOK_CLIENT_KEY would refuse the bench's key) configures none of them. Only
--with-env sets any. Their output goes to tiktok-proxy-bench.log in the system's temporary directory (/tmp).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tiktok_proxy.config import OWN_PREFIXES, VARIABLES  # noqa: E402

STAND_IN_PORT, NGINX_HOP_PORT, PROXY_PORT = 18080, 18081, 18082
TOKEN_JSON = (
    '{"access_token":"act.bench","expires_in":86400,"open_id":"afd97af1-b87b-48b9-ac98-410aghda5344",'
    '"refresh_expires_in":31536000,"refresh_token":"rft.bench","scope":"user.info.basic","token_type":"Bearer"}'
)
FORM = (
    "grant_type=authorization_code&client_id=aw1benchkey&client_secret=bench-secret&code=bench-code"
    "&redirect_uri=https%3A%2F%2Ftenant.example.auth0.com%2Flogin%2Fcallback"
)
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{stand_in};
    location / {{ default_type application/json; return 200 '{token}'; }}
  }}
  upstream stand_in {{ server 127.0.0.1:{stand_in}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{hop};
    location / {{ proxy_pass http://stand_in; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""
# Sent with every request, so that the gate's cost can be measured: --with-env PROXY_SECRET=<this>, or the own
# key's check with --with-env TIKTOK_CLIENT_KEY=aw1benchkey,TIKTOK_CLIENT_SECRET=bench-secret.
GATE_SECRET = "bench-gate-secret-0123456789"
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["X-Proxy-Secret"] = "{GATE_SECRET}"
wrk.body = "{FORM}"
"""


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Until `url` answers the bench's POST with a 2xx. Any other answer, or the process ending, stops the bench
    with what happened."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, data=FORM.encode(), headers={"X-Proxy-Secret": GATE_SECRET})
        try:
            urllib.request.urlopen(request, timeout=1).read()
            return
        except urllib.error.HTTPError as answer:
            body = answer.read(300).decode(errors="replace")
            raise SystemExit(f"bench: {url} answered {answer.code} to the bench's request: {body}") from None
        except OSError:
            if process.poll() is not None:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]) if log else ""
                command = " ".join(map(str, process.args))  # type: ignore[arg-type]
                raise SystemExit(f"bench: {command} exited ({process.returncode}):\n{tail}") from None
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing answered at {url} within 20 seconds")


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def latency(percentile: str) -> float:
        value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def port_taken(port: int) -> bool:
    """Whether something listens on this loopback port: the bench's nginx and proxy would then fail to bind, and
    the bench would measure whatever answers there instead."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field: str) -> float:
    """A memory figure from /proc: VmRSS (now) or VmHWM (peak)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def peak_rss_mib(pid: int) -> float:
    return memory_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    return memory_mib(pid, "VmRSS")


class Children:
    """Every process the bench starts, each stopped when it is done with it, and all of them when the bench ends,
    however it ends (an error, Ctrl-C, SIGTERM): none may keep a port for the next run."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], **options: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, **options)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.running):  # the proxies first, then nginx
            self.stop(process)


def start_proxy(children: Children, command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A proxy in `cwd`, an empty directory, with none of the proxy's variables but the bench's and `env`."""
    inherited = {name: value for name, value in os.environ.items() if not is_proxy_variable(name)}
    env = {
        **inherited,
        "TIKTOK_TOKEN_URL": f"http://127.0.0.1:{STAND_IN_PORT}/v2/oauth/token/",
        "LOG_LEVEL": "INFO",  # the default: one log line per exchange, written to a file as a platform would
        "WEB_CONCURRENCY": "1",
        **env,
    }
    log_path = Path(tempfile.gettempdir()) / "tiktok-proxy-bench.log"
    with open(log_path, "w") as log:  # the process keeps its own copy of the descriptor
        process = children.start(command, env=env, cwd=cwd, stdout=log, stderr=log)
    wait_until_up(f"http://127.0.0.1:{PROXY_PORT}/proxy/token", process, log_path)
    return process


def is_proxy_variable(name: str) -> bool:
    return name in VARIABLES or name.upper().startswith(OWN_PREFIXES) or name.lower() in ("https_proxy", "no_proxy")


@dataclass
class Target:
    name: str
    url: str
    command: list[str] | None = None  # a proxy to start for this target; None: nginx serves it
    env: dict[str, str] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement (default 10)")
    parser.add_argument("--connections", default="1,32,128", help="comma-separated (default 1,32,128)")
    parser.add_argument("--variants", action="store_true", help="also measure the proxy on httpx, httpx2 and aiohttp")
    parser.add_argument("--compare", action="append", default=[], metavar="GIT_REF",
                        help="also measure the proxy as it was at this commit (a git worktree), side by side")  # fmt: skip
    parser.add_argument("--with-env", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="also measure this build with these variables set, e.g. METRICS_TOKEN=x")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="measure the proxies this many times, interleaved; "
                        "the table shows each round, then the median (default 1)")  # fmt: skip
    parser.add_argument("--python", action="append", default=[], metavar="PATH",
                        help="also measure this build under another Python (a venv's python with requirements.txt)")  # fmt: skip
    parser.add_argument("--other", action="append", default=[], metavar="LABEL=COMMAND",
                        help="also measure another proxy that serves POST /proxy/token on port 18082 and calls the "
                        "stand-in (http://127.0.0.1:18080/v2/oauth/token/), e.g. the Node.js proxy Auth0's guide links")  # fmt: skip
    parser.add_argument("--soak", type=int, metavar="N", help="instead: N exchanges at 32 connections, sampling RSS")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"bench: {tool} is missing; apt-get install -y nginx wrk")

    for port in (STAND_IN_PORT, NGINX_HOP_PORT, PROXY_PORT):
        if port_taken(port):
            raise SystemExit(
                f"bench: port {port} on 127.0.0.1 is in use (another bench, or a server of yours): stop it first"
            )
    children = Children()
    # SIGTERM as Ctrl-C: through the `finally` below, which stops every child.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        empty = work / "proxy"  # where each proxy runs: no .env there
        empty.mkdir()
        (work / "nginx.conf").write_text(
            NGINX_CONF.format(dir=work, stand_in=STAND_IN_PORT, hop=NGINX_HOP_PORT, token=TOKEN_JSON)
        )
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        try:
            nginx = children.start(
                [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]
            )
            wait_until_up(f"http://127.0.0.1:{STAND_IN_PORT}/v2/oauth/token/", nginx)
            proxy_command = [sys.executable, str(REPO / "proxy.py"), "--port", str(PROXY_PORT)]
            if args.soak:
                soak(start_proxy(children, proxy_command, empty, {}).pid, args.soak, script)
                return
            print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
                  f"{cpu_model()}, Python {platform.python_version()}, wrk -t1, {args.seconds}s per row")  # fmt: skip
            print(f"{'target':<34}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu µs':>8}")
            proxy_url = f"http://127.0.0.1:{PROXY_PORT}/proxy/token"
            fixed = [
                Target("stand-in, direct", f"http://127.0.0.1:{STAND_IN_PORT}/v2/oauth/token/"),
                Target("nginx proxy_pass to stand-in", f"http://127.0.0.1:{NGINX_HOP_PORT}/v2/oauth/token/"),
            ]
            proxied = [Target("tiktok proxy (upstream.py)", proxy_url, proxy_command)]
            for ref in args.compare:
                tree = work / f"ref-{len(proxied)}"
                subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=REPO, check=True)
                command = [sys.executable, str(tree / "proxy.py"), *proxy_command[2:]]
                proxied.append(Target(f"proxy @ {ref}"[:33], proxy_url, command))
            for assignments in args.with_env:
                variables = dict(pair.split("=", 1) for pair in assignments.split(","))
                proxied.append(
                    Target(f"proxy, {','.join(variables)} set"[:33], proxy_url, proxy_command, env=variables)
                )
            for python in args.python:
                version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
                proxied.append(Target(f"proxy, Python {version}", proxy_url, [python, *proxy_command[1:]]))
            for other in args.other:
                label, command_line = other.split("=", 1)
                proxied.append(Target(label[:33], proxy_url, shlex.split(command_line)))
            if args.variants:
                for variant in ("httpx", "httpx2", "aiohttp"):
                    command = [sys.executable, str(REPO / "bench" / "variants.py"), variant, str(PROXY_PORT)]
                    proxied.append(Target(f"proxy on {variant}", proxy_url, command))
            connection_counts = [int(c) for c in args.connections.split(",")]
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            for target in fixed + proxied * args.rounds:  # rounds interleave the proxies, so drift hits them alike
                process = start_proxy(children, target.command, empty, target.env) if target.command else None
                for connections in connection_counts:
                    cpu_before = cpu_seconds(process.pid) if process else 0.0
                    result = wrk(target.url, connections, args.seconds, script)
                    if process:  # the proxy's CPU per exchange: steadier than throughput on a shared machine
                        result["cpu_us"] = (cpu_seconds(process.pid) - cpu_before) / result["requests"] * 1e6
                    results.setdefault((target.name, connections), []).append(result)
                    print_row(target.name, connections, result)
                if process:
                    print(f"{'':<34}peak RSS {peak_rss_mib(process.pid):.1f} MiB")
                    children.stop(process)
            if args.rounds > 1:
                print(
                    f"# median of {args.rounds} rounds; req/s across the rounds; this build against each, round by round"
                )
                for target in proxied:
                    for connections in connection_counts:
                        runs = results[target.name, connections]
                        median = sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]
                        ours = results[proxied[0].name, connections]
                        ratios = sorted(mine["rps"] / theirs["rps"] for mine, theirs in zip(ours, runs, strict=True))
                        print_row(target.name, connections, median, end="")
                        print(f"   {min(run['rps'] for run in runs):.0f}-{max(run['rps'] for run in runs):.0f}"
                              f"   x{ratios[len(ratios) // 2]:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")  # fmt: skip
            direct, ours = results.get(("stand-in, direct", 1)), results.get(("tiktok proxy (upstream.py)", 1))
            if direct and ours:
                print(f"added latency at 1 connection (p50): {ours[0]['p50'] - direct[0]['p50']:.2f} ms")
        finally:
            children.stop_all()
            if args.compare:
                subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=False)


def print_row(name: str, connections: int, result: dict[str, float], end: str = "\n") -> None:
    cpu = f"{result['cpu_us']:>8.0f}" if "cpu_us" in result else f"{'':>8}"
    print(f"{name:<34}{connections:>6}{result['rps']:>10.0f}{result['p50']:>9.2f}"
          f"{result['p99']:>9.2f}{result['errors']:>8.0f}{cpu}", end=end, flush=True)  # fmt: skip


def soak(pid: int, exchanges: int, script: Path) -> None:
    """Drive N exchanges in 20 slices, printing RSS after each: flat means no leak."""
    url = f"http://127.0.0.1:{PROXY_PORT}/proxy/token"
    done, started = 0, time.monotonic()
    print(f"{'exchanges':>12}{'req/s':>10}{'RSS MiB':>10}")
    print(f"{0:>12}{'':>10}{rss_mib(pid):>10.1f}")
    rate = wrk(url, 32, 2, script)["rps"]  # calibrate slice length
    while done < exchanges:
        seconds = max(1, round(exchanges / 20 / rate))
        result = wrk(url, 32, seconds, script)
        done += int(result["rps"] * seconds)
        rate = result["rps"]
        if result["errors"]:
            print(f"errors: {result['errors']:.0f}")
        print(f"{done:>12}{result['rps']:>10.0f}{rss_mib(pid):>10.1f}", flush=True)
    print(f"peak RSS {peak_rss_mib(pid):.1f} MiB, {time.monotonic() - started:.0f} s")


def cpu_model() -> str:
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        return match.group(1).strip() if match else "unknown CPU"
    except OSError:
        return "unknown CPU"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("bench: interrupted; everything it started is stopped") from None

"""bench/run.py as docs/performance.md runs it, in a checkout after the quick start, with one-second rows: its
proxies ignore the checkout's `.env`, a refusal is reported as what it is, and nothing it starts outlives it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The bench's own ports (18080 to 18082) and wrk's load: these run one at a time (scripts/test's alone lane).
pytestmark = pytest.mark.alone

REPO = Path(__file__).resolve().parent.parent
PORTS = (18080, 18081, 18082)  # bench/run.py's: the stand-in, the nginx hop, the proxy
QUICK = ["--seconds", "1", "--connections", "1"]
QUICK_START_ENV = "TIKTOK_CLIENT_KEY=aw1yourclientkey\nTIKTOK_CLIENT_SECRET=your-tiktok-client-secret-value1\n"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository's code with the `.env` the quick start leaves (a client key that is not the
    bench's), so that the bench finds it where a user's checkout has it."""
    for path in ("proxy.py", "tiktok_proxy", "bench"):
        copy = shutil.copytree if (REPO / path).is_dir() else shutil.copy
        copy(REPO / path, tmp_path / path)
    (tmp_path / ".env").write_text(QUICK_START_ENV)
    return tmp_path


def bench_env() -> dict[str, str]:
    # A PROXY_SECRET exported in the shell, besides the .env: the bench's proxies must not inherit it either.
    return {"PATH": f"{os.environ['PATH']}:/usr/sbin", "PROXY_SECRET": "a-gate-secret-the-bench-never-sends"}


def processes_running(path: Path) -> list[str]:
    """The command lines of the live processes that name `path` (a proxy started from this checkout)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile, or not a process
        if str(path) in command and state != "Z":
            found.append(command)
    return found


def assert_ports_free() -> None:
    for port in PORTS:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"


def test_the_bench_ignores_dotenv_and_reports_a_refusal_as_it_is(checkout: Path) -> None:
    # The last target's proxy gets a PROXY_SECRET the bench does not send: it answers 401.
    wrong_gate = "PROXY_SECRET=not-the-bench-gate-secret-0123456789"
    result = subprocess.run(
        [sys.executable, str(checkout / "bench" / "run.py"), *QUICK, "--with-env", wrong_gate],
        cwd=checkout, env=bench_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # The default proxy relayed every exchange, although the .env and the environment name another client key
    # and a gate: it read neither.
    row = next(line for line in result.stdout.splitlines() if line.startswith("tiktok proxy (upstream.py)"))
    assert row.split()[-2] == "0", result.stdout  # the errors column, before cpu µs
    assert result.returncode == 1
    assert result.stderr.startswith(
        'bench: http://127.0.0.1:18082/proxy/token answered 401 to the bench\'s request: {"error":"invalid_client"'
    ), result.stderr
    assert processes_running(checkout / "proxy.py") == []  # the refused proxy was stopped too
    assert_ports_free()


def descendants(pid: int) -> dict[int, str]:
    """Every process under `pid`, with its command line."""
    found: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found |= descendants(child)
    return found


def alive(pid: int, command: str) -> bool:
    try:
        same = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() == command
        return same and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_everything_the_bench_started(checkout: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-u", str(checkout / "bench" / "run.py"), "--seconds", "3", "--connections", "1"],
        cwd=checkout, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert bench.stdout is not None
        for line in bench.stdout:  # the nginx hop's row: the proxy starts next, then wrk drives it for 3 s
            if line.startswith("nginx proxy_pass"):
                break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            started = descendants(bench.pid)
            commands = " | ".join(started.values())
            if "proxy.py" in commands and "wrk" in commands and "nginx" in commands:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the bench never had nginx, the proxy and wrk running: {started}")
        bench.send_signal(signal.SIGINT)
        output, _ = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert "bench: interrupted; everything it started is stopped" in output
    assert "Traceback" not in output
    assert [command for pid, command in started.items() if alive(pid, command)] == []
    assert_ports_free()


def test_a_port_already_in_use_stops_the_bench_before_it_starts_anything(checkout: Path) -> None:
    """Something else on one of the bench's ports (an earlier run's nginx, a server of yours) would be measured in
    its place, or fail the bench's own servers with a message only in their log: one line, before anything starts."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the earlier tests' connections may linger
        taken.bind(("127.0.0.1", PORTS[0]))
        taken.listen()
        result = subprocess.run(
            [sys.executable, str(checkout / "bench" / "run.py"), *QUICK],
            cwd=checkout, env=bench_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"bench: port {PORTS[0]} on 127.0.0.1 is in use (another bench, or a server of yours): stop it first"
    )
    assert processes_running(checkout / "proxy.py") == []

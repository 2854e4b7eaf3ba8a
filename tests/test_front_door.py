"""Behind a real front door: Debian's nginx, with an upstream keepalive pool, in front of `python proxy.py`.

A front door keeps idle connections to the proxy and reuses them. If the proxy closes one just as the front
door sends a login on it, the front door cannot resend the POST: the login fails with a 502. So the proxy's
KEEP_ALIVE_TIMEOUT must outlast the front door's idle timeout, and the front door must always be the side that
closes. These tests run logins (token exchanges with codes the TikTok stand-in issued, as Auth0 sends them)
through nginx at irregular intervals, and watch the TCP connections between nginx and the proxy in
/proc/net/tcp: which one carried each login, whether it stayed open while idle, and which side closed it
(the side that closes first is the one left in TIME_WAIT).

Each scenario has its own proxy and nginx, and they run at the same time, so the module takes about as long
as its longest idle gap (65 s).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerThread, debian_command, free_port, wait_until_healthy, wait_until_listening
from stand_ins.tiktok import REVOKE_PATH, TOKEN_PATH, TikTokStandIn
from test_token import code_grant

pytestmark = pytest.mark.waits  # a minute of idle connections: scripts/test runs it beside the other tests

REPO = Path(__file__).resolve().parent.parent
# Across uvicorn's old 5 s keep-alive, irregularly; each gets a little jitter too.
GAPS_ACROSS_5_S = (4.9, 5.0, 5.1, 5.3, 2.0, 4.95, 5.05, 6.5)
JITTER = 0.04
ESTABLISHED, CLOSED_FIRST = "01", {"04", "05", "06"}  # /proc/net/tcp states: FIN_WAIT1, FIN_WAIT2, TIME_WAIT

NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"""
FRONT_DOOR = """\
    log_format front_door '$status upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {dir}/access.log front_door;
    upstream tiktok_proxy {{
        server 127.0.0.1:{proxy_port};
        keepalive 16;
        keepalive_timeout {keepalive_timeout}s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tiktok_proxy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # proxy_next_upstream stays nginx's default: a POST sent once is never sent again.
        }}
    }}"""


def nginx_conf(workdir: Path, http: str) -> str:
    """A whole nginx.conf around the content of its `http` block, with its pid, logs and temp files in workdir."""
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would run as nobody: no way into workdir
    return NGINX_MAIN.format(user=user, dir=workdir, http=http)


def tcp_sockets() -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of every IPv4 TCP socket on this machine, TIME_WAIT included."""
    sockets = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, remote, state, *_ = line.split()
        sockets.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state))
    return sockets


@dataclass
class Proxy:
    """`python proxy.py`, started as users start it, and the connections the front door holds to it."""

    port: int
    process: subprocess.Popen[str]
    output: Path

    def connections(self) -> set[int]:
        """The front door's connections to the proxy, by the front door's port, that are open now."""
        return {remote for local, remote, state in tcp_sockets() if local == self.port and state == ESTABLISHED}

    def closed_first_by_the_proxy(self) -> set[int]:
        return {remote for local, remote, state in tcp_sockets() if local == self.port and state in CLOSED_FIRST}

    def closed_first_by_the_front_door(self) -> set[int]:
        return {local for local, remote, state in tcp_sockets() if remote == self.port and state in CLOSED_FIRST}


@contextmanager
def running_proxy(tiktok_url: str, workdir: Path, **variables: str) -> Iterator[Proxy]:
    port, output = free_port(), workdir / "proxy.log"
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "TIKTOK_TOKEN_URL": tiktok_url + TOKEN_PATH,
        "TIKTOK_REVOKE_URL": tiktok_url + REVOKE_PATH,
        **variables,
    }
    with output.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
            env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        yield Proxy(port, process, output)
    finally:
        process.terminate()
        process.wait(15)


@dataclass
class FrontDoor:
    url: str
    dir: Path

    def log(self, name: str) -> str:
        return (self.dir / name).read_text()


@contextmanager
def foreground_nginx(conf: Path, workdir: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """nginx in the foreground with this config, once it listens on port; stopped gracefully afterwards."""
    # -e: the error log before the config is read (Debian's default, /var/log/nginx, may not be writable).
    process = subprocess.Popen(
        [debian_command("nginx", "nginx"), "-p", f"{workdir}/", "-c", str(conf), "-e", str(workdir / "error.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until_listening(port, process, "nginx")
        yield process
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful shutdown
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@contextmanager
def running_nginx(proxy: Proxy, workdir: Path, keepalive_timeout: int) -> Iterator[FrontDoor]:
    """nginx with an upstream keepalive pool to the proxy, on a free port."""
    port, conf = free_port(), workdir / "nginx.conf"
    http = FRONT_DOOR.format(dir=workdir, port=port, proxy_port=proxy.port, keepalive_timeout=keepalive_timeout)
    conf.write_text(nginx_conf(workdir, http))
    with foreground_nginx(conf, workdir, port):
        yield FrontDoor(f"http://127.0.0.1:{port}", workdir)


@dataclass
class Login:
    idle: float  # seconds since the previous answer arrived
    held: set[int]  # the front door's connections to the proxy just before the login
    used: set[int]  # ... and just after it
    status: int
    body: Any

    def gave_the_token(self, tiktok: TikTokStandIn) -> bool:
        token = self.body.get("access_token") if isinstance(self.body, dict) else None
        return self.status == 200 and token in tiktok.access_tokens and self.body.get("token_type") == "Bearer"


@dataclass(repr=False)
class Journey:
    proxy_port: int
    logins: list[Login] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    access_log: str = ""  # nginx's: one line per request, with its status and the upstream's
    error_log: str = ""  # nginx's
    proxy_output: str = ""

    def __repr__(self) -> str:  # what a failing assertion prints
        lines = [f"idle {login.idle:6.2f} s: {login.status}, held {login.held}, used {login.used}" for login in self]
        logs = [f"nginx access log:\n{self.access_log}", f"nginx error log:\n{self.error_log}", self.proxy_output]
        return "\n".join([*lines, f"notes: {self.notes}", *logs])

    def __iter__(self) -> Iterator[Login]:
        return iter(self.logins)


class Scenario:
    """A proxy and an nginx in front of it, and logins through them at chosen moments."""

    def __init__(self, tiktok: TikTokStandIn, tiktok_url: str, workdir: Path, keepalive_timeout: int, **env: str):
        self.tiktok, self.stack = tiktok, ExitStack()
        self.proxy = self.stack.enter_context(running_proxy(tiktok_url, workdir, **env))
        self.journey = Journey(self.proxy.port)
        self.front_door = self.stack.enter_context(running_nginx(self.proxy, workdir, keepalive_timeout))
        self.answered = time.monotonic()

    def login(self) -> Login:
        held = self.proxy.connections()
        code = self.tiktok.issue_code()
        idle = time.monotonic() - self.answered
        response = httpx.post(self.front_door.url + "/proxy/token", data=code_grant(code), timeout=10)
        self.answered = time.monotonic()
        try:
            body = response.json()
        except ValueError:
            body = response.text
        login = Login(idle, held, self.proxy.connections(), response.status_code, body)
        self.journey.logins.append(login)
        return login

    def idle_until(self, seconds: float) -> None:
        """Wait until the connection has been idle this long since the last answer."""
        time.sleep(max(0.0, self.answered + seconds - time.monotonic()))

    def finish(self) -> Journey:
        self.stack.close()
        self.journey.access_log = self.front_door.log("access.log")
        self.journey.error_log = self.front_door.log("error.log")
        self.journey.proxy_output = self.proxy.output.read_text()
        return self.journey


def across_the_old_boundary(scenario: Scenario) -> None:
    scenario.login()
    for gap in GAPS_ACROSS_5_S:
        scenario.idle_until(gap + random.uniform(-JITTER, JITTER))
        scenario.login()


def one_long_gap(seconds: float, peek_at: float | None = None) -> Callable[[Scenario], None]:
    def run(scenario: Scenario) -> None:
        first = scenario.login()
        if peek_at is not None:
            scenario.idle_until(peek_at)
            scenario.journey.notes["open_at_peek"] = scenario.proxy.connections()
        scenario.idle_until(seconds)
        scenario.journey.notes["closed_by_the_front_door"] = (
            scenario.proxy.closed_first_by_the_front_door() & first.used
        )
        scenario.journey.notes["closed_by_the_proxy"] = scenario.proxy.closed_first_by_the_proxy() & first.used
        scenario.login()

    return run


def proxy_closes_first(scenario: Scenario) -> None:
    first = scenario.login()
    deadline = time.monotonic() + 10
    while scenario.proxy.connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    scenario.journey.notes["closed_after"] = time.monotonic() - scenario.answered
    scenario.journey.notes["closed_by_the_proxy"] = scenario.proxy.closed_first_by_the_proxy() & first.used
    scenario.journey.notes["closed_by_the_front_door"] = scenario.proxy.closed_first_by_the_front_door() & first.used
    scenario.idle_until(4)
    scenario.login()


# name: (nginx's keepalive_timeout, the proxy's environment, the logins)
SCENARIOS: dict[str, tuple[int, dict[str, str], Callable[[Scenario], None]]] = {
    "across 5 s": (60, {}, across_the_old_boundary),
    # The front door's own limit passes first: nginx closes at 60 s, not the proxy (KEEP_ALIVE_TIMEOUT=75).
    "past nginx's 60 s": (60, {}, one_long_gap(62, peek_at=58)),
    # A front door that keeps connections longer than 60 s (as Go's 90 s does) reuses one idle for 65 s.
    "65 s idle": (70, {}, one_long_gap(65)),
    # The control: a proxy whose keep-alive is below the front door's closes the idle connection first.
    "control": (60, {"KEEP_ALIVE_TIMEOUT": "2"}, proxy_closes_first),
}


@pytest.fixture(scope="module")
def journeys(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Journey]]]:
    """Every scenario at once, each on its own proxy and nginx: the module takes as long as the longest."""
    debian_command("nginx", "nginx")  # fail at once, with the reason, when nginx is missing
    tiktok, tiktok_server = stand_in_server
    tiktok.reset()  # the session's stand-in: no fault left over from an earlier test

    def run(name: str) -> Journey:
        keepalive_timeout, env, logins = SCENARIOS[name]
        workdir = tmp_path_factory.mktemp("front-door")
        scenario = Scenario(tiktok, tiktok_server.url, workdir, keepalive_timeout, **env)
        try:
            logins(scenario)
        finally:
            journey = scenario.finish()
        return journey

    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        yield {name: pool.submit(run, name) for name in SCENARIOS}


def assert_every_login_got_its_token(journey: Journey, tiktok: TikTokStandIn) -> None:
    assert journey.logins and all(login.gave_the_token(tiktok) for login in journey), journey
    # nginx saw every answer come from the proxy as a 200, and no upstream failure (what a lost race logs).
    answered = f"200 upstream=127.0.0.1:{journey.proxy_port} upstream_status=200"
    assert journey.access_log.splitlines() == [answered] * len(journey.logins), journey
    assert "upstream" not in journey.error_log, journey
    assert "Traceback" not in journey.proxy_output, journey


def test_logins_across_the_old_5_s_boundary_all_ride_one_kept_alive_connection(
    journeys: dict[str, Future[Journey]], stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> None:
    journey = journeys["across 5 s"].result()
    assert_every_login_got_its_token(journey, stand_in_server[0])
    first, *later = journey.logins
    assert len(first.used) == 1, journey
    for login in later:
        # Still open after the idle gap, and the login went over it: nginx opened no new connection.
        assert login.held == login.used == first.used, journey
    assert any(login.idle > 5.2 for login in later) and any(login.idle < 5 for login in later), journey


def test_past_nginxs_own_60_s_nginx_closes_first_and_the_next_login_gets_its_token(
    journeys: dict[str, Future[Journey]], stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> None:
    journey = journeys["past nginx's 60 s"].result()
    assert_every_login_got_its_token(journey, stand_in_server[0])
    first, second = journey.logins
    assert journey.notes["open_at_peek"] == first.used, journey  # still open after 58 s idle
    assert journey.notes["closed_by_the_front_door"] == first.used, journey  # nginx closed it, at its 60 s
    assert not journey.notes["closed_by_the_proxy"], journey
    assert second.idle > 61 and not second.held and len(second.used) == 1 and second.used != first.used, journey


def test_a_login_after_65_s_idle_reuses_the_connection(
    journeys: dict[str, Future[Journey]], stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> None:
    journey = journeys["65 s idle"].result()
    assert_every_login_got_its_token(journey, stand_in_server[0])
    first, second = journey.logins
    assert second.idle > 64, journey
    assert len(first.used) == 1 and second.held == second.used == first.used, journey
    assert not journey.notes["closed_by_the_front_door"] and not journey.notes["closed_by_the_proxy"], journey


def test_control_a_keep_alive_timeout_below_nginxs_makes_the_proxy_close_first(
    journeys: dict[str, Future[Journey]], stand_in_server: tuple[TikTokStandIn, ServerThread]
) -> None:
    # What the tests above would see if the proxy closed idle connections before nginx does (as uvicorn's 5 s
    # did): the proxy's side closes first, and nginx must open a new connection for the next login.
    journey = journeys["control"].result()
    assert_every_login_got_its_token(journey, stand_in_server[0])
    first, second = journey.logins
    assert 1.5 <= journey.notes["closed_after"] <= 6, journey  # KEEP_ALIVE_TIMEOUT=2, on a loaded machine
    assert journey.notes["closed_by_the_proxy"] == first.used, journey
    assert not journey.notes["closed_by_the_front_door"], journey
    assert not second.held and len(second.used) == 1 and second.used != first.used, journey

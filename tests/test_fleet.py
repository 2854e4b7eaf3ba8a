"""A fleet that loses no sign-in: instances of `python proxy.py` behind a real nginx, replaced one at a time through
the three rollouts of a key rotation (docs/oidc.md, Key rotation), under continuous traffic.

Three instances, each its own process, sit behind Debian's nginx (round-robin, a new connection to an instance per
request, no retry on another). Each rollout replaces them one at a time as an orchestrator does: start the
successor and wait for /healthz, add it to nginx and reload, take the old one out and reload, then SIGTERM it.
Meanwhile a relying party signs users in through nginx, over and over (authorize, TikTok's consent page, the
callback, the token endpoint, the ID token's signature and claims), keeping the JWKS as panva's jose does, and an
Auth0 tenant exchanges codes on /proxy/token. nginx's access log names the instance of every step (each request
carries its step's name in a header, which nginx logs beside `$upstream_addr`), so the test can show that steps
really crossed between old and new instances, in both directions. Then a control: the old two-step rotation, in
the same rig, loses sign-ins.

The waits of the real procedure are scaled down: the relying party keeps the JWKS CACHE_SECONDS instead of the
JWKS's 300, and sign-ins take milliseconds instead of up to the state's 10 minutes.
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, GuestProtocol, JWKRegistry, RSAKey

from conftest import RP_REDIRECT, ServerThread, free_port, key_env, oidc_env, wait_until_healthy
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, TikTokStandIn
from test_cli import clean_env
from test_front_door import foreground_nginx, nginx_conf
from test_oidc import VERIFIER, authorize_params
from test_token import code_grant

REPO = Path(__file__).resolve().parent.parent
REPLICAS = 3
CACHE_SECONDS = 3.0  # how long the relying party keeps the JWKS: the JWKS's max-age (300 s), scaled down
COOLDOWN_SECONDS = 30.0  # at most one refetch on an unknown kid this often, as panva's jose
STEP_HEADER = "X-Fleet-Step"  # the step a request is, for nginx's access log

# What each instance runs, by key file: before the rotation, its three rollouts, and the control's rollout.
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"key": "rsa"},
    "publish": {"key": "rsa", "next": ("rsa-next",)},  # 1. every instance gets the new key as next
    "promote": {"key": "rsa-next", "previous": ("rsa",)},  # 2. it signs and seals; the old key is previous
    "drop": {"key": "rsa-next"},  # 3. the old key is gone
    "two-step": {"key": "ec", "previous": ("rsa-next",)},  # the control: a new key promoted at once
}
ROLLOUTS = [("before", "publish"), ("publish", "promote"), ("promote", "drop")]

NGINX_HTTP = """\
    log_format fleet '$http_x_fleet_step|$status|$upstream_addr';
    access_log {dir}/access.log fleet;
    upstream fleet {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fleet;
            # A request that fails at an instance fails for the client: no retry on another hides it.
            proxy_next_upstream off;
        }}
    }}"""


# ------------------------------------------------------------------------------------------------ the fleet


@dataclass
class Instance:
    """`python proxy.py` in its own process, with one of CONFIGS."""

    name: str  # e.g. "publish-2"
    config: str
    port: int
    process: subprocess.Popen[str]
    log: Path


class Nginx:
    """Debian's nginx, as this test's own process: round-robin over the instances it is given, reloaded on SIGHUP."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.conf = workdir / "nginx.conf"

    @contextmanager
    def running(self, instances: list[Instance]) -> Iterator[None]:
        self.configure(instances)
        with foreground_nginx(self.conf, self.workdir, self.port) as process:
            self.process = process
            yield

    def reload(self, instances: list[Instance]) -> None:
        """Serve these instances from now on: once every worker started before has finished its requests."""
        self.configure(instances)
        old = self.workers()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while old & self.workers() or not self.workers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload: {(self.workdir / 'error.log').read_text()}")
            time.sleep(0.01)

    def configure(self, instances: list[Instance]) -> None:
        servers = "\n".join(f"        server 127.0.0.1:{instance.port};" for instance in instances)
        self.conf.write_text(
            nginx_conf(self.workdir, NGINX_HTTP.format(dir=self.workdir, port=self.port, servers=servers))
        )

    def workers(self) -> set[str]:
        return set(Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split())


class Fleet:
    """The instances, started, put behind nginx, and replaced one at a time as an orchestrator does."""

    def __init__(self, workdir: Path, tiktok_url: str, key_files: dict[str, str]) -> None:
        self.workdir, self.key_files = workdir, key_files
        self.nginx = Nginx(workdir)
        self.url = f"http://127.0.0.1:{self.nginx.port}"  # the issuer: relying parties see only nginx
        self.env = {**clean_env(), **oidc_env(tiktok_url, key_files["rsa"], PUBLIC_URL=self.url)}
        self.serving: list[Instance] = []
        self.every: list[Instance] = []  # every instance ever started, in order
        self.ports: set[int] = set()
        self.counts: dict[str, itertools.count[int]] = {}

    def start(self, config: str) -> Instance:
        port = free_port()
        while port in self.ports:  # never reuse an instance's port: the access log names instances by it
            port = free_port()
        self.ports.add(port)
        name = f"{config}-{next(self.counts.setdefault(config, itertools.count(1)))}"
        env = {**self.env, **key_env(self.key_files, **CONFIGS[config])}
        log = self.workdir / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
                env=env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        instance = Instance(name, config, port, process, log)
        self.every.append(instance)
        wait_until_healthy(f"http://127.0.0.1:{port}", process)  # the orchestrator's readiness probe
        return instance

    @contextmanager
    def running(self, config: str) -> Iterator[None]:
        """REPLICAS instances of this config behind nginx, until the block ends; then every one stopped."""
        try:
            self.serving = [self.start(config) for _ in range(REPLICAS)]
            with self.nginx.running(self.serving):
                yield
        finally:
            for instance in self.every:
                if instance.process.poll() is None:
                    instance.process.send_signal(signal.SIGTERM)  # as an orchestrator stops them
            self.wait_for_exit(self.every)

    def roll_to(self, config: str) -> None:
        """Replace each instance with one of this config, one at a time, as a rolling update does."""
        replaced = []
        for old in list(self.serving):
            new = self.start(config)
            self.nginx.reload([*self.serving, new])
            self.serving = [new if instance is old else instance for instance in self.serving]
            self.nginx.reload(self.serving)
            old.process.send_signal(signal.SIGTERM)  # nginx sends it nothing more: the rollout goes on as it drains
            replaced.append(old)
        self.wait_for_exit(replaced)

    @staticmethod
    def wait_for_exit(instances: list[Instance]) -> None:
        for instance in instances:
            try:
                instance.process.wait(30)
            except subprocess.TimeoutExpired:
                instance.process.kill()
                instance.process.wait()

    def instance_at(self) -> dict[str, Instance]:
        """Each instance by its address as nginx's `$upstream_addr` names it."""
        return {f"127.0.0.1:{instance.port}": instance for instance in self.every}


# ---------------------------------------------------------------------------------------------- the traffic


class Lost(Exception):
    """Why a sign-in or an exchange was lost: its step, and what the client saw."""


@dataclass
class Outcome:
    """One sign-in ("s17") or exchange ("x5"), and why it was lost (None: it went through)."""

    tag: str
    lost: str | None = None
    kid: str | None = None  # a sign-in's ID token was signed with this key


class ThroughNginx:
    """Requests to the fleet, only ever through nginx, each naming its step for nginx's access log.

    A new connection each time: nginx closes its idle connections to clients when it reloads, and a request sent on
    one just then would fail in the test's client, which is not what this test is about."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))

    def __enter__(self) -> ThroughNginx:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def step(self, tag: str, step: str, method: str, url: str, expect: int = 200, **kwargs: Any) -> httpx.Response:
        try:
            answer = self.http.request(method, url, headers={STEP_HEADER: f"{tag} {step}"}, **kwargs)
        except httpx.HTTPError as err:
            raise Lost(f"{step}: {err!r}") from None
        if answer.status_code != expect:
            text = answer.text  # the facade's refusal pages as their words, without the markup
            if answer.headers.get("content-type", "").startswith("text/html"):
                text = " ".join(re.sub(r"<style>.*?</style>|<[^>]+>", " ", text, flags=re.S).split())
            raise Lost(f"{step}: {answer.status_code} {text}")
        return answer


class JWKSCache:
    """The JWKS as a relying party on panva's jose keeps it (createRemoteJWKSet): fetched when first needed and
    once older than CACHE_SECONDS, and again on an unknown kid, but then at most once per COOLDOWN_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, Any] = {}
        self.fetched = -math.inf  # never

    def key(self, client: ThroughNginx, tag: str, kid: str) -> Any:
        with self.lock:
            age = time.monotonic() - self.fetched
            if age > CACHE_SECONDS or (kid not in self.keys and age >= COOLDOWN_SECONDS):
                jwks = client.step(tag, "jwks", "GET", "/oidc/jwks").json()
                self.keys = {jwk["kid"]: JWKRegistry.import_key(jwk) for jwk in jwks["keys"]}
                self.fetched, age = time.monotonic(), 0
            if kid not in self.keys:
                raise Lost(f"id_token: its kid {kid} is not in the JWKS the relying party fetched {age:.1f} s ago")
            return self.keys[kid]

    def fetched_after(self, moment: float) -> None:
        """Wait until the cache holds a JWKS fetched after this moment."""
        deadline = time.monotonic() + CACHE_SECONDS + 10
        while self.fetched <= moment:
            assert time.monotonic() < deadline, "the relying party did not refetch the JWKS"
            time.sleep(0.05)


class RelyingParty:
    """An application signing users in through the fleet, and checking each ID token in full."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.jwks = JWKSCache()

    def sign_in(self, client: ThroughNginx, tiktok_pages: httpx.Client, number: int) -> Outcome:
        outcome = Outcome(f"s{number}")
        state, nonce = f"state-{number}", f"nonce-{number}"
        try:
            params = authorize_params(state=state, nonce=nonce)
            to_tiktok = client.step(outcome.tag, "authorize", "GET", "/oidc/authorize", 302, params=params)
            # TikTok's page, straight at the stand-in, then the user's Authorize: the way back, through nginx.
            page = tiktok_pages.get(to_tiktok.headers["location"])
            consent = re.search(r'name="consent" value="([^"]+)"', page.text)
            assert consent, page.text
            tiktok_url = to_tiktok.headers["location"].split("?")[0]
            back = tiktok_pages.post(tiktok_url, data={"consent": consent.group(1), "decision": "authorize"})
            to_rp = client.step(outcome.tag, "callback", "GET", back.headers["location"], 302)
            location = to_rp.headers["location"]
            query = dict(parse_qsl(urlsplit(location).query))
            if not location.startswith(RP_REDIRECT + "?") or query.get("state") != state or "code" not in query:
                raise Lost(f"callback: redirected to {location}")
            form = {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": RP_REDIRECT,
                    "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "code_verifier": VERIFIER}  # fmt: skip
            answer = client.step(outcome.tag, "token", "POST", "/oidc/token", data=form)
            outcome.kid = self.verify(client, outcome.tag, answer.json()["id_token"], nonce)
        except Lost as lost:
            outcome.lost = str(lost)
        return outcome

    def verify(self, client: ThroughNginx, tag: str, id_token: str, nonce: str) -> str:
        """The ID token's signature through the cached JWKS, and its claims; its kid."""

        def key(guest: GuestProtocol) -> Any:
            return self.jwks.key(client, tag, str(guest.headers().get("kid")))

        try:
            token = jwt.decode(id_token, key, algorithms=["RS256", "ES256"])
            claims = {"iss": self.issuer, "aud": CLIENT_KEY, "nonce": nonce}
            options = {name: {"essential": True, "value": value} for name, value in claims.items()}
            jwt.JWTClaimsRegistry(exp={"essential": True}, **options).validate(token.claims)
        except JoseError as err:
            raise Lost(f"id_token: {err!r}") from None
        return str(token.header["kid"])


def exchange(client: ThroughNginx, tiktok: TikTokStandIn, number: int) -> Outcome:
    """Auth0's token exchange on /proxy/token, with a code the TikTok stand-in issued."""
    outcome = Outcome(f"x{number}")
    try:
        answer = client.step(outcome.tag, "exchange", "POST", "/proxy/token", data=code_grant(tiktok.issue_code()))
        if answer.json().get("access_token") not in tiktok.access_tokens:
            raise Lost(f"exchange: not the token TikTok issued: {answer.text[:300]}")
    except Lost as lost:
        outcome.lost = str(lost)
    return outcome


class Traffic:
    """Sign-ins on two threads and exchanges on a third, each one after the other, until the block ends."""

    def __init__(self, url: str, rp: RelyingParty, tiktok: TikTokStandIn, numbers: Iterator[int]) -> None:
        self.url, self.rp, self.tiktok, self.numbers = url, rp, tiktok, numbers
        self.sign_ins: list[Outcome] = []
        self.exchanges: list[Outcome] = []
        self.begun: dict[int, float] = {}  # when each sign-in thread began the sign-in it is doing
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.signing_in, args=(n,)) for n in range(2)]
        self.threads.append(threading.Thread(target=self.exchanging))

    def signing_in(self, thread: int) -> None:
        with ThroughNginx(self.url) as client, httpx.Client(timeout=10) as tiktok_pages:
            while not self.done.is_set():
                self.begun[thread] = time.monotonic()
                self.sign_ins.append(self.rp.sign_in(client, tiktok_pages, next(self.numbers)))

    def exchanging(self) -> None:
        with ThroughNginx(self.url) as client:
            while not self.done.is_set():
                self.exchanges.append(exchange(client, self.tiktok, next(self.numbers)))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        self.wait_for(sign_ins=4)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(30)

    def wait_for(self, sign_ins: int) -> None:
        """Wait until this many more sign-ins are done."""
        target, deadline = len(self.sign_ins) + sign_ins, time.monotonic() + 20
        while len(self.sign_ins) < target:
            assert time.monotonic() < deadline, "the sign-ins stalled"
            time.sleep(0.01)

    def settled(self, moment: float) -> None:
        """Wait until every sign-in begun before this moment has ended (in production: the state's 10 minutes)."""
        while min(self.begun.values()) <= moment:
            time.sleep(0.01)


# ----------------------------------------------------------------------------------------- what the logs say


class Run:
    """What the logs say: which instance served each step (nginx's access log), and what each instance announced."""

    def __init__(self, fleet: Fleet, key_files: dict[str, str]) -> None:
        self.fleet = fleet
        at = fleet.instance_at()
        self.steps: dict[str, dict[str, Instance]] = {}  # by sign-in or exchange, the instance of each step
        for line in (fleet.workdir / "access.log").read_text().splitlines():
            step, status, upstream = line.split("|")
            assert upstream in at, f"not one instance: {line}"  # two addresses would be a retry on another instance
            tag, name = step.split(" ")
            self.steps.setdefault(tag, {})[name] = at[upstream]
        self.errors = (fleet.workdir / "error.log").read_text()
        thumbprint = {
            name: (RSAKey if name.startswith("rsa") else ECKey).import_key(Path(path).read_bytes()).thumbprint()
            for name, path in key_files.items()
        }
        self.signing_kid = {config: thumbprint[keys["key"]] for config, keys in CONFIGS.items()}
        self.startup = {  # what each config's startup line says of its keys
            config: f"signing_kid={thumbprint[keys['key']]} "
            + " ".join(
                f"{role}_kids={','.join(thumbprint[name] for name in keys.get(role, ())) or '-'}"
                for role in ("next", "previous")
            )
            for config, keys in CONFIGS.items()
        }

    def config(self, outcome: Outcome, step: str) -> str:
        return self.steps[outcome.tag][step].config

    def crossings(self, sign_ins: list[Outcome]) -> Counter[tuple[str, str, str]]:
        """(what, the config that sealed it, the config that opened it), for each state and code of these sign-ins."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for outcome in sign_ins:
            counts["state", self.config(outcome, "authorize"), self.config(outcome, "callback")] += 1
            counts["code", self.config(outcome, "callback"), self.config(outcome, "token")] += 1
        return counts

    def report(self, outcomes: list[Outcome]) -> str:
        """What a failing assertion prints: each lost one, with the instance of each of its steps."""
        lines = [
            f"{outcome.tag}: {(outcome.lost or '')[:300]}; "
            + ", ".join(f"{step} at {instance.name}" for step, instance in self.steps.get(outcome.tag, {}).items())
            for outcome in outcomes
            if outcome.lost or len(outcomes) == 1
        ]
        instances = [f"{instance.name}: port {instance.port}, status {instance.process.returncode}"
                     for instance in self.fleet.every]  # fmt: skip
        return "\n".join([*lines[:40], *instances, f"nginx error log:\n{self.errors}"])


def lost(outcomes: list[Outcome]) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.lost]


# ---------------------------------------------------------------------------------------------------- the test


@pytest.mark.alone  # three proxies, nginx and a relying party keep 1.5 cores busy for 10 s
def test_a_key_rotation_across_a_rolling_fleet_loses_no_sign_in_and_the_old_two_step_one_does(
    stand_in_server: tuple[TikTokStandIn, ServerThread],
    tiktok: TikTokStandIn,
    key_files: dict[str, str],
    tmp_path: Path,
) -> None:
    _, tiktok_server = stand_in_server
    fleet = Fleet(tmp_path, tiktok_server.url, key_files)
    tiktok.redirect_uris.add(fleet.url + "/oidc/callback")
    rp, numbers = RelyingParty(fleet.url), itertools.count(1)
    with fleet.running("before"):
        with Traffic(fleet.url, rp, tiktok, numbers) as rotation:
            fleet.roll_to("publish")
            rp.jwks.fetched_after(time.monotonic())  # every instance publishes the new key: wait for the JWKS caches
            fleet.roll_to("promote")
            rotation.settled(time.monotonic())  # every sign-in begun under the old key has ended
            fleet.roll_to("drop")
        with Traffic(fleet.url, rp, tiktok, numbers) as control:
            fleet.roll_to("two-step")
    run = Run(fleet, key_files)

    # Through the three rollouts: no lost sign-in, no failed exchange, every ID token verified.
    assert len(rotation.sign_ins) > 50 and not lost(rotation.sign_ins), run.report(rotation.sign_ins)
    assert rotation.exchanges and not lost(rotation.exchanges), run.report(rotation.exchanges)
    for outcome in rotation.sign_ins:  # ... each signed by the key of the instance that issued it
        assert outcome.kid == run.signing_kid[run.config(outcome, "token")], run.report([outcome])
    # Steps really crossed between old and new instances, both ways, in each rollout: a state sealed by one opened
    # by the other, and a code likewise.
    crossings = run.crossings(rotation.sign_ins)
    for old, new in ROLLOUTS:
        for what in ("state", "code"):
            assert crossings[what, old, new] and crossings[what, new, old], (what, old, new, crossings)
    # Each instance announced its keys, and exited 0 after its drain.
    for instance in fleet.every:
        output = instance.log.read_text()
        (start,) = [line for line in output.splitlines() if "event=start " in line]
        assert f" {run.startup[instance.config]} " in f"{start} ", (instance.name, start)
        assert "Traceback" not in output, output
    assert [
        (instance.name, instance.process.returncode) for instance in fleet.every if instance.process.returncode
    ] == []
    assert "upstream" not in run.errors, run.errors

    # The control, in the same rig: a new key promoted at once (the old rotation) loses sign-ins where old and new
    # instances cross, and only there. Exchanges on /proxy/token, which use no key, still all go through.
    assert lost(control.sign_ins), run.report(control.sign_ins)
    assert control.exchanges and not lost(control.exchanges), run.report(control.exchanges)
    for outcome in lost(control.sign_ins):
        reason = outcome.lost or ""
        if reason.startswith("callback:"):
            assert "the sign-in state is not valid" in reason, run.report([outcome])
            assert (run.config(outcome, "authorize"), run.config(outcome, "callback")) == ("two-step", "drop")
        elif reason.startswith("token:"):
            assert "invalid_grant" in reason, run.report([outcome])
            assert (run.config(outcome, "callback"), run.config(outcome, "token")) == ("two-step", "drop")
        else:  # signed with the new key; the JWKS the relying party holds, fetched from an old instance, lacks it
            assert reason.startswith("id_token: its kid"), run.report([outcome])
            assert run.config(outcome, "token") == "two-step"

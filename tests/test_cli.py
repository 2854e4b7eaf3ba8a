"""The proxy as users run it: `python proxy.py` in its own process, with its real logging."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn.config

import proxy
from tiktok_proxy.config import STARTUP_FAILURE, load_settings
from tiktok_proxy.logs import logfmt

from conftest import ServerThread, free_port, wait_until_healthy
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REDIRECT_URI, REVOKE_PATH, TOKEN_PATH, TikTokStandIn

REPO = Path(__file__).resolve().parent.parent


def clean_env(**variables: str) -> dict[str, str]:
    """Only what the test sets: no stray TIKTOK_* or .env from the developer's shell."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONUNBUFFERED": "1", **variables}


def test_help_and_the_entry_points_docstring_name_both_ways_to_use_the_proxy(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, str(REPO / "proxy.py"), "--help"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    for text in (" ".join(shown.stdout.split()), " ".join((proxy.__doc__ or "").split())):
        assert "Auth0's custom social connections" in text
        assert "the OpenID Connect facade" in text and "when OIDC_SIGNING_KEY_FILE is set" in text
        assert all(command in text for command in ("setup-auth0", "doctor", "revoke-user", "oidc-keygen"))


@pytest.mark.parametrize(
    "command",
    [[sys.executable, str(REPO / "proxy.py")], [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "proxy:app"]],
    ids=["python proxy.py", "uvicorn proxy:app"],
)
def test_bad_configuration_stops_startup_with_one_line(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        command, env=clean_env(TIKTOK_TIMEOUT="ten"), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "tiktok-token-proxy: configuration error: TIKTOK_TIMEOUT must be a number, got 'ten'"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_configuration_stops_uvicorns_own_workers_instead_of_restarting_them_for_ever(tmp_path: Path) -> None:
    """uvicorn's supervisor starts a worker again after any exit but its startup-failure status: a configuration
    error in `uvicorn proxy:app --workers 2` used to fail, print its line and restart, for as long as it ran."""
    assert STARTUP_FAILURE == uvicorn.config.STARTUP_FAILURE
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "--port", str(free_port()), "proxy:app"]
    result = subprocess.run(
        [*command, "--workers", "2"],
        env=clean_env(TIKTOK_TIMEOUT="ten"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert lines and set(lines) == {
        "tiktok-token-proxy: configuration error: TIKTOK_TIMEOUT must be a number, got 'ten'"
    }
    assert len(lines) <= 2, result.stderr  # once per worker, never again
    assert "failed to start, stopping the parent process" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIKTOK_TIMEOUT=ten\nLOG_LEVEL=LOUD\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "proxy.py")],
        env=clean_env(TIKTOK_TIMEOUT="3"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "LOG_LEVEL must be one of" in result.stderr  # from .env; TIKTOK_TIMEOUT=ten was overridden


def test_dotenv_is_read_from_the_working_directory_only(tmp_path: Path) -> None:
    # The proxy's settings and the commands' settings, as each reads them (their own .env loading).
    show = (
        "from tiktok_proxy.config import load_settings;"
        "from tiktok_proxy.auth0.management import load_admin_settings;"
        "print(load_settings().log_level, load_admin_settings().connection_name)"
    )
    working_directory = tmp_path / "child"
    working_directory.mkdir()
    (tmp_path / ".env").write_text("LOG_LEVEL=DEBUG\nAUTH0_CONNECTION_NAME=from-the-parent\n")

    def settings_seen() -> str:
        result = subprocess.run(
            [sys.executable, "-c", show],
            env=clean_env(PYTHONPATH=str(REPO)), cwd=working_directory, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert settings_seen() == "INFO tiktok"  # the parent's .env is ignored: the defaults
    (working_directory / ".env").write_text("LOG_LEVEL=ERROR\nAUTH0_CONNECTION_NAME=from-the-working-directory\n")
    assert settings_seen() == "ERROR from-the-working-directory"


class RunningProxy:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.url = process, f"http://127.0.0.1:{port}"
        self.log_format = "plain"

    @classmethod
    def start(cls, arguments: list[str], env: dict[str, str], cwd: Path) -> RunningProxy:
        """`python proxy.py ARGUMENTS --port P` in a process of its own, once it answers /healthz."""
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), *arguments, "--port", str(port)],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        running = cls(process, port)
        wait_until_healthy(running.url, process)
        return running

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=15)
        return output


@pytest.fixture(params=["plain", "json"])
def running_proxy(
    request: pytest.FixtureRequest, stand_in_server: tuple[TikTokStandIn, ServerThread], tmp_path: Path
) -> Iterator[RunningProxy]:
    """`python proxy.py` at LOG_LEVEL=DEBUG, once per LOG_FORMAT: the leak checks cover both formats."""
    _, tiktok_server = stand_in_server
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
        env=clean_env(
            LOG_LEVEL="DEBUG",
            LOG_FORMAT=request.param,
            TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH,
            TIKTOK_REVOKE_URL=tiktok_server.url + REVOKE_PATH,
            TIKTOK_TIMEOUT="2",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningProxy(process, port)
    running.log_format = request.param
    wait_until_healthy(running.url, process)
    yield running
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_no_secret_code_verifier_or_token_reaches_the_log(running_proxy: RunningProxy, tiktok: TikTokStandIn) -> None:
    """A full session at LOG_LEVEL=DEBUG (uvicorn, httpx and httpcore included): nothing sensitive is logged."""
    verifier = "Verifier-" + "v" * 40
    code = tiktok.issue_code(code_verifier=verifier)
    sensitive = [CLIENT_SECRET, code, verifier]
    with httpx.Client(base_url=running_proxy.url) as client:
        exchange = {
            "client_id": CLIENT_KEY,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
        first = client.post("/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange})
        assert first.status_code == 200, first.text
        sensitive += [first.json()["access_token"], first.json()["refresh_token"]]
        refresh = {
            "grant_type": "refresh_token",
            "client_id": CLIENT_KEY,
            "client_secret": CLIENT_SECRET,
            "refresh_token": first.json()["refresh_token"],
        }
        second = client.post("/proxy/token", data=refresh)
        assert second.status_code == 200, second.text
        sensitive += [second.json()["access_token"], second.json()["refresh_token"]]
        revoked = client.post(
            "/proxy/revoke",
            data={"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "token": second.json()["access_token"]},
        )
        assert revoked.status_code == 200, revoked.text
        reused = client.post("/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange})
        assert reused.status_code == 400
        refused = client.post(
            "/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange, "client_secret": ""}
        )
        assert refused.status_code == 400
        tiktok.fault = lambda: httpx_html_500()
        failed = client.post("/proxy/token", data={"grant_type": "authorization_code", "code": code, **exchange})
        assert failed.status_code == 502
        for response in (reused, refused, failed):
            assert not any(value in response.text for value in sensitive)
    raw_log = running_proxy.stop()
    for value in sensitive:  # the log exactly as written, in either format
        assert value not in raw_log
    log = as_plain_lines(raw_log, running_proxy.log_format)

    assert log.count("event=token ") == 5, log
    assert "event=revoke outcome=ok" in log
    assert "event=token outcome=ok grant=authorization_code client_key=aw1testclientkey upstream_status=200" in log
    assert "INFO tiktok_proxy event=start token_url=http://127.0.0.1:" in log
    assert "WARNING tiktok_proxy the proxy has no gate: anyone who reaches it can relay" in log
    assert "outcome=invalid_grant" in log and "outcome=server_error" in log
    # The capture really ran at DEBUG, and the DEBUG lines name parameters, never their values.
    assert (
        "DEBUG tiktok_proxy event=token_request params=client_id,client_secret,code,code_verifier,grant_type,redirect_uri"
        in log
    )
    assert "DEBUG tiktok_proxy.upstream upstream_connect host=127.0.0.1" in log
    for value in sensitive:
        assert value not in log


def as_plain_lines(log: str, log_format: str) -> str:
    """The JSON lines written back as key=value lines, so that one set of assertions reads both formats."""
    if log_format == "plain":
        return log
    lines = []
    for line in log.splitlines():
        entry = json.loads(line)  # every line, uvicorn's included, is one JSON object
        time, level, logger = entry.pop("time"), entry.pop("level"), entry.pop("logger")
        text = entry.pop("message") if "message" in entry else logfmt(**entry)
        lines.append(f"{time} {level} {logger} {text}")
    return "\n".join(lines)


def httpx_html_500():  # type: ignore[no-untyped-def]
    from starlette.responses import HTMLResponse

    return HTMLResponse("<h1>oops</h1>", status_code=500)


def test_sigterm_stops_the_proxy_cleanly(running_proxy: RunningProxy) -> None:
    log = running_proxy.stop()
    assert running_proxy.process.returncode == 0  # a complete drain (tests/test_shutdown.py has the rest)
    assert "Finished server process" in log
    assert "Traceback" not in log


def test_several_workers_serve_the_same_exchanges(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tiktok: TikTokStandIn, tmp_path: Path
) -> None:
    _, tiktok_server = stand_in_server
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "proxy.py"), "--port", str(port)],
        env=clean_env(WEB_CONCURRENCY="2", TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningProxy(process, port)
    try:
        wait_until_healthy(running.url, process)
        credentials = {"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT_URI}
        for _ in range(20):  # a fresh connection each time, so both workers get some
            code = tiktok.issue_code()
            response = httpx.post(
                running.url + "/proxy/token", data={"grant_type": "authorization_code", "code": code, **credentials}
            )
            assert response.status_code == 200, response.text
    finally:
        log = running.stop()
    assert log.count("event=token outcome=ok") == 20
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2, log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "command",
    [["proxy.py", "--port", "{port}"], ["-m", "uvicorn", "--app-dir", str(REPO), "--port", "{port}", "proxy:app"]],
    ids=["python proxy.py", "uvicorn proxy:app"],
)
def test_json_logs_are_one_object_per_line_with_the_same_fields(
    command: list[str], stand_in_server: tuple[TikTokStandIn, ServerThread], tiktok: TikTokStandIn, tmp_path: Path
) -> None:
    _, tiktok_server = stand_in_server
    port = free_port()
    arguments = [str(REPO / part) if part == "proxy.py" else part.format(port=port) for part in command]
    env = clean_env(LOG_FORMAT="json", LOG_LEVEL="DEBUG", TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH)
    process = subprocess.Popen(
        [sys.executable, *arguments], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    running = RunningProxy(process, port)
    wait_until_healthy(running.url, process)
    code = tiktok.issue_code()
    form = {"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT_URI}
    with httpx.Client(base_url=running.url) as client:
        ok = client.post("/proxy/token", data={**form, "grant_type": "authorization_code", "code": code})
        reused = client.post("/proxy/token", data={**form, "grant_type": "authorization_code", "code": code})
    assert (ok.status_code, reused.status_code) == (200, 400)
    output = running.stop()

    entries = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert any(entry.get("message", "").startswith("Started server process") for entry in entries)  # uvicorn's too
    exchanges = [entry for entry in entries if entry.get("event") == "token"]
    assert [entry["outcome"] for entry in exchanges] == ["ok", "invalid_grant"]
    assert list(exchanges[0])[3:] == [
        "event",
        "outcome",
        "grant",
        "client_key",
        "upstream_status",
        "log_id",
        "duration_ms",
        "status",
        "gate_header",  # new fields go after status, so that the ones before never move
    ]
    assert exchanges[0]["status"] == 200 and exchanges[0]["client_key"] == CLIENT_KEY and exchanges[1]["status"] == 400
    assert any(entry.get("event") == "token_request" and entry["level"] == "DEBUG" for entry in entries)
    for value in (CLIENT_SECRET, code, ok.json()["access_token"], ok.json()["refresh_token"]):
        assert value not in output


NO_GATE_LINE = (
    "tiktok-token-proxy: configuration error: HOST (or --host) is 0.0.0.0, reachable from other machines, and the "
    "proxy has no gate: set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET to your TikTok app's client key and secret "
    "(the proxy then checks the secret itself); for several TikTok apps behind one proxy, PROXY_SECRET (make one "
    "with: openssl rand -hex 32) and ALLOWED_CLIENT_KEYS. ALLOW_OPEN_RELAY=true starts it open anyway"
)


@pytest.mark.parametrize(
    ("command", "env"),
    [
        ([sys.executable, str(REPO / "proxy.py"), "--host", "0.0.0.0", "--port", "1"], {}),  # as the Procfile runs it
        ([sys.executable, str(REPO / "proxy.py")], {"HOST": "0.0.0.0"}),  # as the container image runs it
        ([sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "proxy:app"], {"HOST": "0.0.0.0"}),
    ],
    ids=["--host", "HOST", "uvicorn proxy:app with HOST"],
)
def test_off_loopback_without_a_gate_the_proxy_refuses_to_start(
    command: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(command, env=clean_env(**env), cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == NO_GATE_LINE
    assert "Traceback" not in result.stdout + result.stderr


def test_host_on_the_command_line_wins_over_a_host_in_the_environment(tmp_path: Path) -> None:
    # HOST=0.0.0.0 (the image's) with no gate, but --host 127.0.0.1: the proxy listens on loopback only, and starts.
    running = RunningProxy.start(["--host", "127.0.0.1"], clean_env(HOST="0.0.0.0"), tmp_path)
    assert "gate=open" in running.stop()


def test_an_open_relay_off_loopback_is_an_explicit_and_loud_choice(tmp_path: Path) -> None:
    running = RunningProxy.start(["--host", "0.0.0.0"], clean_env(ALLOW_OPEN_RELAY="true"), tmp_path)
    log = running.stop()
    assert "gate=open" in log
    assert "WARNING tiktok_proxy OPEN RELAY: ALLOW_OPEN_RELAY=true and no gate, on 0.0.0.0" in log


# ------------------------------------------------------------------------------------- misspelt settings


def test_misspelt_settings_are_named_at_startup(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIKTOK_CLIENT_KYE=aw1yourclientkey\nOIDC_SIGNING_KEY=/keys/oidc-key.pem\n")
    running = RunningProxy.start([], clean_env(PROXY_SECRT="a-gate-secret-in-a-misspelt-variable"), tmp_path)
    log = running.stop()
    for misspelt, meant in (("OIDC_SIGNING_KEY", "OIDC_SIGNING_KEY_FILE"), ("PROXY_SECRT", "PROXY_SECRET"),
                            ("TIKTOK_CLIENT_KYE", "TIKTOK_CLIENT_KEY")):  # fmt: skip
        assert f"WARNING tiktok_proxy {misspelt} is not a setting; did you mean {meant}?" in log, log
    for value in ("aw1yourclientkey", "/keys/oidc-key.pem", "a-gate-secret-in-a-misspelt-variable"):
        assert value not in log


def test_a_misspelling_is_named_before_the_error_it_causes(tmp_path: Path) -> None:
    from tiktok_proxy.oidc.jose import generate_pem

    (tmp_path / "key.pem").write_text(generate_pem("ec"))
    env = clean_env(OIDC_SIGNING_KEY_FILE=str(tmp_path / "key.pem"), PUBLIC_URL="https://idp.example.com",
                    ALLOWED_CLIENT_KEYS="aw1yourclientkey", OIDC_REDIRECT_URI="https://app.example.com/cb")  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO / "proxy.py")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tiktok-token-proxy: warning: OIDC_REDIRECT_URI is not a setting; did you mean OIDC_REDIRECT_URIS?",
        "tiktok-token-proxy: configuration error: OIDC_REDIRECT_URIS must list your relying parties' redirect URIs "
        "(OIDC_SIGNING_KEY_FILE is set)",
    ]


# ------------------------------------------------------------------------------------------- oidc-keygen


def keygen(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "proxy.py"), "oidc-keygen", *arguments], env=clean_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=30)  # fmt: skip


def test_oidc_keygen_writes_a_key_only_its_owner_can_read(tmp_path: Path) -> None:
    result = keygen("--type", "ec", "--out", "oidc-key.pem", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    key_file = tmp_path / "oidc-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    env = {"OIDC_SIGNING_KEY_FILE": str(key_file), "PUBLIC_URL": "https://idp.example.com",
           "ALLOWED_CLIENT_KEYS": "aw1yourclientkey", "OIDC_REDIRECT_URIS": "https://app.example.com/cb"}  # fmt: skip
    assert load_settings(env).oidc_key is not None  # a key the facade takes


def test_oidc_keygen_creates_the_file_with_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With no umask at all and no chmod allowed, 0600 can only come from the creation itself: the key is never
    # readable by others, not even for an instant.
    from tiktok_proxy import cli

    def no_chmod(*arguments: object, **options: object) -> None:
        raise AssertionError("the key file was chmod'ed after its creation")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    previous = os.umask(0)
    try:
        with pytest.raises(SystemExit) as ended:
            cli.main(["oidc-keygen", "--type", "ec", "--out", str(tmp_path / "oidc-key.pem")])
    finally:
        os.umask(previous)
    assert ended.value.code == 0
    assert (tmp_path / "oidc-key.pem").stat().st_mode & 0o777 == 0o600


def test_oidc_keygen_never_overwrites(tmp_path: Path) -> None:
    assert keygen("--type", "ec", "--out", "oidc-key.pem", cwd=tmp_path).returncode == 0
    first = (tmp_path / "oidc-key.pem").read_text()
    again = keygen("--type", "ec", "--out", "oidc-key.pem", cwd=tmp_path)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == (
        "tiktok-token-proxy: oidc-key.pem exists; oidc-keygen never overwrites a key (choose another --out)\n"
    )
    assert (tmp_path / "oidc-key.pem").read_text() == first
    # Nor through a link planted where the key is to go: the link's target is not created.
    (tmp_path / "planted.pem").symlink_to(tmp_path / "elsewhere.pem")
    assert keygen("--out", "planted.pem", cwd=tmp_path).returncode == 1
    assert not (tmp_path / "elsewhere.pem").exists()
    missing = keygen("--out", "no-such-folder/oidc-key.pem", cwd=tmp_path)
    assert missing.returncode == 1
    assert (
        missing.stderr == "tiktok-token-proxy: cannot create no-such-folder/oidc-key.pem: No such file or directory\n"
    )

"""Prometheus metrics: GET /metrics behind its bearer token, bounded labels, one sum over the workers, and the
alert rules. The real checks use a real Prometheus and promtool (Debian's `prometheus` package): they fail,
not skip, when those are missing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerThread, free_port
from stand_ins.tiktok import CLIENT_KEY, CLIENT_SECRET, REVOKE_PATH, TOKEN_PATH, TikTokStandIn, reply
from test_token import assert_oauth_error, code_grant

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus"
METRICS_TOKEN = "metrics-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> tuple[Samples, str]:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def exchanges(route: str, grant: str, outcome: str, status: int) -> dict[str, str]:
    return {"route": route, "grant": grant, "outcome": outcome, "status": str(status)}


# ----------------------------------------------------------------------------------- the endpoint


def test_metrics_are_off_without_a_token(client: httpx.Client) -> None:
    response = client.get("/metrics", headers=BEARER)
    assert_oauth_error(response, 404, "invalid_request")


def test_metrics_need_the_bearer_token(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(metrics_token=METRICS_TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer not-the-metrics-token-at-all"},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},  # a prefix is not the token
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": METRICS_TOKEN},
        {"Authorization": "Bearer caf\xe9".encode("latin-1")},  # not ASCII: refused, not a crash
    ):
        response = client.get("/metrics", headers=headers)
        assert_oauth_error(response, 401, "invalid_token")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert METRICS_TOKEN not in response.text and "tiktok_proxy_" not in response.text
    samples, text = scrape(client)
    assert "# TYPE tiktok_proxy_exchanges_total counter" in text
    assert value(samples, "tiktok_proxy_upstream_failures_total", kind="timeout") >= 0  # present from the start


def test_exchanges_are_counted_with_bounded_labels(proxy_with, tiktok: TikTokStandIn) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(metrics_token=METRICS_TOKEN)
    before, _ = scrape(client)
    code = tiktok.issue_code()
    sensitive = [CLIENT_SECRET, CLIENT_KEY, code, METRICS_TOKEN]

    first = client.post("/proxy/token", data=code_grant(code))
    assert first.status_code == 200, first.text
    sensitive += [first.json()["access_token"], first.json()["refresh_token"]]
    revoke = {"client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET, "token": first.json()["access_token"]}
    assert client.post("/proxy/revoke", data=revoke).status_code == 200
    assert client.post("/proxy/token", data=code_grant(code)).status_code == 400  # the code again: invalid_grant
    tiktok.fault = reply(200, {"error": "a_brand_new_tiktok_error", "error_description": "?", "log_id": "1"})
    assert client.post("/proxy/token", data=code_grant(tiktok.issue_code())).status_code == 400
    tiktok.fault = reply(500, "<h1>oops</h1>", "text/html")
    assert client.post("/proxy/token", data=code_grant(tiktok.issue_code())).status_code == 502
    authorize = {"client_id": CLIENT_KEY, "redirect_uri": "https://example.com/cb", "response_type": "code"}
    assert client.get("/proxy/authorize", params=authorize, follow_redirects=False).status_code == 302
    unreachable = proxy_with(metrics_token=METRICS_TOKEN, token_url=f"http://127.0.0.1:{free_port()}/")
    assert unreachable.post("/proxy/token", data=code_grant("code")).status_code == 502
    gated = proxy_with(metrics_token=METRICS_TOKEN, proxy_secrets=frozenset({"gate-secret-0123456789"}))
    assert gated.post("/proxy/token", data=code_grant("code")).status_code == 401
    assert client.post("/proxy/token", data={"code": "x" * 70_000}).status_code == 413

    after, text = scrape(client)  # one process: every proxy of this test counts into the same metrics

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("tiktok_proxy_exchanges_total", **exchanges("token", "authorization_code", "ok", 200)) == 1
    assert grew("tiktok_proxy_exchanges_total", **exchanges("revoke", "none", "ok", 200)) == 1
    assert grew("tiktok_proxy_exchanges_total", **exchanges("token", "authorization_code", "invalid_grant", 400)) == 1
    assert grew("tiktok_proxy_exchanges_total", **exchanges("token", "authorization_code", "other", 400)) == 1
    assert grew("tiktok_proxy_exchanges_total", **exchanges("token", "authorization_code", "server_error", 502)) == 2
    assert grew("tiktok_proxy_exchanges_total", **exchanges("authorize", "none", "redirect", 302)) == 1
    assert grew("tiktok_proxy_exchanges_total", **exchanges("token", "none", "invalid_client", 401)) == 1
    assert grew("tiktok_proxy_upstream_failures_total", kind="unusable") == 1
    assert grew("tiktok_proxy_upstream_failures_total", kind="connect") == 1
    assert grew("tiktok_proxy_refusals_total", status="401", reason="gate") == 1
    assert grew("tiktok_proxy_refusals_total", status="413", reason="body") == 1
    assert grew("tiktok_proxy_exchanges_total", **exchanges("token", "none", "invalid_request", 413)) == 1
    assert grew("tiktok_proxy_upstream_answer_seconds_count") == 5  # TikTok answered five times
    assert value(after, "tiktok_proxy_requests_in_flight") == 0
    assert "a_brand_new_tiktok_error" not in text
    assert not [secret for secret in sensitive if secret in text]
    labels = {label for (_, pairs) in after for label, _ in pairs}
    assert labels <= {"route", "grant", "outcome", "status", "kind", "reason", "id_token", "le"}


def test_serving_does_not_load_prometheus_client_before_the_workers_start() -> None:
    # prometheus_client picks in-memory or shared values at its first import; `python proxy.py` sets the
    # shared directory in serve(), after these imports, so they must not load it.
    code = "import sys, proxy, tiktok_proxy.cli; proxy.app; print('prometheus_client' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env={"PATH": ""}
    )
    assert loaded.stdout.strip() == "False"


# --------------------------------------------------------------------------- two workers, one sum


def clean_env(**variables: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONUNBUFFERED": "1", **variables}


def wait_for(what: str, check: Callable[[], object], seconds: float, why: Callable[[], str] = str) -> object:
    """Poll until check() gives something true; fail after `seconds` (the machine is shared: be generous)."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {why()}")
        time.sleep(0.1)
    return result


def answered_by(shared: Path, pid: int) -> float:
    """The successful token exchanges one worker has written to its own file in the shared directory."""
    path = shared / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(
        sample.value
        for metric in MultiProcessCollector.merge([str(path)])
        for sample in metric.samples
        if sample.name == "tiktok_proxy_exchanges_total" and sample.labels["outcome"] == "ok"
    )


def ok_exchanges(samples: Samples) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "tiktok_proxy_exchanges_total" and ("outcome", "ok") in labels
    )


def prometheus_query(port: int, query: str) -> float | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5).json()
    except (httpx.TransportError, ValueError):
        return None
    result = answer.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


@pytest.mark.alone  # a worker paused must not miss uvicorn's 5 s health checks
def test_two_workers_report_one_sum_to_a_real_prometheus(
    stand_in_server: tuple[TikTokStandIn, ServerThread], tiktok: TikTokStandIn, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "install Debian's prometheus package (scripts/setup-tests)"
    _, tiktok_server = stand_in_server
    port, prometheus_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    proxy_log, prometheus_log = tmp_path / "proxy.log", tmp_path / "prometheus.log"
    env = clean_env(
        WEB_CONCURRENCY="2",
        METRICS_TOKEN=METRICS_TOKEN,
        TIKTOK_TOKEN_URL=tiktok_server.url + TOKEN_PATH,
        TIKTOK_REVOKE_URL=tiktok_server.url + REVOKE_PATH,
        TMPDIR=str(tmp_path),  # so that the test finds the shared directory the proxy makes
    )
    with proxy_log.open("w") as out:
        proxy = subprocess.Popen(
            [sys.executable, str(REPO / "proxy.py"), "--port", str(port)], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    started: list[subprocess.Popen[bytes]] = [proxy]
    try:
        wait_for("two workers", lambda: proxy_log.read_text().count("Application startup complete") == 2, 60,
                 proxy_log.read_text)  # fmt: skip
        workers = [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", proxy_log.read_text())]
        assert len(workers) == 2, proxy_log.read_text()
        [shared] = tmp_path.glob("tiktok-proxy-metrics-*")

        def drive(count: int) -> None:
            form = {"grant_type": "client_credentials", "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET}
            for _ in range(count):  # a new connection each time
                response = httpx.post(url + "/proxy/token", data=form, timeout=10)
                assert response.status_code == 200, response.text

        # Linux often hands consecutive connections to the same worker: pause one so the other must answer.
        # Briefly: uvicorn kills a worker that misses its health checks for 5 seconds.
        for paused, serving in (workers, workers[::-1]):
            before = answered_by(shared, serving)
            os.kill(paused, signal.SIGSTOP)
            try:
                drive(5)
            finally:
                os.kill(paused, signal.SIGCONT)
            assert answered_by(shared, serving) == before + 5
        drive(4)  # and a few with both running
        expected = 5 + 5 + 4

        with httpx.Client(base_url=url) as client:
            direct, _ = scrape(client)  # one scrape, whichever worker answers it
        assert ok_exchanges(direct) == expected
        # livesum: one series for the whole proxy, not one per worker
        assert [v for (name, _), v in direct.items() if name == "tiktok_proxy_requests_in_flight"] == [0.0]

        # The example configuration as shipped, pointed at this proxy, scraping every second.
        (tmp_path / "token").write_text(METRICS_TOKEN)
        config = (RULES / "prometheus.yml").read_text()
        for old, new in [
            ("file: /etc/prometheus/tiktok-proxy-metrics-token", f"file: {tmp_path / 'token'}"),
            ('"127.0.0.1:3333"', f'"127.0.0.1:{port}"'),
            ("scrape_interval: 15s", "scrape_interval: 1s"),
            ("evaluation_interval: 15s", "evaluation_interval: 1s"),
            ("- alerts.yml", f"- {RULES / 'alerts.yml'}"),
        ]:
            assert config.count(old) == 1, old
            config = config.replace(old, new)
        (tmp_path / "prometheus.yml").write_text(config)
        with prometheus_log.open("w") as out:
            started.append(
                subprocess.Popen(
                    [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                    cwd=tmp_path, stdout=out, stderr=out,
                )
            )  # fmt: skip
        total = 'sum(tiktok_proxy_exchanges_total{route="token",outcome="ok"})'
        wait_for("Prometheus to scrape the sum", lambda: prometheus_query(prometheus_port, total) == expected, 60,
                 lambda: f"{prometheus_query(prometheus_port, total)} != {expected}\n{prometheus_log.read_text()}")  # fmt: skip
        assert prometheus_query(prometheus_port, 'up{job="tiktok-proxy"}') == 1
        # The alert rules evaluate against the real series without an error.
        rules = f"http://127.0.0.1:{prometheus_port}/api/v1/rules"

        def rule_health() -> list[str]:
            groups = httpx.get(rules, timeout=5).json()["data"]["groups"]
            return [rule["health"] for group in groups for rule in group["rules"]]

        wait_for("the alert rules to run", lambda: "unknown" not in rule_health(), 30, lambda: str(rule_health()))
        assert rule_health() == ["ok", "ok", "ok"]

        # Workers that end leave the in-flight sum, and their counts stay in the sum. One stops for good
        # (SIGTTOU: one worker fewer) and cleans up after itself; the other is killed and its replacement does.
        def live_gauges() -> list[int]:
            return [pid for pid in workers if (shared / f"gauge_livesum_{pid}.db").exists()]

        proxy.send_signal(signal.SIGTTOU)
        [killed] = wait_for("a worker to stop", lambda: live_gauges() if len(live_gauges()) == 1 else None, 30)
        os.kill(killed, signal.SIGKILL)
        wait_for("the replacement worker", lambda: proxy_log.read_text().count("Application startup complete") == 3,
                 60, proxy_log.read_text)  # fmt: skip
        assert live_gauges() == []
        assert all((shared / f"counter_{pid}.db").exists() for pid in workers)
        with httpx.Client(base_url=url) as client:
            direct, _ = scrape(client)
        assert ok_exchanges(direct) == expected
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(30)
    log = proxy_log.read_text()
    assert "Traceback" not in log and METRICS_TOKEN not in log
    assert not shared.exists(), "the shared directory is removed at exit"


# ------------------------------------------------------------------------------------ alert rules


def test_the_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "install Debian's prometheus package (scripts/setup-tests)"
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run([promtool, *command], cwd=RULES, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    # The example configuration, with its token file where this test can make one.
    (tmp_path / "token").write_text(METRICS_TOKEN)
    config = (RULES / "prometheus.yml").read_text()
    config = config.replace("file: /etc/prometheus/tiktok-proxy-metrics-token", f"file: {tmp_path / 'token'}")
    (tmp_path / "prometheus.yml").write_text(config.replace("- alerts.yml", f"- {RULES / 'alerts.yml'}"))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

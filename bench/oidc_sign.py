"""What the OpenID Connect facade costs: an ID token signature (RS256, ES256), sealing, and a whole /oidc/token.

    .venv/bin/python bench/oidc_sign.py            # about 20 seconds
    .venv/bin/python bench/oidc_sign.py --exchanges 500

1. CPU per operation, in this process: Signer.sign (the facade's own JWS code) with RSA 2048 and 3072 and EC
   P-256 keys, and sealing and unsealing a code (AES-GCM). The median of several rounds.
2. Sequential exchanges over loopback against a real uvicorn proxy and the TikTok stand-in of the tests:
   POST /proxy/token (one TikTok call) and POST /oidc/token (unseal and check the code, TikTok's token call,
   its user-info call, the ID token). Latency medians and p99, one request at a time, so the difference is the
   facade's extra work plus its second call to the stand-in.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from tiktok_proxy.oidc.jose import Signer, generate_pem, private_key_bytes  # noqa: E402
from tiktok_proxy.oidc.sealing import Sealer  # noqa: E402

CLAIMS = {
    "iss": "https://tiktok-oidc.example.com",
    "sub": "afd97af1-b87b-48b9-ac98-410aghda5344",
    "aud": "aw1testclientkey",
    "iat": 1_790_000_000,
    "exp": 1_790_003_600,
    "nonce": "n-0S6_WzA2Mj",
    "name": "Ada on TikTok",
    "picture": "https://p16.example/avatar.jpeg",
    "preferred_username": "ada",
    "profile": "https://www.tiktok.com/@ada",
}


def per_call_us(function: object, rounds: int = 7) -> float:
    timer = timeit.Timer(function)  # type: ignore[arg-type]
    number, _ = timer.autorange()
    return statistics.median(timer.repeat(rounds, number)) / number * 1e6


def signing() -> None:
    keys = {
        "RS256 (RSA 2048)": rsa.generate_private_key(65537, 2048),
        "RS256 (RSA 3072)": rsa.generate_private_key(65537, 3072),
        "ES256 (EC P-256)": ec.generate_private_key(ec.SECP256R1()),
    }
    print("| operation | µs per call |\n| --- | --- |")
    for name, key in keys.items():
        sign = Signer.of(key).sign
        print(f"| ID token signature, {name} | {per_call_us(lambda: sign(CLAIMS)):.0f} |")  # noqa: B023 (called now)
    sealer = Sealer("code", [private_key_bytes(keys["ES256 (EC P-256)"])])
    code = {"c": "aw1testclientkey", "r": "https://app.example/cb", "n": "n", "pc": "x" * 43, "t": "code*" + "a" * 60}
    sealed = sealer.seal({**code, "g": ["user.info.basic"]}, 60)
    print(f"| seal a code (AES-GCM) | {per_call_us(lambda: sealer.seal(code, 60)):.1f} |")
    print(f"| unseal a code | {per_call_us(lambda: sealer.unseal(sealed)):.1f} |")


def exchanges(count: int) -> None:
    import httpx

    from tiktok_proxy.app import create_app
    from tiktok_proxy.config import load_settings

    from conftest import LateApp, ServerThread
    from stand_ins.tiktok import (
        AUTHORIZE_PATH,
        CLIENT_KEY,
        CLIENT_SECRET,
        REDIRECT_URI,
        TOKEN_PATH,
        USER_INFO_PATH,
        TikTokStandIn,
    )

    stand_in = TikTokStandIn()
    with tempfile.TemporaryDirectory() as folder, ServerThread(stand_in.app()) as tiktok:
        key_file = Path(folder) / "key.pem"
        key_file.write_text(generate_pem("rsa"))
        late = LateApp()
        proxy = ServerThread(late)
        settings = load_settings(
            {
                "TIKTOK_TOKEN_URL": tiktok.url + TOKEN_PATH,
                "TIKTOK_AUTHORIZE_URL": tiktok.url + AUTHORIZE_PATH,
                "TIKTOK_USERINFO_URL": tiktok.url + USER_INFO_PATH,
                "ALLOWED_CLIENT_KEYS": CLIENT_KEY,
                "OIDC_SIGNING_KEY_FILE": str(key_file),
                "OIDC_REDIRECT_URIS": "https://app.example/cb",
                "PUBLIC_URL": proxy.url,
                "LOG_LEVEL": "WARNING",
            }
        )
        late.app = create_app(settings)
        assert settings.oidc_key is not None
        codes = Sealer("code", [private_key_bytes(settings.oidc_key)])
        callback = settings.public_url + "/oidc/callback"
        with proxy, httpx.Client(base_url=proxy.url) as http:

            def proxy_token() -> httpx.Response:
                code = stand_in.issue_code(redirect_uri=REDIRECT_URI)
                form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
                return http.post("/proxy/token", data={**form, "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET})

            def oidc_token() -> httpx.Response:
                tiktok_code = stand_in.issue_code(redirect_uri=callback)
                sealed = {"c": CLIENT_KEY, "r": "https://app.example/cb", "n": "n", "pc": None, "t": tiktok_code}
                code = codes.seal({**sealed, "g": ["user.info.basic", "user.info.profile"]}, 60)
                form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://app.example/cb"}
                return http.post("/oidc/token", data={**form, "client_id": CLIENT_KEY, "client_secret": CLIENT_SECRET})

            print("\n| sequential exchange | median ms | p99 ms |\n| --- | --- | --- |")
            for name, call in (("POST /proxy/token", proxy_token), ("POST /oidc/token", oidc_token)):
                for _ in range(30):  # warm up: connections, caches
                    assert call().status_code == 200
                took = []
                for _ in range(count):
                    started = time.perf_counter()
                    answer = call()
                    took.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, answer.text
                took.sort()
                print(f"| {name} | {statistics.median(took):.2f} | {took[int(len(took) * 0.99) - 1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exchanges", type=int, default=300, help="sequential exchanges per route (default 300)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {platform.processor() or _cpu()}, "
          f"Python {platform.python_version()}\n")  # fmt: skip
    signing()
    exchanges(args.exchanges)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()

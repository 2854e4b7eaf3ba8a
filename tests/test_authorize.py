"""GET /proxy/authorize: the optional Authorization URL that puts client_key on TikTok's authorize page."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tiktok_proxy.config import load_settings

from stand_ins.tiktok import CLIENT_KEY, REDIRECT_URI

AUTH0_AUTHORIZE = {  # what Auth0's generic OAuth2 strategy puts on the Authorization URL
    "response_type": "code",
    "redirect_uri": REDIRECT_URI,
    "scope": "user.info.basic user.info.profile",
    "state": "auth0-state-xyz",
    "client_id": CLIENT_KEY,
}


def redirect_params(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "www.tiktok.com", "/v2/auth/authorize/")
    return parse_qs(location.query)


def test_redirects_to_tiktok_with_client_key_and_comma_scopes(client: httpx.Client) -> None:
    response = client.get(
        "/proxy/authorize", params={**AUTH0_AUTHORIZE, "code_challenge": "ab12", "code_challenge_method": "S256"}
    )
    assert redirect_params(response) == {
        "client_key": [CLIENT_KEY],
        "response_type": ["code"],
        "redirect_uri": [REDIRECT_URI],
        "scope": ["user.info.basic,user.info.profile"],
        "state": ["auth0-state-xyz"],
        "code_challenge": ["ab12"],
        "code_challenge_method": ["S256"],
    }
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    "scope",
    ["user.info.basic,user.info.profile", "user.info.basic, user.info.profile", " user.info.basic  user.info.profile "],
)
def test_any_scope_separator_becomes_commas(client: httpx.Client, scope: str) -> None:
    response = client.get("/proxy/authorize", params={**AUTH0_AUTHORIZE, "scope": scope})
    assert redirect_params(response)["scope"] == ["user.info.basic,user.info.profile"]


def test_a_client_secret_never_reaches_the_browser_url(client: httpx.Client) -> None:
    response = client.get("/proxy/authorize", params={**AUTH0_AUTHORIZE, "client_secret": "oops"})
    assert "client_secret" not in redirect_params(response)
    assert "oops" not in response.headers["location"]


@pytest.mark.parametrize(
    "params",
    [
        {**AUTH0_AUTHORIZE, "redirect": "https://evil.example/"},
        {**AUTH0_AUTHORIZE, "authorize_url": "https://evil.example/"},
        {**AUTH0_AUTHORIZE, "redirect_uri": "https://evil.example/callback"},
    ],
)
def test_the_redirect_only_ever_goes_to_tiktok(client: httpx.Client, params: dict[str, str]) -> None:
    # TikTok itself checks redirect_uri against the registered list; the proxy only ever sends the browser to TikTok.
    redirect_params(client.get("/proxy/authorize", params=params))


@pytest.mark.parametrize(
    ("query", "status", "error", "fragment"),
    [
        ("response_type=code&scope=user.info.basic", 400, "invalid_request", "client_id"),
        (f"client_id={CLIENT_KEY}&state=a&state=b", 400, "invalid_request", "state is repeated"),
        (f"client_id={CLIENT_KEY}&client_key=other", 400, "invalid_request", "differ"),
        (f"client_id={CLIENT_KEY}&state=%ff", 400, "invalid_request", "UTF-8"),
    ],
)
def test_bad_authorize_requests_get_a_json_error(
    client: httpx.Client, query: str, status: int, error: str, fragment: str
) -> None:
    response = client.get(f"/proxy/authorize?{query}")
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and fragment in body["error_description"]


def test_the_allow_list_applies_to_authorize(proxy_with) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(allowed_client_keys=frozenset({CLIENT_KEY}))
    refused = client.get("/proxy/authorize", params={**AUTH0_AUTHORIZE, "client_id": "stranger"})
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    redirect_params(client.get("/proxy/authorize", params=AUTH0_AUTHORIZE))


@pytest.mark.parametrize(
    ("scope", "sent"),
    [
        # Connected Accounts asks for OpenID Connect's scopes beside the connection's, with spaces or commas.
        ("openid profile offline_access user.info.basic,user.info.profile", "user.info.basic,user.info.profile"),
        ("user.info.basic,openid,email", "user.info.basic"),
        ("user.info.basic user.info.basic", "user.info.basic"),
        # Nothing TikTok knows is left: TIKTOK_SCOPES.
        ("openid profile email offline_access", "user.info.basic,video.list"),
        (",  ,", "user.info.basic,video.list"),
    ],
)
def test_only_tiktok_scopes_reach_tiktok(proxy_with, scope: str, sent: str) -> None:  # type: ignore[no-untyped-def]
    client = proxy_with(scopes="user.info.basic,video.list")
    assert redirect_params(client.get("/proxy/authorize", params={**AUTH0_AUTHORIZE, "scope": scope}))["scope"] == [
        sent
    ]


def test_without_a_scope_tiktok_gets_tiktok_scopes(client: httpx.Client) -> None:
    params = {name: value for name, value in AUTH0_AUTHORIZE.items() if name != "scope"}
    assert redirect_params(client.get("/proxy/authorize", params=params))["scope"] == ["user.info.basic"]


def test_tiktok_scopes_is_read_comma_or_space_separated() -> None:
    assert (
        load_settings({"TIKTOK_SCOPES": " user.info.basic  user.info.profile,"}).scopes
        == "user.info.basic,user.info.profile"
    )
    assert load_settings({}).scopes == "user.info.basic"

"""OAuth2 error answers (RFC 6749 §5.2). Every refusal and failure the proxy reports is an OAuthError."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


# Built once: json.dumps builds an encoder at every call that asks for anything but the defaults.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def json_bytes(content: Any) -> bytes:
    """JSON as every answer of the proxy renders it (the same bytes as Starlette's JSONResponse)."""
    return _ENCODER.encode(content).encode()


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer. Descriptions are written here and never carry a secret."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        log_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.log_id = log_id
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        body = {"error": self.error, "error_description": self.description}
        if self.log_id:
            body["log_id"] = self.log_id  # TikTok support asks for it
        return body

    def answer_headers(self) -> dict[str, str]:
        headers = {**NO_STORE, **self.headers}
        if self.status == 401:
            headers.setdefault("WWW-Authenticate", 'Basic realm="tiktok-token-proxy"')
        return headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.answer_headers())


def invalid_request(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description)


def missing(name: str) -> OAuthError:
    return invalid_request(f"missing required parameter: {name}")

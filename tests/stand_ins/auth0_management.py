"""A local stand-in for the parts of Auth0's Management API the CLI uses, behaving as Auth0 documents them.

- POST /oauth/token: client-credentials grant; the token carries the scopes the test granted.
- /api/v2/connections (GET by name, POST), /api/v2/connections/{id} (PATCH replaces `options` wholesale),
  /api/v2/connections/{id}/clients (GET, PATCH).
- /api/v2/users/{id} (GET with identities and, given read:user_idp_tokens, their tokens; DELETE).
- 401 for a bad token, 403 for a missing scope, 409 on a name clash, 429 with Retry-After when asked.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MGMT_CLIENT_ID = "m2m-client-id"
MGMT_CLIENT_SECRET = "m2m-Client-Secret-value-123"
ALL_SCOPES = frozenset(
    {
        "read:connections",
        "create:connections",
        "update:connections",
        "read:users",
        "read:user_idp_tokens",
        "delete:users",
    }
)


@dataclass
class Auth0StandIn:
    scopes: set[str] = field(default_factory=lambda: set(ALL_SCOPES))
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    enabled: dict[str, set[str]] = field(default_factory=dict)  # connection id -> client ids
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, set[str]] = field(default_factory=dict)  # issued token -> its scopes
    writes: list[str] = field(default_factory=list)  # "POST /api/v2/connections", ...
    rate_limited: bool = False
    listing_lags: bool = False  # a connection exists but the by-name listing does not show it yet

    def add_connection(self, name: str, options: dict[str, Any], strategy: str = "oauth2") -> str:
        connection_id = f"con_{secrets.token_hex(8)}"
        self.connections[connection_id] = {"id": connection_id, "name": name, "strategy": strategy, "options": options}
        self.enabled[connection_id] = set()
        return connection_id

    # ---- the API

    async def token(self, request: Request) -> Response:
        body = await request.json()
        if (body.get("client_id"), body.get("client_secret")) != (MGMT_CLIENT_ID, MGMT_CLIENT_SECRET):
            return JSONResponse({"error": "access_denied", "error_description": "Unauthorized"}, status_code=401)
        if body.get("grant_type") != "client_credentials" or not str(body.get("audience", "")).endswith("/api/v2/"):
            return JSONResponse({"error": "invalid_request", "error_description": "bad audience"}, status_code=403)
        token = f"mgmt.{secrets.token_urlsafe(16)}"
        self.tokens[token] = set(self.scopes)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": 86400, "scope": " ".join(sorted(self.scopes))}
        )

    def refuse(self, request: Request, needs: str) -> Response | None:
        if self.rate_limited:
            return error(429, "Too Many Requests", "Global limit has been reached", headers={"Retry-After": "7"})
        scopes = self.tokens.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        if scopes is None:
            return error(401, "Unauthorized", "Invalid token")
        if needs not in scopes:
            return error(403, "Forbidden", f"Insufficient scope, expected any of: {needs}", "insufficient_scope")
        return None

    async def connections_route(self, request: Request) -> Response:
        if request.method == "GET":
            if refusal := self.refuse(request, "read:connections"):
                return refusal
            name = request.query_params.get("name")
            found = [copy.deepcopy(c) for c in self.connections.values() if name is None or c["name"] == name]
            return JSONResponse([] if self.listing_lags else found)
        if refusal := self.refuse(request, "create:connections"):
            return refusal
        body = await request.json()
        if any(c["name"] == body["name"] for c in self.connections.values()):
            return error(409, "Conflict", "A connection with the same name already exists", "connection_conflicts")
        self.writes.append("POST /api/v2/connections")
        connection_id = self.add_connection(body["name"], body.get("options", {}), body.get("strategy", ""))
        return JSONResponse(copy.deepcopy(self.connections[connection_id]), status_code=201)

    async def connection_route(self, request: Request) -> Response:
        if refusal := self.refuse(request, "update:connections"):
            return refusal
        connection = self.connections.get(request.path_params["id"])
        if connection is None:
            return error(404, "Not Found", "The connection does not exist")
        body = await request.json()
        self.writes.append("PATCH /api/v2/connections/{id}")
        if "options" in body:
            connection["options"] = body["options"]  # wholesale, as Auth0 does
        return JSONResponse(copy.deepcopy(connection))

    async def clients_route(self, request: Request) -> Response:
        connection_id = request.path_params["id"]
        if request.method == "GET":
            if refusal := self.refuse(request, "read:connections"):
                return refusal
            # Checkpoint pagination, as Auth0 pages it: `take` (default 50), then `from` = the last page's `next`.
            every = sorted(self.enabled.get(connection_id, set()))
            start, take = int(request.query_params.get("from") or 0), int(request.query_params.get("take") or 50)
            page = [{"client_id": client} for client in every[start : start + take]]
            more = start + take < len(every)
            return JSONResponse({"clients": page, **({"next": str(start + take)} if more else {})})
        if refusal := self.refuse(request, "update:connections"):
            return refusal
        self.writes.append("PATCH /api/v2/connections/{id}/clients")
        for change in await request.json():
            (self.enabled[connection_id].add if change["status"] else self.enabled[connection_id].discard)(
                change["client_id"]
            )
        return Response(status_code=204)

    async def user_route(self, request: Request) -> Response:
        user_id = request.path_params["id"]
        if request.method == "DELETE":
            if refusal := self.refuse(request, "delete:users"):
                return refusal
            self.writes.append("DELETE /api/v2/users/{id}")
            self.users.pop(user_id, None)
            return Response(status_code=204)
        if refusal := self.refuse(request, "read:users"):
            return refusal
        user = copy.deepcopy(self.users.get(user_id))
        if user is None:
            return error(404, "Not Found", "The user does not exist.", "inexistent_user")
        if "read:user_idp_tokens" not in self.tokens[request.headers["authorization"].removeprefix("Bearer ")]:
            for identity in user["identities"]:  # Auth0 leaves the IdP tokens out without this scope
                identity.pop("access_token", None)
                identity.pop("refresh_token", None)
        return JSONResponse(user)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/token", self.token, methods=["POST"]),
                Route("/api/v2/connections", self.connections_route, methods=["GET", "POST"]),
                Route("/api/v2/connections/{id}", self.connection_route, methods=["PATCH"]),
                Route("/api/v2/connections/{id}/clients", self.clients_route, methods=["GET", "PATCH"]),
                Route("/api/v2/users/{id}", self.user_route, methods=["GET", "DELETE"]),
            ]
        )


def error(status: int, name: str, message: str, code: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"statusCode": status, "error": name, "message": message, **({"errorCode": code} if code else {})}
    return JSONResponse(body, status_code=status, headers=headers)

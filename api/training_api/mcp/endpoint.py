"""``POST /mcp``: streamable HTTP, stateless (any replica answers any call), one SSE response
per call so that progress notifications travel with it. The bearer token is checked first,
exactly as on every HTTP route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from training_api.auth import Authenticator
from training_api.errors import ApiError, error_response, unavailable
from training_api.mcp.server import build_server

PATH = "/mcp"


class McpEndpoint:
    def __init__(self, server: Server[Any, Any], authenticator: Authenticator) -> None:
        self._server = server
        self._authenticator = authenticator
        self._sessions: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """For the app's lifespan. A session manager runs once, so each start gets its own."""
        sessions = StreamableHTTPSessionManager(self._server, stateless=True)
        async with sessions.run():
            self._sessions = sessions
            try:
                yield
            finally:
                self._sessions = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            # The tools read the caller's name from here (for rate limits and logs).
            request.state.client = self._authenticator.client_of(
                request.headers.get("authorization")
            )
            sessions = self._running()
        except ApiError as refusal:
            await error_response(refusal)(scope, receive, send)
            return
        await sessions.handle_request(scope, receive, send)

    def _running(self) -> StreamableHTTPSessionManager:
        if self._sessions is None:
            raise unavailable("not_ready", "the MCP endpoint is not running yet")
        return self._sessions


def mount_mcp(app: FastAPI) -> McpEndpoint:
    """Serve MCP at ``/mcp`` with the app's service and tokens; run ``endpoint.running()``
    in the app's lifespan."""
    endpoint = McpEndpoint(build_server(app.state.service), app.state.authenticator)
    # POST only: a stateless server has nothing to push on a standalone GET stream.
    app.router.routes.append(Route(PATH, endpoint, methods=["POST"], include_in_schema=False))
    return endpoint

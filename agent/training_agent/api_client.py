"""A small client of the agent's HTTP API (start, status, cancel), for the command line.

Every refusal the API sends has one shape, ``{"success": false, "error": {"code",
"message"}}``; it arrives here as :class:`ApiRefused` with that code and message.
"""

from __future__ import annotations

from typing import Any

import httpx

from training_core.errors import AgentError

# Worth waiting out: the store or launcher is briefly away, or the rate limit was reached.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


class ApiRefused(AgentError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES


class ApiUnreachable(AgentError):
    """No answer at all: the API is not running there, or the network failed."""


def refusal_of(status: int, body: Any) -> ApiRefused:
    """The API's error code and message, or a stand-in when the body is not the API's shape
    (a proxy's error page, say)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "code" in error:
        return ApiRefused(status, str(error["code"]), str(error.get("message", "")))
    return ApiRefused(status, "http_error", f"unexpected answer with HTTP status {status}")


class TrainingApi:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def start(self, project_id: str) -> dict[str, Any]:
        return self._call("POST", "/agents/training/start", json={"project_id": project_id})

    def status(self, project_id: str, logs: int = 5) -> dict[str, Any]:
        return self._call("GET", f"/agents/training/status/{project_id}", params={"logs": logs})

    def cancel(self, project_id: str) -> dict[str, Any]:
        return self._call("POST", f"/agents/training/cancel/{project_id}")

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **request: Any) -> dict[str, Any]:
        try:
            answer = self._http.request(method, path, **request)
        except httpx.TransportError as error:
            raise ApiUnreachable(f"no answer from the API at {self.base_url}: {error}") from None
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.is_success and isinstance(body, dict):
            return body
        raise refusal_of(answer.status_code, body)

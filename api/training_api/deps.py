"""Dependencies of the routes, as ``Annotated`` aliases (the FastAPI template's style).

They are ``async`` although they never await: none blocks, and FastAPI runs a plain ``def``
dependency in its thread pool, a hand-off per dependency per request that the busiest
endpoint (``/status``) paid three times."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from training_api.errors import ApiError
from training_api.service import TrainingService


async def get_service(request: Request) -> TrainingService:
    return request.app.state.service


async def authenticated_client(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str | None:
    return request.app.state.authenticator.client_of(authorization)


async def rate_limited_client(
    request: Request, client: Annotated[str | None, Depends(authenticated_client)]
) -> str | None:
    """Authenticated, then counted against the client's budget."""
    count_against_rate_limit(request, client)
    return client


def count_against_rate_limit(request: Request, client: str | None) -> None:
    """One request against the client's budget (anonymous: its address); 429 when spent."""
    key = client or (request.client.host if request.client else "unknown")
    wait = request.app.state.rate_limiter.retry_after(key)
    if wait:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests; retry in {wait} s",
            {"Retry-After": str(wait)},
        )


ServiceDep = Annotated[TrainingService, Depends(get_service)]
LimitedClientDep = Annotated[str | None, Depends(rate_limited_client)]

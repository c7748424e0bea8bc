"""``/health`` (liveness, open), ``/ready`` (store and launcher, open for probes), ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from training_core.errors import AgentError
from training_api.deps import authenticated_client
from training_api.errors import unavailable
from training_api.schemas import ErrorResponse, HealthResponse

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthResponse, summary="Liveness (no dependencies)")
def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="Readiness: the store and the launcher answer",
    responses={503: {"model": ErrorResponse, "description": "Not ready (see Retry-After)"}},
)
def ready(request: Request) -> HealthResponse:
    service = request.app.state.service
    for name, check in (("store", service.store.ping), ("launcher", service.launcher.ping)):
        try:
            check()
        except AgentError as error:
            log.warning("not ready: %s: %s", name, error)
            raise unavailable("not_ready", f"the {name} is unavailable") from None
    return HealthResponse(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics (bearer token required)",
    dependencies=[Depends(authenticated_client)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorResponse}},
)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

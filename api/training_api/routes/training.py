"""``/agents/training/*``: start, status, cancel, the runs list and a model's metrics (thin:
the service decides)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel

from training_api.deps import LimitedClientDep, ServiceDep, authenticated_client
from training_api.schemas import (
    CancelResponse,
    ErrorResponse,
    MetricsResponse,
    RunsResponse,
    RunSummary,
    StartRequest,
    StartResponse,
    StatusResponse,
)

# A string, checked by the service: a malformed id is a 400 that names the problem.
ProjectId = Annotated[
    str, Path(description="The project's id (a UUID).", json_schema_extra={"format": "uuid"})
]

ERRORS = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Invalid id, metadata, dataset URL or project status",
        401: "Missing or invalid bearer token",
        404: "Project, dataset or metrics not found",
        409: "No active run, or the run ended meanwhile",
        422: "Request does not match the schema or bounds",
        429: "Rate limit reached (see Retry-After)",
        503: "Store, launcher or bucket unavailable (see Retry-After)",
    }.items()
}


def json_answer(body: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    """The body serialized once by pydantic: the model was built and checked already, so the
    route skips FastAPI's second validation pass (``response_model`` still documents it)."""
    return Response(body.model_dump_json(), status_code, media_type="application/json")


router = APIRouter(
    prefix="/agents/training",
    tags=["training"],
    dependencies=[Depends(authenticated_client)],
    responses=ERRORS,
)


@router.post(
    "/start",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StartResponse,
    summary="Start training a project",
    responses={
        200: {"model": StartResponse, "description": "The project's active run (no new run)"}
    },
)
def start_training(body: StartRequest, service: ServiceDep, client: LimitedClientDep) -> Response:
    started = service.start(body.project_id, body.overrides())
    answer = StartResponse.of(started, service.settings.public_base_url)
    return json_answer(answer, status.HTTP_202_ACCEPTED if started.created else status.HTTP_200_OK)


@router.get(
    "/status/{project_id}", response_model=StatusResponse, summary="A project's training status"
)
def training_status(
    project_id: ProjectId,
    service: ServiceDep,
    logs: Annotated[
        int | None, Query(ge=0, description="How many agent_logs lines (newest first)")
    ] = None,
) -> Response:
    found = service.status(
        project_id, service.settings.status_logs_default if logs is None else logs
    )
    return json_answer(StatusResponse.of(found))


@router.post(
    "/cancel/{project_id}", response_model=CancelResponse, summary="Cancel a project's active run"
)
def cancel_training(
    project_id: ProjectId, service: ServiceDep, client: LimitedClientDep
) -> Response:
    run, project = service.cancel(project_id)
    return json_answer(CancelResponse.of(run, project))


MAX_LISTED_RUNS = 100


@router.get("/runs", response_model=RunsResponse, summary="The newest runs of all projects")
def recent_runs(
    service: ServiceDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LISTED_RUNS, description="How many runs, newest first")
    ] = 20,
) -> Response:
    runs = service.recent_runs(limit)
    return json_answer(RunsResponse(runs=[RunSummary.of(item) for item in runs]))


@router.get(
    "/metrics/{project_id}",
    response_model=MetricsResponse,
    summary="The metrics of the model the project's latest run trained",
    responses={502: {"model": ErrorResponse, "description": "The metrics file is not valid"}},
)
def model_metrics(project_id: ProjectId, service: ServiceDep) -> Response:
    return json_answer(MetricsResponse.of(service.model_metrics(project_id)))

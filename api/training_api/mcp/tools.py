"""The tools: what each takes, answers and promises, and a thin call into the service.

Every decision stays in the service and :mod:`training_api.decisions`; a tool only picks the
service call, runs it off the event loop and shapes the answer the HTTP API would give.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
from mcp.types import Tool, ToolAnnotations
from pydantic import BaseModel
from starlette.requests import Request

from training_core.runspec import SUPPORTED_MODELS
from training_core.settings import Settings
from training_api import decisions
from training_api.deps import count_against_rate_limit
from training_api.errors import ApiError
from training_api.mcp import models
from training_api.schemas import (
    CancelResponse,
    MetricsResponse,
    ProgressView,
    RunView,
    StartRequest,
    StartResponse,
    StatusResponse,
    set_maximum,
)
from training_api.service import TrainingService

T = TypeVar("T")
Reporter = Callable[[float, float | None, str], Awaitable[None]]


@dataclass(frozen=True)
class ToolCall:
    """What a tool gets from the call that runs it."""

    service: TrainingService
    request: Request  # the HTTP request that carried the call
    client: str | None
    report_progress: Reporter
    dataset_checks: anyio.CapacityLimiter
    poll_seconds: float

    @property
    def settings(self) -> Settings:
        return self.service.settings

    async def blocking(
        self, work: Callable[..., T], *args: Any, limiter: anyio.CapacityLimiter | None = None
    ) -> T:
        """The service talks to the store and the bucket synchronously: keep the loop free."""
        return await anyio.to_thread.run_sync(partial(work, *args), limiter=limiter)

    def count_against_rate_limit(self) -> None:
        """The budget POST /start and /cancel draw from, per client: 429 ``rate_limited``."""
        count_against_rate_limit(self.request, self.client)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input: type[BaseModel]
    output: type[BaseModel]
    annotations: ToolAnnotations
    run: Callable[[ToolCall, Any], Awaitable[BaseModel]]
    # Input fields whose upper bound is a setting, written into the schema clients read.
    bounds: Mapping[str, Callable[[Settings], int]] = field(default_factory=dict)

    def listing(self, settings: Settings) -> Tool:
        schema = self.input.model_json_schema()
        for name, bound in self.bounds.items():
            set_maximum(schema["properties"][name], bound(settings))
        return Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            inputSchema=schema,
            outputSchema=self.output.model_json_schema(mode="serialization"),
            annotations=self.annotations,
        )


# -- the tools -------------------------------------------------------------------------------
async def start_training(call: ToolCall, request: StartRequest) -> StartResponse:
    call.count_against_rate_limit()
    started = await call.blocking(call.service.start, request.project_id, request.overrides())
    return StartResponse.of(started, call.settings.public_base_url)


async def get_training_status(call: ToolCall, query: models.StatusInput) -> StatusResponse:
    logs = call.settings.status_logs_default if query.logs is None else query.logs
    return StatusResponse.of(await call.blocking(call.service.status, query.project_id, logs))


async def wait_for_training(call: ToolCall, query: models.WaitInput) -> models.WaitResponse:
    await _follow(call, query.project_id, deadline=time.monotonic() + query.timeout_seconds)
    final = await call.blocking(
        call.service.status, query.project_id, call.settings.status_logs_default
    )
    return models.WaitResponse.of(final)


async def _follow(call: ToolCall, project_id: str, deadline: float) -> None:
    """Poll until the run ends or the deadline passes, telling the client what changed."""
    reported = None
    while True:
        found = await call.blocking(call.service.status, project_id, 0)
        run = decisions.awaited(found.run)
        notice = progress_notice(StatusResponse.of(found))
        if notice != reported:  # a phase, an epoch, a loss or an accuracy changed
            await call.report_progress(*notice)
            reported = notice
        left = deadline - time.monotonic()
        if run.phase.is_terminal or left <= 0:
            return
        await anyio.sleep(min(call.poll_seconds, left))


def progress_notice(status: StatusResponse) -> tuple[float, float | None, str]:
    """(epochs done, total epochs, "running: epoch 3/10, loss 0.4100, val accuracy 0.870, …")."""
    progress: ProgressView = status.progress
    # Before the first epoch reports, the run's planned epochs are the total.
    total = progress.total_epochs or (status.run.epochs if status.run else None)
    details = []
    if progress.epoch is not None:
        details.append(f"epoch {progress.epoch}/{total or '?'}")
    if progress.loss is not None:
        details.append(f"loss {progress.loss:.4f}")
    if progress.val_accuracy is not None:
        details.append(f"val accuracy {progress.val_accuracy:.3f}")
    if progress.eta_seconds is not None and status.status == "running":
        details.append(f"ETA {progress.eta_seconds:.0f} s")
    message = f"{status.status}: {', '.join(details)}" if details else status.status
    return float(progress.epoch or 0), total, message


async def cancel_training(call: ToolCall, order: models.CancelInput) -> CancelResponse:
    if not order.confirm:
        raise ApiError(
            400,
            "confirmation_required",
            "cancel_training stops the run and its progress is lost; the run goes on."
            " Call again with confirm: true to cancel it.",
        )
    call.count_against_rate_limit()
    run, project = await call.blocking(call.service.cancel, order.project_id)
    return CancelResponse.of(run, project)


async def list_training_runs(call: ToolCall, query: models.RunsInput) -> models.RunList:
    project, runs = await call.blocking(call.service.runs, query.project_id, query.limit)
    return models.RunList(project_id=project.id, runs=[RunView.of(run) for run in runs])


async def list_models(call: ToolCall, query: models.ProjectInput) -> models.ModelList:
    project, records = await call.blocking(call.service.models, query.project_id)
    return models.ModelList(
        project_id=project.id, models=[models.ModelView.of(record) for record in records]
    )


async def get_model_metrics(call: ToolCall, query: models.ProjectInput) -> MetricsResponse:
    return MetricsResponse.of(await call.blocking(call.service.model_metrics, query.project_id))


async def check_dataset(call: ToolCall, query: models.ProjectInput) -> models.DatasetCheck:
    call.count_against_rate_limit()  # downloads and decodes a whole archive
    checked = await call.blocking(
        call.service.check_dataset, query.project_id, limiter=call.dataset_checks
    )
    return models.DatasetCheck.of(checked)


async def list_supported_models(call: ToolCall, _: models.NoInput) -> models.SupportedModels:
    return models.SupportedModels(
        models=list(SUPPORTED_MODELS), default_model=call.settings.default_model
    )


def _hints(
    *, read_only: bool, destructive: bool = False, idempotent: bool = True
) -> ToolAnnotations:
    return ToolAnnotations(
        readOnlyHint=read_only,
        destructiveHint=destructive,
        idempotentHint=idempotent,
        openWorldHint=False,  # the agent's own projects and runs, nothing beyond
    )


PROJECT_ERRORS = (
    "Refusals are tool errors whose text is"
    ' {"success": false, "error": {"code": ..., "message": ...}} with the HTTP API\'s codes'
    " (invalid_project_id, project_not_found, …)."
)

TOOLS = (
    ToolSpec(
        name="start_training",
        title="Start training",
        description=(
            "Start training an image classifier for a project (a UUID) on its newest dataset."
            " The project must be pending_training, an image_classification/pytorch project."
            " model, epochs, learning_rate, batch_size, gpus (per node) and nodes are optional"
            " and win over the project's metadata; leave them out to use its defaults. Safe to repeat: while the"
            " project has an active run, the call returns that run (created: false) and starts"
            " nothing. Then follow it with wait_for_training or get_training_status. "
            + PROJECT_ERRORS
        ),
        input=StartRequest,
        output=StartResponse,
        annotations=_hints(read_only=False),
        run=start_training,
        bounds={
            "epochs": lambda s: s.max_epochs,
            "batch_size": lambda s: s.max_batch_size,
            "gpus": lambda s: s.max_gpus_per_node,
            "nodes": lambda s: s.max_nodes,
        },
    ),
    ToolSpec(
        name="get_training_status",
        title="Training status",
        description=(
            "A project's latest training run right now: its phase (queued, pending, running,"
            " succeeded, failed, cancelled, or not_started), progress (epoch/total_epochs,"
            " loss, val_accuracy, eta_seconds), history (every finished epoch's loss, val_loss,"
            " val_accuracy, images_per_second), the model URL and the newest log lines."
            " Answers at once; use wait_for_training to wait for the end. " + PROJECT_ERRORS
        ),
        input=models.StatusInput,
        output=StatusResponse,
        annotations=_hints(read_only=True),
        run=get_training_status,
        bounds={"logs": lambda s: s.status_logs_max},
    ),
    ToolSpec(
        name="wait_for_training",
        title="Wait for training to end",
        description=(
            "Wait until the project's latest run ends (succeeded, failed or cancelled) or"
            " timeout_seconds pass, sending progress notifications (epoch of total epochs, with"
            " loss and validation accuracy) as they change. Answers with the status:"
            " finished is true when the run ended, with model_url set when it succeeded;"
            " false on timeout (call again to keep waiting). Waiting changes nothing. "
            + PROJECT_ERRORS
        ),
        input=models.WaitInput,
        output=models.WaitResponse,
        annotations=_hints(read_only=True),
        run=wait_for_training,
    ),
    ToolSpec(
        name="cancel_training",
        title="Cancel training",
        description=(
            "Stop a project's active run for good: the trainer is stopped, the run becomes"
            " cancelled and the project goes back to pending_training; the progress is lost."
            " Only when the user asked for it: the call is refused unless confirm is true."
            " Refused with no_active_run when nothing is running. " + PROJECT_ERRORS
        ),
        input=models.CancelInput,
        output=CancelResponse,
        annotations=_hints(read_only=False, destructive=True),
        run=cancel_training,
    ),
    ToolSpec(
        name="list_training_runs",
        title="List training runs",
        description=(
            "A project's training runs, newest first, each with its phase, attempt, model,"
            " epochs, model URL, error and timestamps. " + PROJECT_ERRORS
        ),
        input=models.RunsInput,
        output=models.RunList,
        annotations=_hints(read_only=True),
        run=list_training_runs,
    ),
    ToolSpec(
        name="list_models",
        title="List trained models",
        description=(
            "The models a project's runs have trained, oldest first: each model's URL in the"
            " bucket and what the trainer recorded (architecture, classes, accuracy). "
            + PROJECT_ERRORS
        ),
        input=models.ProjectInput,
        output=models.ModelList,
        annotations=_hints(read_only=True),
        run=list_models,
    ),
    ToolSpec(
        name="get_model_metrics",
        title="Model metrics",
        description=(
            "The metrics of the model the project's latest run trained, once it succeeded:"
            " the confusion matrix (rows: true class, columns: predicted class) with the class"
            " names, validation and test accuracy, losses, training time and every epoch's"
            " history, read from the metrics file next to the model. Refused with"
            " metrics_not_found while the run has no model. " + PROJECT_ERRORS
        ),
        input=models.ProjectInput,
        output=MetricsResponse,
        annotations=_hints(read_only=True),
        run=get_model_metrics,
    ),
    ToolSpec(
        name="check_dataset",
        title="Check a project's dataset",
        description=(
            "Check the project's newest dataset as a training run would, without training:"
            " download the archive, extract it safely, check the ImageFolder layout"
            " (train/<class>/, val/<class>/, optional test/), the class count the project"
            " expects and every image. valid is false with the problem (what to fix) when a"
            " run would refuse it. Takes as long as downloading and reading the archive. "
            + PROJECT_ERRORS
        ),
        input=models.ProjectInput,
        output=models.DatasetCheck,
        annotations=_hints(read_only=True),
        run=check_dataset,
    ),
    ToolSpec(
        name="list_supported_models",
        title="Supported architectures",
        description="The architectures start_training accepts as model, and the default one.",
        input=models.NoInput,
        output=models.SupportedModels,
        annotations=_hints(read_only=True),
        run=list_supported_models,
    ),
)

"""The start/cancel decisions, and what the status, runs and metrics answers show, as plain
functions: no I/O, so every rule is tested directly.

Project metadata keys read (request values win over them; settings give the defaults): those
of :class:`training_core.runspec.TrainingMetadata`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError
from training_core.blobs import parse_url
from training_core.domain import (
    Dataset,
    EpochPoint,
    ModelRecord,
    Phase,
    ProgressSummary,
    Project,
    Run,
    run_name,
)
from training_core.errors import InvalidInput
from training_core.runspec import (
    METRICS_SUFFIX,
    MIN_CLASSES,
    SUPPORTED_MODELS,
    Bounds,
    RunSpec,
    TrainingMetadata,
    batch_split_problem,
    bounds_of,
    default_of,
    default_resources,
    model_sibling,
    model_url_for,
)
from training_core.settings import Settings

from training_api.errors import ApiError

TASK_TYPE = "image_classification"
FRAMEWORK = "pytorch"


@dataclass(frozen=True)
class TrainingChoice:
    """What a run will do, decided from the request, the project and the settings."""

    model: str
    epochs: int
    learning_rate: float
    batch_size: int
    image_size: int
    pretrained: bool
    seed: int | None
    dataset_url: str
    gpus: int | None = None  # per node; None: the deployment's DEFAULT_GPU_COUNT
    nodes: int = 1


def parse_project_id(text: str) -> UUID:
    try:
        return UUID(text)
    except (ValueError, TypeError):
        raise ApiError(400, "invalid_project_id", "project_id must be a UUID") from None


def phase_label(phase: Phase) -> str:
    return phase.value.lower()


# (name, check, what is required) for every numeric choice: RunSpec's bounds, narrowed by the
# deployment's MAX_EPOCHS and MAX_BATCH_SIZE.
def _rules(settings: Settings) -> list[tuple[str, Callable[[Any], bool], str]]:
    narrower = {"epochs": settings.max_epochs, "batch_size": settings.max_batch_size}
    rules = []
    for name in ("epochs", "learning_rate", "batch_size", "image_size", "seed"):
        bounds = bounds_of(name, at_most=narrower.get(name))
        optional = name == "seed"
        rules.append((name, _admits(bounds, optional), bounds.requirement()))
    rules.insert(
        4, ("num_classes", lambda v: v is None or v >= MIN_CLASSES, f"at least {MIN_CLASSES}")
    )
    for name, low, high in (
        ("gpus", 0, settings.max_gpus_per_node),
        ("nodes", 1, settings.max_nodes),
    ):
        rules.append((name, _within(low, high), f"between {low} and {high}"))
    return rules


def _within(low: int, high: int) -> Callable[[Any], bool]:
    def admits(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return admits


def _admits(bounds: Bounds, optional: bool) -> Callable[[Any], bool]:
    return lambda value: (optional and value is None) or (value is not None and bounds.admits(value))


def resolve_training(
    project: Project, dataset: Dataset, overrides: Mapping[str, Any], settings: Settings
) -> TrainingChoice:
    """Check the project and its dataset and decide the run's parameters, or refuse."""
    check_project_kind(project)
    metadata = _metadata(project)
    defaults = {
        "model": settings.default_model,
        "epochs": settings.default_epochs,
        "learning_rate": settings.default_learning_rate,
        "batch_size": settings.batch_size,
        "image_size": settings.image_size,
        "pretrained": default_of("pretrained"),
        "gpus": settings.default_gpu_count,
        "nodes": 1,
    }
    values: dict[str, Any] = {**defaults, **metadata, **dict(overrides)}
    for name, ok, requirement in _rules(settings):
        if not ok(values.get(name)):
            raise _bad_value(name, values[name], requirement, from_request=name in overrides)
    if values["nodes"] > 1 and settings.launcher == "local":
        raise _bad_value(
            "nodes", values["nodes"], "1 with the local launcher (it trains on this machine)",
            from_request="nodes" in overrides,
        )  # fmt: skip
    world_size = values["nodes"] * max(values["gpus"], 1)
    if problem := batch_split_problem(values["batch_size"], world_size):
        asked = any(name in overrides for name in ("batch_size", "gpus", "nodes"))
        gpus = f"{values['gpus']} GPUs"
        shape = f" ({values['nodes']} nodes × {gpus})" if values["nodes"] > 1 else f" ({gpus})"
        raise _split_refusal(problem + shape, from_request=asked)
    if values["model"] not in SUPPORTED_MODELS:
        source = "requested" if "model" in overrides else "in the project metadata"
        raise ApiError(
            400,
            "unsupported_model",
            f"model {values['model']!r} {source} is not supported; use one of "
            + ", ".join(SUPPORTED_MODELS),
        )
    return TrainingChoice(
        model=values["model"],
        epochs=values["epochs"],
        learning_rate=float(values["learning_rate"]),
        batch_size=values["batch_size"],
        image_size=values["image_size"],
        pretrained=values["pretrained"],
        seed=values.get("seed"),
        dataset_url=check_dataset_url(dataset),
        gpus=values["gpus"],
        nodes=values["nodes"],
    )


def _split_refusal(problem: str, *, from_request: bool) -> ApiError:
    if from_request:
        return ApiError(422, "invalid_parameter", problem)
    return ApiError(400, "invalid_metadata", f"project metadata {problem}")


def check_project_kind(project: Project) -> None:
    if (project.task_type or "").lower() != TASK_TYPE:
        raise ApiError(
            400,
            "unsupported_task_type",
            f"project task_type is {project.task_type!r}; only {TASK_TYPE!r} is supported",
        )
    if (project.framework or "").lower() != FRAMEWORK:
        raise ApiError(
            400,
            "unsupported_framework",
            f"project framework is {project.framework!r}; only {FRAMEWORK!r} is supported",
        )


def _metadata(project: Project) -> dict[str, Any]:
    try:
        parsed = TrainingMetadata.model_validate(project.metadata)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
            for item in error.errors(include_input=False, include_url=False)
        )
        raise ApiError(
            400, "invalid_metadata", f"project metadata is invalid: {problems}"
        ) from None
    return parsed.model_dump(exclude_none=True)


def _bad_value(name: str, value: Any, requirement: str, *, from_request: bool) -> ApiError:
    if from_request:
        return ApiError(422, "invalid_parameter", f"{name} must be {requirement} (got {value})")
    return ApiError(
        400, "invalid_metadata", f"project metadata {name} must be {requirement} (got {value})"
    )


def check_dataset_url(dataset: Dataset) -> str:
    try:
        parse_url(dataset.gcs_url)
    except InvalidInput as error:
        raise ApiError(
            400, "invalid_dataset_url", f"the project's dataset URL is invalid: {error}"
        ) from None
    return dataset.gcs_url


def plan_run(
    choice: TrainingChoice,
    project: Project,
    previous: Run | None,
    run_id: UUID,
    settings: Settings,
    *,
    plain_url_taken: bool = False,
) -> RunSpec:
    """The next run of a project: attempt, deterministic name and a model URL fixed now.

    A project's first run writes ``<project>_model.pth``; later runs, and a first run whose
    plain name another project's run already holds (project names need not be unique), add
    their id, so a model that exists is never overwritten.
    """
    unique = previous is not None or plain_url_taken
    return RunSpec(
        run_id=run_id,
        run_name=run_name(project.id, next_attempt(previous)),
        project_id=project.id,
        dataset_url=choice.dataset_url,
        model=choice.model,
        model_url=model_url_for(settings.bucket_url, project.name, run_id if unique else None),
        epochs=choice.epochs,
        learning_rate=choice.learning_rate,
        batch_size=choice.batch_size,
        image_size=choice.image_size,
        pretrained=choice.pretrained,
        seed=choice.seed,
        resources=_resources(choice, settings),
    )


def _resources(choice: TrainingChoice, settings: Settings) -> Resources:
    """The deployment's defaults, with the group the run asked for."""
    resources = default_resources(settings)
    asked = {"nodes": choice.nodes}
    if choice.gpus is not None:
        asked["gpu_count"] = choice.gpus
    return resources.model_copy(update=asked)


def next_attempt(previous: Run | None) -> int:
    return previous.attempt + 1 if previous else 1


def wrong_status(project: Project, settings: Settings) -> ApiError:
    return ApiError(
        400,
        "invalid_project_status",
        f"project is {project.status!r}; training starts from {settings.status_pending!r}",
    )


def awaited(latest: Run | None) -> Run:
    """The run a wait follows: the project's latest, active or already ended."""
    if latest is None:
        raise ApiError(409, "no_active_run", "the project has no training run to wait for")
    return latest


def expected_classes(project: Project) -> int | None:
    """The number of classes the project's metadata promises (a run checks its dataset has it)."""
    return _metadata(project).get("num_classes")


def cancellable(latest: Run | None) -> Run:
    """The run a cancel stops: the project's latest, if it is still active."""
    if latest is None or not latest.phase.is_active:
        detail = f" (latest run is {latest.phase.value})" if latest else ""
        raise ApiError(409, "no_active_run", f"the project has no active run{detail}")
    return latest


def cancel_cut_short(project: Project, latest: Run, settings: Settings) -> bool:
    """The latest run was recorded Cancelled but the project is still claimed: a cancel that
    the store failed half-way (and answered 503), retried now; the retry finishes it."""
    return latest.phase is Phase.CANCELLED and project.status == settings.status_training


def progress_of(run: Run | None) -> dict[str, Any]:
    """The run's progress, limited to what the API promises."""
    if run is None:
        return {}
    return {key: run.progress.get(key) for key in ProgressSummary.model_fields}


def history_of(run: Run | None) -> list[EpochPoint]:
    """The run's finished epochs, oldest first; an entry that is not one is left out (a
    progress written by hand, or by a trainer that wrote no history, is simply shorter)."""
    if run is None or not isinstance(run.progress.get("history"), list):
        return []
    points = []
    for item in run.progress["history"]:
        with suppress(ValidationError, TypeError):
            points.append(EpochPoint.model_validate(item))
    return points


def progress_without_history(run: Run) -> dict[str, Any]:
    """The run's progress as a run's record shows it: the history is answered on its own."""
    return {key: value for key, value in run.progress.items() if key != "history"}


# The metrics file the trainer writes next to a model is a few KiB (its confusion matrix
# grows with the square of the classes); anything far larger is not one.
MAX_METRICS_BYTES = 16 * 2**20


def metrics_url_of(model_url: str) -> str:
    """``…/x_model.pth`` → ``…/x_model.metrics.json``: the trainer puts the metrics there."""
    return model_sibling(model_url, METRICS_SUFFIX)


def with_metrics(latest: Run | None) -> Run:
    """The run whose model metrics are asked for: the project's latest, once it succeeded."""
    if latest is None:
        raise ApiError(404, "metrics_not_found", "the project has no training run")
    if latest.phase is not Phase.SUCCEEDED or not latest.model_url:
        raise ApiError(
            404,
            "metrics_not_found",
            f"the project's latest run is {latest.phase.value}; metrics come with its model",
        )
    return latest


def classes_of(models: list[ModelRecord], run: Run) -> list[str] | None:
    """The class names the run's ``models`` row records, in the model's index order."""
    for record in models:
        classes = record.metadata.get("classes")
        if record.run_id == run.id and isinstance(classes, list):
            return [str(name) for name in classes]
    return None


class TrainerEpoch(BaseModel):
    """One entry of the metrics file's ``history``, as the trainer writes it."""

    model_config = ConfigDict(extra="ignore")

    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    images_per_second: float | None = None
    seconds: float | None = None


class ModelFigures(BaseModel):
    """A trained model's figures: the metrics file's and the metrics answer's alike."""

    val_accuracy: float | None = None
    test_accuracy: float | None = None
    val_loss: float | None = None
    final_loss: float | None = None
    training_time_seconds: float | None = None
    images_per_second: float | None = None


class MetricsFile(ModelFigures):
    """The keys of ``<model>.metrics.json`` the API serves (the trainer writes more)."""

    model_config = ConfigDict(extra="ignore")

    confusion_matrix: list[list[int]]
    confusion_matrix_split: str | None = None
    history: list[TrainerEpoch] = []


def parse_metrics(data: bytes, url: str) -> MetricsFile:
    try:
        return MetricsFile.model_validate_json(data)
    except ValidationError as error:
        where = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'document'}: {item['msg']}"
            for item in error.errors(include_input=False, include_url=False)[:3]
        )
        raise invalid_metrics(url, where) from None


def invalid_metrics(url: str, problem: str) -> ApiError:
    message = f"the model's metrics file {url} is not valid: {problem}"
    return ApiError(502, "invalid_metrics", message)

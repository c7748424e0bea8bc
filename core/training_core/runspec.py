"""The contract of one training run, shared by the API, the launchers, the operator and
the trainer: what a run is asked to do, how it travels (TrainingRun spec, environment
variables of the Job or local process) and how the trainer's exit code reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel

from training_core.domain import safe_name

if TYPE_CHECKING:
    from training_core.settings import Settings

# The TrainingRun custom resource.
CRD_GROUP = "training.automl.dev"
CRD_VERSION = "v1alpha1"
CRD_PLURAL = "trainingruns"
CRD_KIND = "TrainingRun"

# One label scheme for a run's TrainingRun, its Job and its pods
# (``kubectl get trainingruns,jobs,pods -l training.automl.dev/run=<run name>``).
LABEL_RUN = f"{CRD_GROUP}/run"  # the run's name (the TrainingRun's and the Job's)
LABEL_RUN_ID = f"{CRD_GROUP}/run-id"
LABEL_PROJECT = f"{CRD_GROUP}/project"  # the project's id

# Trainer exit codes (sysexits.h): what each means is documented in the README ("Exit codes");
# the Job's podFailurePolicy and the local launcher read them.
EXIT_OK = 0
EXIT_MISCONFIGURED = 2
EXIT_DO_NOT_RETRY = 65  # EX_DATAERR
EXIT_RETRY = 75  # EX_TEMPFAIL

SUPPORTED_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
)
MIN_CLASSES = 2  # a classifier's least: the API, registration and the trainer refuse fewer


# A RunSpec field marked JOB shapes the Job (or the local process) that runs the trainer; the
# trainer does not read it, so it is not in the trainer's environment.
JOB = "job"


class WireModel(BaseModel):
    """Fields are snake_case in Python, the store and the environment; camelCase in the
    TrainingRun resource, as Kubernetes users expect (both names are accepted)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class Resources(WireModel):
    gpu_count: int = Field(1, ge=0, le=16)  # per node
    nodes: int = Field(1, ge=1, le=64)  # more than one: an Indexed Job, one pod per node
    # Training processes per node; None: one per GPU (one on a CPU-only node).
    processes: int | None = Field(None, ge=1, le=64)
    accelerator: str | None = None  # e.g. nvidia-l4, nvidia-tesla-t4, nvidia-h100-80gb
    spot: bool = False
    cpu: str = "4"
    memory: str = "16Gi"

    @property
    def processes_per_node(self) -> int:
        return self.processes or max(self.gpu_count, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


def default_resources(settings: Settings) -> Resources:
    """What a run asks for when its request does not say: the deployment's defaults."""
    return Resources(
        gpu_count=settings.default_gpu_count,
        accelerator=settings.default_accelerator,
        spot=settings.default_spot,
        cpu=settings.default_cpu,
        memory=settings.default_memory,
    )


class RunSpec(WireModel):
    """What one run is asked to do. Validated once (by the API); trusted downstream.

    The one source of a run's parameters: their defaults and bounds are these fields', and
    every form a run travels in is derived from them: the store's (``model_dump``), the
    TrainingRun's (:meth:`to_resource_spec`, camelCase) and the trainer's environment
    (:meth:`to_env`, ``TRAINING_<FIELD>``, less the fields marked ``JOB``). A new parameter
    is one line here, with its bound."""

    run_id: UUID
    run_name: str  # the TrainingRun's and the Job's metadata.name
    project_id: UUID
    dataset_url: str
    model: str = "resnet18"
    model_url: str
    epochs: int = Field(10, ge=1, le=10000)
    learning_rate: float = Field(0.001, gt=0, lt=1)
    batch_size: int = Field(32, ge=2, le=65536)  # 2 at least: batch norm needs two images
    image_size: int = Field(224, ge=16, le=1024)
    pretrained: bool = True
    weights_url: str | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    resources: Annotated[Resources, JOB] = Field(default_factory=Resources)
    active_deadline_seconds: Annotated[int | None, JOB] = Field(None, ge=60)
    backoff_limit: Annotated[int, JOB] = Field(3, ge=0, le=20)
    suspend: Annotated[bool, JOB] = False

    # -- the environment contract (Job containers and local processes alike) -------------
    def to_env(self) -> dict[str, str]:
        env = {}
        for name in _env_fields():
            value = getattr(self, name)
            if value is not None:
                env[ENV_PREFIX + name.upper()] = _env_text(value)
        # Of the resources, the trainer reads only the shape of its group of processes.
        env[ENV_PREFIX + "NODES"] = str(self.resources.nodes)
        env[ENV_PREFIX + "PROCESSES_PER_NODE"] = str(self.resources.processes_per_node)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunSpec:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: environ[key]
            for name in _env_fields()
            if (key := ENV_PREFIX + name.upper()) in environ
        }
        values["resources"] = {
            "nodes": environ.get(ENV_PREFIX + "NODES", "1"),
            "processes": environ.get(ENV_PREFIX + "PROCESSES_PER_NODE", "1"),
        }
        return cls.model_validate(values)

    # -- the TrainingRun custom resource ---------------------------------------------------
    def to_resource_spec(self) -> dict[str, Any]:
        """The ``spec`` of the TrainingRun (camelCase; the run's name is the resource's)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"run_name"})

    def labels(self) -> dict[str, str]:
        """The labels of everything that belongs to this run on Kubernetes."""
        return {
            LABEL_RUN: self.run_name,
            LABEL_RUN_ID: str(self.run_id),
            LABEL_PROJECT: str(self.project_id),
        }

    @classmethod
    def from_resource(cls, name: str, spec: Mapping[str, Any]) -> RunSpec:
        known = {field.alias for field in cls.model_fields.values()}
        return cls.model_validate(
            {**{key: value for key, value in spec.items() if key in known}, "runName": name}
        )


ENV_PREFIX = "TRAINING_"


def _env_fields() -> list[str]:
    return [name for name, field in RunSpec.model_fields.items() if JOB not in field.metadata]


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Bounds:
    """A numeric parameter's bounds (``None``: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # ``low`` itself is refused
    high_open: bool = False

    def admits(self, value: Any) -> bool:
        if value is None or isinstance(value, bool):
            return value is None
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def requirement(self) -> str:
        """The bounds in words, as the API's refusals say them."""
        low, high = _number(self.low), _number(self.high)
        if not (self.low_open or self.high_open) and self.low is not None and self.high is not None:
            return f"between {low} and {high}"
        parts = []
        if self.low is not None:
            parts.append(f"greater than {low}" if self.low_open else f"at least {low}")
        if self.high is not None:
            parts.append(f"less than {high}" if self.high_open else f"at most {high}")
        return " and ".join(parts)


def bounds_of(name: str, *, at_most: float | None = None) -> Bounds:
    """A RunSpec field's bounds, ``at_most`` narrowing the upper one (the deployment's
    MAX_EPOCHS, MAX_BATCH_SIZE)."""
    found: dict[str, Any] = {}
    for item in RunSpec.model_fields[name].metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if getattr(item, kind, None) is not None:
                found[kind] = getattr(item, kind)
    low_open, high_open = "gt" in found, "lt" in found
    bounds = Bounds(found.get("gt", found.get("ge")), found.get("lt", found.get("le")), low_open, high_open)
    if at_most is not None and (bounds.high is None or at_most < bounds.high):
        bounds = Bounds(bounds.low, at_most, bounds.low_open, False)
    return bounds


def default_of(name: str) -> Any:
    """A RunSpec field's default."""
    return RunSpec.model_fields[name].get_default(call_default_factory=True)


def _number(value: float | None) -> str:
    if isinstance(value, int) and value >= 2**16 and (value + 1) & value == 0:
        return f"2^{(value + 1).bit_length() - 1} - 1"
    return f"{value:g}" if isinstance(value, float) else str(value)


# The run parameters a project's metadata may choose (the request may choose some of them too).
METADATA_PARAMETERS = (
    "model", "epochs", "learning_rate", "batch_size", "image_size", "pretrained", "seed",
)  # fmt: skip

# The training keys of ``projects.metadata`` (the API reads them, ``projects create`` writes
# them), each optional; other keys belong to the platform. Strict: "10" in the metadata is a
# platform bug to report, not a number to guess. Types are RunSpec's; bounds are checked
# where a refusal can say whose value it was (the API, registration).
TrainingMetadata = create_model(
    "TrainingMetadata",
    __config__=ConfigDict(extra="ignore", strict=True),
    **{
        name: (RunSpec.model_fields[name].annotation | None, None)
        for name in METADATA_PARAMETERS
    },
    num_classes=(int | None, None),
    gpus=(int | None, None),  # per node: Resources.gpu_count
    nodes=(int | None, None),
)


def batch_split_problem(batch_size: int, world_size: int) -> str | None:
    """Why a global batch cannot be split across ``world_size`` training processes (each
    trains an equal slice of every batch, of two images at least: batch norm needs two);
    ``None`` when it can."""
    if batch_size % world_size == 0 and batch_size >= 2 * world_size:
        return None
    return (
        f"batch_size {batch_size} cannot be split evenly across {world_size} training "
        f"processes with at least 2 images each: use a multiple of {world_size}, at least "
        f"{2 * world_size}"
    )


def model_url_for(bucket_url: str, project_name: str, run_id: UUID | None = None) -> str:
    """Where a project's model is written: ``<bucket>/models/<project>_model.pth``.

    ``run_id`` is appended when the plain name is already taken by another run's model.
    """
    stem = safe_name(project_name, max_length=100).replace("-", "_")
    suffix = f"_{str(run_id)[:8]}" if run_id else ""
    return f"{bucket_url.rstrip('/')}/models/{stem}{suffix}_model.pth"


# What the trainer uploads next to a model (``…/x_model.pth``), before the model itself.
METRICS_SUFFIX, CURVES_SUFFIX = ".metrics.json", ".png"
MODEL_COMPANION_SUFFIXES = (METRICS_SUFFIX, CURVES_SUFFIX)


def model_sibling(model_url: str, suffix: str) -> str:
    """``…/x_model.pth`` → ``…/x_model<suffix>``: the one rule for what sits beside a model."""
    return model_url.removesuffix(".pth") + suffix


def model_companions(model_url: str) -> tuple[str, ...]:
    """``…/x_model.pth`` → the files that travel with it: its metrics and its curves."""
    return tuple(model_sibling(model_url, suffix) for suffix in MODEL_COMPANION_SUFFIXES)


def checkpoints_prefix(model_url: str, run_id: UUID | str) -> str:
    """Where a run's checkpoints are kept, next to the model they will become: objects under
    ``<model_url>.checkpoints/<run_id>/``. Whoever records a run's end removes them."""
    return f"{model_url}.checkpoints/{run_id}"

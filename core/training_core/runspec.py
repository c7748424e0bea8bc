"""The contract of one training run, shared by the API, the launchers, the operator and
the trainer: what a run is asked to do, how it travels (TrainingRun spec, environment
variables of the Job or local process) and how the trainer's exit code reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from training_core.domain import safe_name

if TYPE_CHECKING:
    from training_core.settings import Settings

# The TrainingRun custom resource.
CRD_GROUP = "training.automl.dev"
CRD_VERSION = "v1alpha1"
CRD_PLURAL = "trainingruns"
CRD_KIND = "TrainingRun"

# Trainer exit codes (sysexits.h). The Job's podFailurePolicy reads them.
EXIT_OK = 0
EXIT_MISCONFIGURED = 2  # malformed settings or TRAINING_* environment: nothing was touched
EXIT_DO_NOT_RETRY = 65  # EX_DATAERR: bad input (archive, dataset, model name, project state)
EXIT_RETRY = 75  # EX_TEMPFAIL: interrupted (SIGTERM, preemption) or transient; resume from checkpoint

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


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_count: int = Field(1, ge=0, le=16)
    accelerator: str | None = None  # e.g. nvidia-l4, nvidia-tesla-t4, nvidia-h100-80gb
    spot: bool = False
    cpu: str = "4"
    memory: str = "16Gi"


def default_resources(settings: Settings) -> Resources:
    """What a run asks for when its request does not say: the deployment's defaults."""
    return Resources(
        gpu_count=settings.default_gpu_count,
        accelerator=settings.default_accelerator,
        spot=settings.default_spot,
        cpu=settings.default_cpu,
        memory=settings.default_memory,
    )


class RunSpec(BaseModel):
    """What one run is asked to do. Validated once (by the API); trusted downstream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: UUID
    run_name: str
    project_id: UUID
    dataset_url: str
    model: str = Field("resnet18")
    model_url: str
    epochs: int = Field(10, ge=1, le=10000)
    learning_rate: float = Field(0.001, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=65536)
    image_size: int = Field(224, ge=16, le=1024)
    pretrained: bool = True
    weights_url: str | None = None
    seed: int | None = None
    resources: Resources = Field(default_factory=Resources)
    active_deadline_seconds: int | None = Field(None, ge=60)
    backoff_limit: int = Field(3, ge=0, le=20)
    suspend: bool = False

    # -- the environment contract (Job containers and local processes alike) -------------
    def to_env(self) -> dict[str, str]:
        env = {
            "TRAINING_RUN_ID": str(self.run_id),
            "TRAINING_RUN_NAME": self.run_name,
            "TRAINING_PROJECT_ID": str(self.project_id),
            "TRAINING_DATASET_URL": self.dataset_url,
            "TRAINING_MODEL": self.model,
            "TRAINING_MODEL_URL": self.model_url,
            "TRAINING_EPOCHS": str(self.epochs),
            "TRAINING_LEARNING_RATE": repr(self.learning_rate),
            "TRAINING_BATCH_SIZE": str(self.batch_size),
            "TRAINING_IMAGE_SIZE": str(self.image_size),
            "TRAINING_PRETRAINED": "true" if self.pretrained else "false",
        }
        if self.weights_url:
            env["TRAINING_WEIGHTS_URL"] = self.weights_url
        if self.seed is not None:
            env["TRAINING_SEED"] = str(self.seed)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunSpec:
        environ = os.environ if environ is None else environ
        prefix = "TRAINING_"
        values: dict[str, Any] = {
            key[len(prefix) :].lower(): value
            for key, value in environ.items()
            if key.startswith(prefix) and key[len(prefix) :].lower() in _ENV_FIELDS
        }
        values["model"] = environ.get("TRAINING_MODEL", "resnet18")
        return cls.model_validate(values)

    # -- the TrainingRun custom resource ---------------------------------------------------
    def to_resource_spec(self) -> dict[str, Any]:
        """The ``spec`` of the TrainingRun (camelCase, as Kubernetes users expect)."""
        spec: dict[str, Any] = {
            "runId": str(self.run_id),
            "projectId": str(self.project_id),
            "datasetUrl": self.dataset_url,
            "model": self.model,
            "modelUrl": self.model_url,
            "epochs": self.epochs,
            "learningRate": self.learning_rate,
            "batchSize": self.batch_size,
            "imageSize": self.image_size,
            "pretrained": self.pretrained,
            "backoffLimit": self.backoff_limit,
            "suspend": self.suspend,
            "resources": {
                "gpuCount": self.resources.gpu_count,
                "spot": self.resources.spot,
                "cpu": self.resources.cpu,
                "memory": self.resources.memory,
            },
        }
        if self.resources.accelerator:
            spec["resources"]["accelerator"] = self.resources.accelerator
        if self.weights_url:
            spec["weightsUrl"] = self.weights_url
        if self.seed is not None:
            spec["seed"] = self.seed
        if self.active_deadline_seconds is not None:
            spec["activeDeadlineSeconds"] = self.active_deadline_seconds
        return spec

    @classmethod
    def from_resource(cls, name: str, spec: Mapping[str, Any]) -> RunSpec:
        resources = spec.get("resources", {})
        return cls(
            run_id=spec["runId"],
            run_name=name,
            project_id=spec["projectId"],
            dataset_url=spec["datasetUrl"],
            model=spec.get("model", "resnet18"),
            model_url=spec["modelUrl"],
            epochs=spec.get("epochs", 10),
            learning_rate=spec.get("learningRate", 0.001),
            batch_size=spec.get("batchSize", 32),
            image_size=spec.get("imageSize", 224),
            pretrained=spec.get("pretrained", True),
            weights_url=spec.get("weightsUrl"),
            seed=spec.get("seed"),
            resources=Resources(
                gpu_count=resources.get("gpuCount", 1),
                accelerator=resources.get("accelerator"),
                spot=resources.get("spot", False),
                cpu=resources.get("cpu", "4"),
                memory=resources.get("memory", "16Gi"),
            ),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            backoff_limit=spec.get("backoffLimit", 3),
            suspend=spec.get("suspend", False),
        )


_ENV_FIELDS = {
    "run_id",
    "run_name",
    "project_id",
    "dataset_url",
    "model_url",
    "epochs",
    "learning_rate",
    "batch_size",
    "image_size",
    "pretrained",
    "weights_url",
    "seed",
}


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

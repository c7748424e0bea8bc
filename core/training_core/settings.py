"""Every setting of the agent, read once from the environment (or a .env file).

Names are the environment variable names, upper-cased (``DATABASE_URL``, ``LOG_LEVEL`` …).
Secrets are ``SecretStr``: they never show in ``repr()``, logs or error messages.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

# PIL.Image.MAX_IMAGE_PIXELS: where PIL starts warning of a decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


class SettingsError(ValueError):
    """A missing or malformed setting; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # --- where the records live -------------------------------------------------------
    store_backend: Literal["auto", "postgres", "supabase"] = "auto"
    database_url: SecretStr | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    store_timeout_seconds: float = Field(10.0, gt=0, le=300)
    store_pool_size: int = Field(10, ge=1, le=200)
    # How long a trainer waits for a store that went away before the writes it cannot go
    # on without (its start, its outcome); then it exits to be retried, the model kept.
    store_retry_seconds: float = Field(120.0, ge=0, le=86_400)

    # --- where the blobs live ---------------------------------------------------------
    # A bucket URL: ``gs://my-bucket`` in the cloud or ``file:///srv/bucket`` on one machine.
    bucket_url: str = "file:///tmp/training-agent/bucket"
    google_application_credentials: Path | None = None
    blob_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    download_retries: int = Field(5, ge=0, le=20)
    upload_retries: int = Field(3, ge=0, le=20)
    retry_initial_delay_seconds: float = Field(0.5, gt=0, le=60)
    retry_max_delay_seconds: float = Field(30.0, gt=0, le=600)
    # GCS uploads above 8 MiB are resumable, sent in chunks of this size (a multiple of
    # 256 KiB, as GCS requires); a failed chunk costs at most one chunk of memory and time.
    upload_chunk_bytes: int = Field(16 * 2**20, ge=256 * 2**10, le=2**30, multiple_of=256 * 2**10)

    # --- intake limits ------------------------------------------------------------------
    max_download_bytes: int = Field(20 * 2**30, gt=0)
    max_archive_entries: int = Field(500_000, gt=0)
    max_uncompressed_bytes: int = Field(50 * 2**30, gt=0)
    max_entry_bytes: int = Field(256 * 2**20, gt=0)
    max_compression_ratio: float = Field(200.0, gt=1)
    # Pixels of one image, read from its header before any decode: PIL's own warning
    # threshold (its error comes only at twice this, after a 12000×12000 PNG of a few KB).
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    min_free_disk_bytes: int = Field(512 * 2**20, ge=0)
    scratch_dir: Path = Path("/tmp/training-agent/scratch")

    # --- training defaults and bounds ---------------------------------------------------
    default_model: str = "resnet18"
    batch_size: int = Field(32, ge=2, le=4096)
    default_epochs: int = Field(10, ge=1, le=1000)
    default_learning_rate: float = Field(0.001, gt=0, lt=1)
    max_epochs: int = Field(200, ge=1, le=10000)
    max_batch_size: int = Field(1024, ge=2, le=65536)
    image_size: int = Field(224, ge=16, le=1024)
    torch_compile: Literal["auto", "on", "off"] = "auto"
    # bf16 autocast where the device has it and (on a CPU) a start-up probe finds it faster.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # Besides every epoch's end and SIGTERM: a checkpoint inside an epoch this often.
    checkpoint_interval_seconds: float = Field(300.0, gt=0, le=86_400)
    # A run of several processes: how long one waits for the others at a collective before
    # it takes them for lost (a dead peer is usually seen at once: its connection closes).
    distributed_timeout_seconds: float = Field(300.0, ge=5, le=86_400)

    # --- experiment trackers (side channels: they never fail a run) -----------------------
    # TensorBoard event files next to each model, in <model name>_tb/<run name>/.
    tensorboard: bool = True
    # An MLflow tracking server (http(s)://…, or any URI MLflow takes); None: no MLflow.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = Field("training-agent", min_length=1, max_length=256)
    # Bound on every MLflow call; MLflow's own retries are off (the next epoch's call retries).
    mlflow_timeout_seconds: int = Field(5, ge=1, le=300)

    # --- a run's compute on Kubernetes (GKE GPU node pools) -------------------------------
    default_gpu_count: int = Field(1, ge=0, le=16)
    # What one run may ask for: GPUs per node (one training process each) and nodes.
    max_gpus_per_node: int = Field(8, ge=0, le=16)
    max_nodes: int = Field(4, ge=1, le=64)
    # Node label cloud.google.com/gke-accelerator, e.g. nvidia-l4; None: any GPU node.
    default_accelerator: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    default_spot: bool = False  # Spot VMs: cheaper, preemptible (runs resume from checkpoints)
    default_cpu: str = Field("4", pattern=r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
    default_memory: str = Field("16Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")

    # --- project status names (the wider platform defines them) ------------------------
    status_pending: str = "pending_training"
    status_training: str = "training"
    status_trained: str = "trained"
    status_failed: str = "failed"
    status_after_cancel: str = "pending_training"
    agent_name: str = "training-agent"

    # --- API ----------------------------------------------------------------------------
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(30, ge=1, le=100_000)
    status_logs_default: int = Field(20, ge=0, le=500)
    status_logs_max: int = Field(200, ge=1, le=5000)
    public_base_url: str = ""
    # Worker processes of `training-agent serve`; more than one needs LAUNCHER=kubernetes (the
    # local launcher's trainers are children of the one API process).
    api_workers: int = Field(1, ge=1, le=64)
    # A project `training` this long with no active run is released (back to pending): what
    # an interrupted start of an older agent, or the platform, left behind.
    stale_claim_seconds: float = Field(600.0, ge=1, le=7 * 86_400)

    # --- launchers ------------------------------------------------------------------------
    launcher: Literal["kubernetes", "local"] = "local"
    namespace: str = "training"
    local_max_concurrent: int = Field(1, ge=1, le=64)
    local_runs_dir: Path = Path("/tmp/training-agent/runs")

    # --- logging --------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        """``API_TOKENS`` is a comma-separated list, so a Secret can hold several tokens."""
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        """An empty ``MLFLOW_TRACKING_URI`` (a chart value left blank) means no MLflow."""
        return (value.strip() or None) if value is not None else None

    @field_validator("supabase_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local endpoint)")
        return value.rstrip("/") if value else None

    @field_validator("database_url")
    @classmethod
    def _conninfo(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            conninfo_to_dict(value.get_secret_value())
        except psycopg.Error:
            # psycopg's own message may quote the string, password included: not echoed.
            raise ValueError("is not a PostgreSQL connection string (postgresql://user:password@host:port/db)") from None
        return value

    @field_validator("bucket_url")
    @classmethod
    def _bucket_scheme(cls, value: str) -> str:
        if not value.startswith(("gs://", "file://")):
            raise ValueError("must start with gs:// or file://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _store_reachable(self) -> Settings:
        if self.store_backend == "postgres" and self.database_url is None:
            raise ValueError("DATABASE_URL is required when STORE_BACKEND=postgres")
        if self.store_backend == "supabase" and not (
            self.supabase_url and self.supabase_service_role_key
        ):
            raise ValueError(
                "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are required when STORE_BACKEND=supabase"
            )
        if self.api_workers > 1 and self.launcher == "local":
            raise ValueError(
                "API_WORKERS above 1 needs LAUNCHER=kubernetes: the local launcher's trainers"
                " belong to one API process"
            )
        return self

    @property
    def resolved_store_backend(self) -> Literal["postgres", "supabase"]:
        if self.store_backend != "auto":
            return self.store_backend
        return "postgres" if self.database_url is not None else "supabase"


def _describe(error: ValidationError) -> str:
    """One line per bad setting, naming the environment variable, never echoing its value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "Invalid settings — " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's error into one clear ``SettingsError``."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()

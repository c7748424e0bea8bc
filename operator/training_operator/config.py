"""The operator's own settings (environment variables prefixed ``OPERATOR_``).

They describe the cluster side of a run — the trainer image, its service account, where its
settings and secrets live — which the API and the trainer never need.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPERATOR_", extra="ignore", frozen=True)

    # Where the operator watches TrainingRuns; empty means every namespace.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- the trainer's Job ------------------------------------------------------------
    trainer_image: str = "ghcr.io/automl/training-agent-trainer:latest"
    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    service_account: str = "training-agent-trainer"
    settings_configmap: str = "training-agent-settings"
    secret_name: str = "training-agent-secrets"
    secret_key_supabase: str = "SUPABASE_SERVICE_ROLE_KEY"
    priority_class: str | None = None
    ttl_seconds_after_finished: int = Field(86_400, ge=0, le=30 * 86_400)
    scratch_size: str = "100Gi"
    tmp_size: str = "1Gi"
    shm_size: str = "2Gi"  # per training process: a pod of several gets a multiple of it
    scratch_dir: str = "/scratch"
    run_as_user: int = Field(10001, ge=1)
    # A run on several nodes: the port its node 0 listens on for its peers (torch's rendezvous).
    master_port: int = Field(29500, ge=1, le=65535)

    # --- watching and timers ------------------------------------------------------------
    pending_timeout_seconds: float = Field(900.0, gt=0)
    timer_interval_seconds: float = Field(30.0, gt=0)
    # kopf's watch streams can stall silently; these bound every watch request.
    watch_server_timeout_seconds: int = Field(300, ge=1)
    watch_client_timeout_seconds: int = Field(330, ge=1)
    liveness_port: int = Field(8080, ge=1, le=65535)

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("namespaces")
    @classmethod
    def _dns_labels(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _DNS_LABEL.match(name):
                raise ValueError(f"{name!r} is not a namespace name")
        return value

    @field_validator("service_account", "settings_configmap", "secret_name")
    @classmethod
    def _object_name(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", value) or len(value) > 253:
            raise ValueError(f"{value!r} is not a Kubernetes object name")
        return value

    @field_validator("scratch_size", "tmp_size", "shm_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a size (e.g. 100Gi)")
        return value

"""The launcher interface: how a recorded run is handed to something that trains it.

Two backends share it (the shape of the Kubeflow SDK's backends): Kubernetes (a TrainingRun
custom resource that the operator turns into a GPU Job) and local (a child process).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from training_core.domain import Run
from training_core.errors import AgentError
from training_core.runspec import RunSpec


class LauncherUnavailable(AgentError):
    """The launcher could not be reached or refused the request; retrying later may work."""


class Launcher(ABC):
    @abstractmethod
    def start(self, spec: RunSpec) -> None:
        """Hand a recorded run over; idempotent (a retried start finds what the first made)."""

    @abstractmethod
    def cancel(self, run: Run) -> None:
        """Stop a run; idempotent (cancelling what is gone is not an error)."""

    @abstractmethod
    def describe(self, run: Run) -> dict[str, Any] | None:
        """What the backend knows about a run (``None`` when it knows nothing)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``LauncherUnavailable`` unless the backend answers."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the launcher holds."""

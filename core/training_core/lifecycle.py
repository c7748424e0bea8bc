"""How a run ends: the one rule every component (the API, the local launcher, the operator and
the trainer) follows to record it.

A run enters a terminal phase only from an active one (a conditional update, so nothing ever
overwrites an outcome another party recorded first); the caller whose update won then settles
the project (``training`` → the status the phase leads to, unless someone moved it on
meanwhile) and writes the one log line. Each step is taken once, even when the store fails
half-way and the caller tries again later with the same :class:`EndSteps`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from training_core.domain import ACTIVE_PHASES, TERMINAL_PHASES, Phase, Project, Run
from training_core.errors import InvalidState
from training_core.settings import Settings
from training_core.store.base import RunUpdate, Store

log = logging.getLogger(__name__)
Attempt = Callable[[Callable[[], Any]], Any]  # runs one store call (a caller may retry in it)


def project_status_after(phase: Phase, settings: Settings) -> str | None:
    """The project status a terminal phase leads to (from ``training`` only)."""
    return {
        Phase.SUCCEEDED: settings.status_trained,
        Phase.FAILED: settings.status_failed,
        Phase.CANCELLED: settings.status_after_cancel,
    }.get(phase)


@dataclass
class EndSteps:
    """The steps of recording a run's end that the store has taken (each is taken once)."""

    run: bool = False  # the run's terminal phase
    project: bool = False  # the project's status
    logged: bool = False  # the log line


@dataclass(frozen=True)
class RunEnd:
    """A run's end as one party records it.

    ``project_status``: what the project becomes ("" by default: what ``phase`` leads to; None:
    the project is left alone). ``log_line``: written by whoever recorded the end (None: the
    caller writes its own)."""

    run_id: UUID
    project_id: UUID
    phase: Phase
    log_line: str | None
    level: str = "info"
    error: str | None = None
    progress: dict[str, Any] | None = None
    model_url: str | None = None
    project_status: str | None = ""

    def status_for(self, settings: Settings) -> str | None:
        if self.project_status == "":
            return project_status_after(self.phase, settings)
        return self.project_status


@dataclass(frozen=True)
class Ended:
    """What recording an end wrote: the run (None where an earlier try had written it) and
    the project (None where its status was not this call's to change)."""

    run: Run | None
    project: Project | None


def _direct(call: Callable[[], Any]) -> Any:
    return call()


def end_run(
    store: Store, settings: Settings, end: RunEnd, *, steps: EndSteps | None = None,
    attempt: Attempt = _direct,
) -> Ended:  # fmt: skip
    """Record ``end``: the run's terminal phase (only from an active one), then the project's
    status, then the log line.

    ``InvalidState`` (or ``NotFound``) when the run was not active: someone else recorded its
    end first, and nothing is written. ``steps`` carries what an earlier try already wrote;
    ``attempt`` wraps each store call (a caller riding out an outage retries in it)."""
    if end.phase not in TERMINAL_PHASES:
        raise ValueError(f"{end.phase} is not a terminal phase")
    steps = steps or EndSteps()
    run = project = None
    if not steps.run:
        update = RunUpdate(
            phase=end.phase, error=end.error, progress=end.progress, model_url=end.model_url
        )
        run = attempt(lambda: store.update_run(end.run_id, update, expected=ACTIVE_PHASES))
        steps.run = True
    if not steps.project:
        project = settle_project(store, settings, end, attempt=attempt)
        steps.project = True
    if not steps.logged and end.log_line is not None:
        attempt(lambda: store.log(end.project_id, end.log_line, end.level))
        steps.logged = True
    return Ended(run, project)


def settle_project(
    store: Store, settings: Settings, end: RunEnd, *, attempt: Attempt = _direct
) -> Project | None:
    """The project's status after ``end``, from ``training`` only; None where the project
    moved on meanwhile (a new start, the API's cancel): that status is left as it is."""
    status = end.status_for(settings)
    if status is None:
        return None
    expected = [settings.status_training]
    try:
        return attempt(lambda: store.set_project_status(end.project_id, status, expected=expected))
    except InvalidState as error:
        if error.actual != status:  # ``status``: a retried try of ours had landed
            log.warning("project status left as '%s' (not ours to change)", error.actual)
        return None

"""What the store is told when a run's Job moves: one conditional update and one log line
(the store's phase is the system of record; a move from a phase it left is refused)."""

from __future__ import annotations

from dataclasses import dataclass

from training_core.domain import ACTIVE_PHASES, Phase

from training_operator.job_status import StatusUpdate

# Reasons for which a run may go back from Running to Pending: its pod is gone, not failed.
_REPLACED_POD_REASONS = frozenset({"Preempted", "Suspended"})


@dataclass(frozen=True)
class Transition:
    """A conditional store update: the run enters ``phase`` only from ``expected``."""

    phase: Phase
    expected: frozenset[Phase]
    level: str
    log_line: str
    error: str | None = None


def transition_for(update: StatusUpdate, job_name: str) -> Transition:
    """The conditional store update (and its one log line) that a status update asks for."""
    phase = update.phase
    if phase is Phase.PENDING:
        expected = {Phase.QUEUED} | (
            {Phase.RUNNING} if update.reason in _REPLACED_POD_REASONS else set()
        )
        level = "warning" if update.reason == "Preempted" else "info"
        return Transition(phase, frozenset(expected), level, f"Job {job_name}: {update.message}")
    if phase is Phase.RUNNING:
        return Transition(
            phase,
            frozenset({Phase.QUEUED, Phase.PENDING}),
            "info",
            f"Job {job_name}: training started",
        )
    if phase is Phase.FAILED:
        return Transition(
            phase,
            ACTIVE_PHASES,
            "error",
            f"Job {job_name} failed: {update.message}",
            update.message,
        )
    return Transition(phase, ACTIVE_PHASES, "info", f"Job {job_name} succeeded")


def cancel_transition(run_name: str) -> Transition:
    return Transition(
        Phase.CANCELLED,
        ACTIVE_PHASES,
        "warning",
        f"TrainingRun {run_name} was deleted: run cancelled",
        "cancelled: the TrainingRun was deleted",
    )

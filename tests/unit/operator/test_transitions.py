"""What the store is told when a run's Job moves, on plain dicts."""

from __future__ import annotations

from training_core.domain import Phase
from training_operator import job_status, transitions
from training_operator.job_status import StatusUpdate


# -- what the store is told -------------------------------------------------------------------
def test_pending_is_entered_from_queued_or_after_losing_the_pod() -> None:
    created = transitions.transition_for(StatusUpdate(Phase.PENDING, "JobCreated", "waiting"), "j")
    assert created.expected == {Phase.QUEUED} and created.level == "info"
    preempted = transitions.transition_for(StatusUpdate(Phase.PENDING, "Preempted", "preempted"), "j")
    assert preempted.expected == {Phase.QUEUED, Phase.RUNNING} and preempted.level == "warning"
    suspended = transitions.transition_for(StatusUpdate(Phase.PENDING, "Suspended", "suspended"), "j")
    assert Phase.RUNNING in suspended.expected


def test_running_and_outcomes_never_overwrite_a_terminal_phase() -> None:
    running = transitions.transition_for(StatusUpdate(Phase.RUNNING, "PodRunning", ""), "j")
    assert (
        running.expected == {Phase.QUEUED, Phase.PENDING}
        and running.log_line == "Job j: training started"
    )
    for phase in (Phase.SUCCEEDED, Phase.FAILED):
        transition = transitions.transition_for(StatusUpdate(phase, "x", "why"), "j")
        assert transition.expected == {Phase.QUEUED, Phase.PENDING, Phase.RUNNING}
    failure = transitions.transition_for(
        StatusUpdate(Phase.FAILED, "DeadlineExceeded", "too slow"), "j"
    )
    assert (failure.level, failure.error, failure.log_line) == (
        "error",
        "too slow",
        "Job j failed: too slow",
    )
    cancel = transitions.cancel_transition("j")
    assert cancel.phase is Phase.CANCELLED and cancel.expected == {
        Phase.QUEUED,
        Phase.PENDING,
        Phase.RUNNING,
    }


def test_deleted_job_fails_the_run() -> None:
    update = job_status.job_deleted_status()
    assert (update.phase, update.reason) == (Phase.FAILED, "JobDeleted")
    transition = transitions.transition_for(update, "j")
    assert transition.expected == {Phase.QUEUED, Phase.PENDING, Phase.RUNNING}

"""How a run ends (training_core.lifecycle), on each store adapter: what the tables hold."""

from __future__ import annotations

import pytest

from training_core.domain import Phase
from training_core.errors import InvalidState
from training_core.lifecycle import EndSteps, RunEnd, end_run
from training_core.settings import load_settings
from training_core.store.base import NewRun, Store

SETTINGS = load_settings(status_trained="done", status_failed="broken")


def training_run(store: Store, phase: Phase = Phase.RUNNING):
    project = store.create_project("digits", status="training")
    run = store.create_run(NewRun(project_id=project.id, name="train-x-1", phase=phase))
    return project, run


def lines(store: Store, project_id) -> list[str]:
    return [entry.message for entry in store.get_logs(project_id, limit=50)]


def test_an_active_run_ends_with_its_project_and_one_line(store: Store) -> None:
    project, run = training_run(store)
    failed = RunEnd(run.id, project.id, Phase.FAILED, "Run train-x-1 failed: boom", "error", error="boom")

    ended = end_run(store, SETTINGS, failed)

    assert ended.run.phase is Phase.FAILED and ended.run.error == "boom"
    assert ended.project.status == "broken" == store.get_project(project.id).status
    assert lines(store, project.id) == ["Run train-x-1 failed: boom"]


def test_an_ended_run_is_never_ended_again(store: Store) -> None:
    project, run = training_run(store)
    end_run(store, SETTINGS, RunEnd(run.id, project.id, Phase.SUCCEEDED, "Run succeeded"))

    with pytest.raises(InvalidState) as lost:
        end_run(store, SETTINGS, RunEnd(run.id, project.id, Phase.FAILED, "Run failed", error="late"))

    assert lost.value.actual == Phase.SUCCEEDED
    assert store.get_run(run.id).phase is Phase.SUCCEEDED and store.get_run(run.id).error is None
    assert store.get_project(project.id).status == "done"
    assert lines(store, project.id) == ["Run succeeded"]


def test_a_project_that_moved_on_keeps_its_status(store: Store) -> None:
    project, run = training_run(store)
    store.set_project_status(project.id, "pending_training")  # say, set back by the platform

    ended = end_run(store, SETTINGS, RunEnd(run.id, project.id, Phase.FAILED, "Run failed"))

    assert ended.project is None
    assert store.get_project(project.id).status == "pending_training"
    assert store.get_run(run.id).phase is Phase.FAILED


def test_a_claim_can_be_given_back_instead(store: Store) -> None:
    project, run = training_run(store, Phase.QUEUED)
    end = RunEnd(
        run.id, project.id, Phase.FAILED, "Run could not start", project_status="pending_training"
    )

    end_run(store, SETTINGS, end)

    assert store.get_project(project.id).status == "pending_training"


def test_a_retried_end_takes_only_the_steps_still_to_take(store: Store) -> None:
    project, run = training_run(store)
    end = RunEnd(run.id, project.id, Phase.CANCELLED, "Run cancelled")
    steps = EndSteps()
    end_run(store, SETTINGS, end, steps=steps)

    end_run(store, SETTINGS, end, steps=steps)  # everything was taken: nothing happens
    end_run(store, SETTINGS, end, steps=EndSteps(run=True, project=True))  # the line again

    assert lines(store, project.id) == ["Run cancelled", "Run cancelled"]
    assert store.get_project(project.id).status == SETTINGS.status_after_cancel


def test_only_a_terminal_phase_ends_a_run(store: Store) -> None:
    project, run = training_run(store, Phase.QUEUED)

    with pytest.raises(ValueError, match="not a terminal phase"):
        end_run(store, SETTINGS, RunEnd(run.id, project.id, Phase.PENDING, "Run waits"))

    assert store.get_run(run.id).phase is Phase.QUEUED

"""The project status each way a run ends leads to."""

from __future__ import annotations

from training_core.domain import Phase
from training_core.lifecycle import project_status_after
from training_core.settings import load_settings


def test_project_status_after_each_outcome() -> None:
    settings = load_settings(
        status_trained="done", status_failed="broken", status_after_cancel="ready"
    )
    assert project_status_after(Phase.SUCCEEDED, settings) == "done"
    assert project_status_after(Phase.FAILED, settings) == "broken"
    assert project_status_after(Phase.CANCELLED, settings) == "ready"
    assert project_status_after(Phase.RUNNING, settings) is None

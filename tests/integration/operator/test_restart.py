"""A restarted operator catches up with what happened while it was down, once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from training_core.domain import Phase

from tests.integration.operator.conftest import Workspace, eventually, expect


def test_operator_restarted_mid_run_converges_without_duplicates(
    workspace: Workspace, run_operator: Callable[[], Any]
) -> None:
    with run_operator():
        project, run = workspace.start_run()
        eventually(lambda: expect(workspace.store.get_run(run.id).phase is not Phase.QUEUED))

    # While the operator is down the pod runs: the restarted operator catches up once.
    eventually(lambda: expect(workspace.pods(run.name)[0]["status"]["phase"] == "Running"))
    with run_operator():
        eventually(lambda: expect(workspace.store.get_run(run.id).phase is Phase.RUNNING))
        eventually(lambda: expect(workspace.training_run(run.name)["status"]["phase"] == "Running"))

    with run_operator():  # and once more, with nothing new to do
        eventually(lambda: expect(len(workspace.event_reasons(run.name)) >= 2))

    assert [job["metadata"]["name"] for job in workspace.jobs()] == [run.name]
    lines = workspace.log_lines(project)
    assert lines[-1] == f"Job {run.name}: training started"
    assert len(lines) == len(set(lines)), lines  # no line written twice
    assert workspace.event_reasons(run.name).count("JobCreated") == 1
    assert workspace.event_reasons(run.name).count("PodRunning") == 1

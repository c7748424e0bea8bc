"""What the platform team sees: ``kubectl get trainingruns`` with the server's printer columns."""

from __future__ import annotations

from training_core.domain import Phase
from training_core.store import RunUpdate

from tests.integration.operator.conftest import Workspace, eventually, expect
from tests.integration.operator.test_lifecycle import start_training


def test_kubectl_get_trainingruns_shows_phase_progress_and_accuracy(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_training(workspace, model="resnet50", epochs=10)
    workspace.store.update_run(
        run.id, RunUpdate(progress={"epoch": 3, "total_epochs": 10, "val_accuracy": 0.875})
    )
    eventually(
        lambda: expect(workspace.training_run(run.name)["status"]["progress"]["display"] == "3/10")
    )

    lines = workspace.kubectl("get", "trainingruns").splitlines()
    assert lines[0].split() == [
        "NAME", "PROJECT", "MODEL", "WORLD", "PHASE", "PROGRESS", "VAL-ACC", "AGE"
    ]
    name, project_id, model, world, phase, progress, accuracy, age = lines[1].split()
    assert (name, project_id, model, world, phase, progress) == (
        run.name,
        str(project.id),
        "resnet50",
        "1",  # one process: one node, one GPU
        "Running",
        "3/10",
    )
    assert float(accuracy) == 0.875 and age.endswith(("s", "m"))

    # The short name and the category find the same runs.
    assert workspace.kubectl("get", "tr", run.name).splitlines()[1].split()[0] == run.name
    assert run.name in workspace.kubectl("get", "training")
    assert workspace.store.get_run(run.id).phase is Phase.RUNNING

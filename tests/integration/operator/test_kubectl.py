"""What the platform team sees: ``kubectl get trainingruns`` with the printer columns."""

from __future__ import annotations

import shutil
import subprocess

from training_core.domain import Phase
from training_core.store import RunUpdate

from tests.fixtures.kube import KubeApi
from tests.integration.operator.conftest import Cluster, eventually
from tests.integration.operator.test_lifecycle import _assert, start_training


def kubectl(kube_api: KubeApi, *args: str) -> str:
    binary = shutil.which("kubectl")
    assert binary, "kubectl is needed: apt-get install kubectl (or kubernetes-client)"
    result = subprocess.run(
        [binary, "--kubeconfig", str(kube_api.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubectl_get_trainingruns_shows_phase_progress_and_accuracy(
    cluster: Cluster, operator: object, kube_api: KubeApi
) -> None:
    project, run = start_training(cluster, model="resnet50", epochs=10)
    cluster.store.update_run(
        run.id, RunUpdate(progress={"epoch": 3, "total_epochs": 10, "val_accuracy": 0.875})
    )
    eventually(
        lambda: _assert(cluster.training_run(run.name)["status"]["progress"]["display"] == "3/10")
    )

    lines = kubectl(kube_api, "get", "trainingruns").splitlines()
    assert lines[0].split() == ["NAME", "PROJECT", "MODEL", "PHASE", "PROGRESS", "VAL-ACC", "AGE"]
    name, project_id, model, phase, progress, accuracy, age = lines[1].split()
    assert (name, project_id, model, phase, progress) == (
        run.name,
        str(project.id),
        "resnet50",
        "Running",
        "3/10",
    )
    assert float(accuracy) == 0.875 and age.endswith(("s", "m"))

    # The short name and the category find the same runs.
    assert kubectl(kube_api, "get", "tr", run.name).splitlines()[1].split()[0] == run.name
    assert run.name in kubectl(kube_api, "get", "training")
    assert cluster.store.get_run(run.id).phase is Phase.RUNNING

"""Two pods train one model together: the operator's Indexed Job and headless Service, the
real trainer in each pod (run by the kubelet stand-in), meeting at node 0's address.

It needs the distributed trainer: with ``TRAINING_NODES`` × ``TRAINING_PROCESSES_PER_NODE``
> 1 the trainer starts torch's elastic agent, node rank from ``JOB_COMPLETION_INDEX``, node 0
at ``TRAINING_MASTER_ADDR``:``TRAINING_MASTER_PORT``, and rank 0 alone writes progress, logs
and the model. A trainer that trains each pod on its own logs and records twice, and fails it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from training_core.blobs import open_blob_store
from training_core.domain import Phase
from training_core.settings import load_settings

from tests.fixtures.digits import DigitsZip
from tests.integration.operator.conftest import ACCELERATOR, Workspace, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


@pytest.fixture
def trainer_program() -> tuple[list[str], dict[str, str]]:
    """The trainer image's own entrypoint, one CPU thread per process on this small machine
    (with the test's own import path, as the image has its packages)."""
    path = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    return [sys.executable, "-m", "trainer"], {"OMP_NUM_THREADS": "1", **path}


@pytest.fixture
def bucket(workspace: Workspace, database_url: str, tmp_path: Path) -> str:
    """The trainer's settings as the chart's ConfigMap carries them: the test's Postgres, and a
    folder as the bucket (every pod runs on this machine)."""
    url = f"file://{tmp_path / 'bucket'}"
    workspace.core.patch_namespaced_config_map("training-agent-settings", workspace.namespace, {
        "data": {"STORE_BACKEND": "postgres", "DATABASE_URL": database_url, "BUCKET_URL": url,
                 "LOG_FORMAT": "text"},
    })
    return url


def test_two_pods_train_one_model_together(
    workspace: Workspace, operator: object, bucket: str, digits_zip: DigitsZip
) -> None:
    blobs = open_blob_store(load_settings(bucket_url=bucket))
    dataset_url = f"{bucket}/raw/digits.zip"
    blobs.upload(digits_zip(16), dataset_url)
    project, run = workspace.start_run(
        bucket_url=bucket, dataset_url=dataset_url, model="resnet18", epochs=2, image_size=16,
        batch_size=64, pretrained=False, seed=0,
        resources={"accelerator": ACCELERATOR, "nodes": 2, "gpu_count": 1},
    )

    def pod_logs() -> str:
        return "\n".join(
            f"--- {pod['metadata']['name']}\n{workspace.kubelet.log_of(pod['metadata']['name'])[-3000:]}"
            for pod in workspace.pods(run.name)
        )

    def finished() -> None:
        phase = workspace.store.get_run(run.id).phase
        assert phase.is_terminal, phase
        assert workspace.job(run.name)["status"].get("succeeded") == 2

    try:
        eventually(finished, timeout=360, interval=1)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{pod_logs()}") from None
    stored = workspace.store.get_run(run.id)
    assert stored.phase is Phase.SUCCEEDED, (stored.error, pod_logs())
    assert stored.progress["epoch"] == 2
    assert workspace.store.get_project(project.id).status == "trained"
    # One model, from rank 0 alone; one log of the start, not one per pod.
    [model] = workspace.store.get_models(project.id)
    assert model.gcs_url == run.model_url and blobs.exists(run.model_url)
    lines = workspace.log_lines(project)
    assert len([line for line in lines if line.startswith("Training started")]) == 1, lines
    assert len(workspace.pods(run.name)) == 2  # no retry was needed
    assert workspace.training_run(run.name)["status"]["worldSize"] == 2

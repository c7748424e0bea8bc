"""A trainer killed mid-run (SIGTERM: preemption or cancel; SIGKILL: a lost node) resumes
from its last checkpoint in the bucket and finishes with exactly one model and one row."""

from __future__ import annotations

import json
import re
import signal
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from trainer.artifact import build_artifact
from trainer.engine import EpochResult
from trainer.models import create_model
from training_core.domain import Phase
from training_core.runspec import EXIT_OK, EXIT_RETRY

from tests.integration.trainer.conftest import TrainerCase

pytestmark = [pytest.mark.slow, pytest.mark.digits(limit=600)]


def test_a_killed_trainer_resumes_from_its_checkpoint(trainer_case: TrainerCase) -> None:
    case = trainer_case
    case.spec = case.spec.model_copy(update={"epochs": 3})
    checkpoints = f"{case.spec.model_url}.checkpoints/{case.run.id}/"

    # 1. SIGTERM during epoch 2: the current batch ends, a checkpoint is written, exit 75.
    first = case.start()
    case.wait_for_epoch(first, 1)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_RETRY, case.output()
    assert case.store.get_run(case.run.id).phase == Phase.RUNNING  # not over: it will resume
    assert case.store.get_project(case.project.id).status == "training"
    assert "Training interrupted (SIGTERM)" in case.log_lines()[-1]
    assert f"{checkpoints}latest.json" in case.objects()
    assert case.spec.model_url not in case.objects()

    # 2. SIGKILL once epoch 2 is done: nothing runs on the way out; the bucket still has epoch 2.
    second = case.start()
    case.wait_for_epoch(second, 2)
    second.kill()
    second.wait(timeout=30)

    # 3. The next attempt finishes from epoch 3.
    assert case.run_trainer() == EXIT_OK, case.output()

    lines = case.log_lines()
    resumes = [line for line in lines if line.startswith("Resuming from checkpoint")]
    assert re.fullmatch(
        r"Resuming from checkpoint: 1/3 epochs done and \d+ batches of epoch 2", resumes[0]
    )
    assert resumes[1] == "Resuming from checkpoint: 2/3 epochs done"
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]  # each epoch trained once

    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    history = case.store.get_run(case.run.id).progress["history"]
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]  # the epochs before the resumes too
    assert case.store.get_project(case.project.id).status == "trained"
    [model] = case.store.get_models(case.project.id)
    assert model.run_id == case.run.id
    assert len(model.metadata["classes"]) == 10
    objects = case.objects()
    assert objects.count(case.spec.model_url) == 1
    assert not any(".checkpoints/" in url for url in objects)  # deleted once the run ended
    assert list(case.scratch.iterdir()) == []  # the killed attempt's scratch too


@pytest.mark.digits(limit=300)
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_a_checkpoint_written_on_sigterm_is_whole_and_resumable(
    trainer_case: TrainerCase, tmp_path: Path, model: str
) -> None:
    """What a Spot node's notice leaves in the bucket: one whole checkpoint inside epoch 2,
    loadable as data into the run's architecture, from which the run finishes."""
    case = trainer_case
    case.spec = case.spec.model_copy(update={"epochs": 2, "model": model})
    pointer_url = f"{case.spec.model_url}.checkpoints/{case.run.id}/latest.json"

    first = case.start()
    case.wait_for_epoch(first, 1)
    time.sleep(0.5)  # past epoch 1's end: the signal lands inside epoch 2's batches
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_RETRY, case.output()

    objects = case.objects()
    assert pointer_url in objects
    pointer = json.loads(case.blobs.read_bytes(pointer_url))
    assert pointer["url"] in objects
    case.blobs.download(pointer["url"], tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epochs_done"] == pointer["epochs_done"] == 1
    batches = state["position"]["batches"]
    assert batches > 0 and state["position"] == pointer["position"]  # inside epoch 2
    fresh = create_model(model, 10)
    fresh.load_state_dict(state["model"])  # strict: every layer of this architecture, its shape
    assert state["optimizer"]["state"] and state["lr_scheduler"]["last_epoch"] > 0

    assert case.run_trainer() == EXIT_OK, case.output()
    lines = case.log_lines()
    assert f"Resuming from checkpoint: 1/2 epochs done and {batches} batches of epoch 2" in lines
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/2", "Epoch 2/2"]  # each epoch trained once
    [row] = case.store.get_models(case.project.id)
    assert row.run_id == case.run.id and row.metadata["architecture"] == model
    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    assert not any(".checkpoints/" in url for url in case.objects())


def test_a_trainer_lost_without_notice_resumes_inside_the_epoch(trainer_case: TrainerCase) -> None:
    case = trainer_case
    case.spec = case.spec.model_copy(update={"epochs": 3})
    case.env = {**case.env, "CHECKPOINT_INTERVAL_SECONDS": "0.05"}  # about every batch

    pointer = f"{case.spec.model_url}.checkpoints/{case.run.id}/latest.json"

    def saved_inside_epoch_2() -> bool:
        if pointer not in case.objects():
            return False
        latest = json.loads(case.blobs.read_bytes(pointer))
        return latest["epochs_done"] == 1 and latest["position"]["batches"] > 0

    first = case.start()
    deadline = time.monotonic() + 180
    while not saved_inside_epoch_2():
        assert first.poll() is None and time.monotonic() < deadline, case.output()
        time.sleep(0.05)
    first.kill()  # no SIGTERM, no checkpoint on the way out
    first.wait(timeout=30)

    assert case.run_trainer() == EXIT_OK, case.output()
    [resume] = [line for line in case.log_lines() if line.startswith("Resuming from checkpoint")]
    found = re.fullmatch(
        r"Resuming from checkpoint: 1/3 epochs done and (\d+) batches of epoch 2", resume
    )
    assert found and int(found.group(1)) > 0, resume
    assert len(case.store.get_models(case.project.id)) == 1
    assert not any(".checkpoints/" in url for url in case.objects())


def test_a_model_uploaded_before_a_crash_is_recorded_not_retrained(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An attempt died between uploading the model and recording it: the next one records it."""
    case = trainer_case
    history = [
        asdict(
            EpochResult(
                1, train_loss=0.5, val_loss=0.4, val_accuracy=0.9, images_per_second=80, seconds=12
            )
        )
    ]
    metrics = {"final_loss": 0.5, "val_accuracy": 0.9, "test_accuracy": None}
    artifact = build_artifact(
        create_model("resnet18", 10), architecture="resnet18", classes=[str(d) for d in range(10)],
        input_size=16, metrics={**metrics, "training_time_seconds": 12.0, "history": history},
        hyperparameters={"epochs": 1}, run_id=str(case.run.id),
    )  # fmt: skip
    torch.save(artifact, tmp_path / "model.pth")
    case.blobs.upload(
        tmp_path / "model.pth", case.spec.model_url, metadata={"run_id": str(case.run.id)}
    )

    assert case.run_in_process(monkeypatch, epochs=1) == EXIT_OK

    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    [model] = case.store.get_models(case.project.id)
    assert model.metadata["val_accuracy"] == 0.9 and model.metadata["training_time_seconds"] == 12.0
    lines = case.log_lines()
    assert any(line.startswith("Model already uploaded") for line in lines)
    assert not any(line.startswith("Epoch ") for line in lines)  # nothing trained again

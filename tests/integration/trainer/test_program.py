"""The whole program, as a Job runs it, against a real Postgres and a real GCS-protocol server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from training_core.domain import Phase
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_OK

from tests.integration.trainer.conftest import TrainerCase


@pytest.mark.slow
def test_a_run_trains_uploads_and_records_its_model(
    trainer_case: TrainerCase, tmp_path: Path
) -> None:
    case = trainer_case

    assert case.run_trainer() == EXIT_OK, case.output()

    # The run and the project say it is done.
    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.SUCCEEDED and run.started_at and run.finished_at
    assert run.progress["epoch"] == 4 and run.progress["total_epochs"] == 4
    assert run.progress["images_per_second"] > 0 and run.progress["eta_seconds"] == 0
    assert [epoch["epoch"] for epoch in run.progress["history"]] == [1, 2, 3, 4]  # the curves
    assert run.progress["history"][-1]["val_accuracy"] == run.progress["val_accuracy"]
    assert case.store.get_project(case.project.id).status == "trained"

    # One models row, pointing at the model, with what a user looks for first.
    [model] = case.store.get_models(case.project.id)
    assert model.run_id == case.run.id and model.gcs_url == case.spec.model_url
    assert model.gcs_url.endswith("_model.pth") and model.framework == "pytorch"
    assert model.metadata["epochs"] == 4
    assert model.metadata["val_accuracy"] >= 0.9
    assert model.metadata["test_accuracy"] >= 0.85
    assert model.metadata["classes"] == [str(digit) for digit in range(10)]
    assert model.metadata["final_loss"] > 0 and model.metadata["training_time_seconds"] > 0

    # The logs tell the story, epoch by epoch.
    lines = case.log_lines()
    assert lines[0].startswith("Training started: resnet18, 4 epochs")
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert len(epochs) == 4
    assert re.fullmatch(
        r"Epoch 4/4 completed\. Loss: \d\.\d{3}, val acc: \d\.\d{2} \(\d+ images/s\)", epochs[-1]
    )
    assert any(
        line.startswith("Input pipeline: decoded-image cache in cpu memory") for line in lines
    )
    assert re.match(r"Training finished in \d+s of training .*val acc 0\.9\d\d", lines[-1])

    # The bucket holds the model, its companions and its TensorBoard events (one file: one
    # attempt); checkpoints and scratch files are gone.
    base = case.spec.model_url.removesuffix(".pth")
    objects = case.objects()
    events = [
        url for url in objects
        if url.startswith(f"{base}_tb/{case.spec.run_name}/events.out.tfevents.")
    ]  # fmt: skip
    assert len(events) == 1
    assert objects == sorted(
        [
            f"{case.bucket_url}/raw/digits.zip",
            case.spec.model_url,
            f"{base}.metrics.json",
            f"{base}.png",
            *events,
        ]
    )
    metrics = json.loads(case.blobs.read_bytes(f"{base}.metrics.json"))
    assert len(metrics["history"]) == 4 and len(metrics["confusion_matrix"]) == 10
    assert case.blobs.read_bytes(f"{base}.png")[:4] == b"\x89PNG"
    assert list(case.scratch.iterdir()) == []

    # The artifact classifies a validation image correctly in a fresh process.
    model_path = tmp_path / "model.pth"
    case.blobs.download(case.spec.model_url, model_path)
    artifact = torch.load(model_path, weights_only=True)
    assert (
        artifact["metadata"]["architecture"] == "resnet18"
        and artifact["metadata"]["input_size"] == 16
    )
    assert artifact["metadata"]["run_id"] == str(case.run.id)
    images = _validation_images(tmp_path, count=10)
    script = (
        "import sys, json; from pathlib import Path; from trainer import load_model; "
        "m = load_model(Path(sys.argv[1])); "
        "print(json.dumps([p.label for p in m.classify([Path(a) for a in sys.argv[2:]])]))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script, str(model_path), *map(str, images)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    predicted = json.loads(answer.stdout)
    truth = [path.parent.name for path in images]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 8, (predicted, truth)

    # Running the program again after success changes nothing.
    logs_before = case.log_lines()
    assert case.run_trainer() == EXIT_OK
    assert "is already Succeeded: nothing to do" in case.output()
    assert case.log_lines() == logs_before
    assert len(case.store.get_models(case.project.id)) == 1
    assert case.store.get_run(case.run.id).finished_at == run.finished_at


def _validation_images(folder: Path, count: int) -> list[Path]:
    """One validation image per class from the dataset zip the run trained on."""
    from training_agent.samples import write_digits_zip

    archive = write_digits_zip(folder / "digits.zip", 16)
    out = []
    with zipfile.ZipFile(archive) as opened:
        for digit in range(count):
            name = next(n for n in opened.namelist() if n.startswith(f"val/{digit}/"))
            target = folder / "val" / str(digit) / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(opened.read(name))
            out.append(target)
    return out


@pytest.mark.digits(limit=200)
def test_pretrained_weights_come_from_a_bucket_url(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    case = trainer_case
    backbone = torchvision.models.resnet18()  # an ImageNet-shaped state_dict (1000 classes)
    torch.save(backbone.state_dict(), tmp_path / "resnet18.pth")
    weights_url = f"{case.bucket_url}/weights/resnet18.pth"
    case.blobs.upload(tmp_path / "resnet18.pth", weights_url)

    code = case.run_in_process(monkeypatch, epochs=1, pretrained=True, weights_url=weights_url)

    assert code == EXIT_OK, case.log_lines()
    [model] = case.store.get_models(case.project.id)
    assert model.metadata["classes"] == [str(digit) for digit in range(10)]
    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED


def test_a_missing_weights_url_fails_the_run(
    trainer_case: TrainerCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    weights_url = f"{case.bucket_url}/weights/none.pth"
    code = case.run_in_process(monkeypatch, pretrained=True, weights_url=weights_url)
    assert code == EXIT_DO_NOT_RETRY
    assert case.store.get_run(case.run.id).error == (
        f"Training failed at step 'build model': weights {weights_url} not found"
    )
    assert case.store.get_project(case.project.id).status == "failed"

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from trainer.artifact import build_artifact, load_model
from trainer.charts import write_charts, write_metrics_json
from trainer.checkpoints import Checkpoints
from trainer.models import create_model
from training_core.blobs.local import LocalBlobStore
from training_core.errors import InvalidInput


def _state(epochs_done: int, batches: int = 0) -> dict[str, object]:
    return {
        "epochs_done": epochs_done,
        "position": {"batches": batches, "loss_sum": 0.0, "samples": 0, "seconds": 0.0},
        "seed": 5,
        "weights": torch.full((3,), float(epochs_done)),
    }


def _objects(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".blob-" not in p.name
    )


def test_checkpoints_move_forward_and_leave_one_behind(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    checkpoints = Checkpoints(LocalBlobStore(), f"file://{bucket}/models/m.pth", "run-1", scratch)
    assert checkpoints.load_latest() is None

    checkpoints.save(_state(1))
    checkpoints.save(_state(2, batches=7))

    latest = checkpoints.load_latest()
    assert latest is not None and latest["epochs_done"] == 2 and latest["position"]["batches"] == 7
    assert torch.equal(latest["weights"], torch.full((3,), 2.0))
    assert _objects(bucket) == [
        "models/m.pth.checkpoints/run-1/latest.json",
        "models/m.pth.checkpoints/run-1/step-0002-000007.pt",
    ]
    assert checkpoints.latest_pointer()["seed"] == 5  # type: ignore[index]
    assert list(scratch.iterdir()) == []  # no local copies left

    checkpoints.clear()
    assert _objects(bucket) == []


def test_a_position_already_saved_is_not_written_again(tmp_path: Path) -> None:
    """A stop asked during an epoch's end saves nothing twice: that epoch's checkpoint holds it."""
    uploads: list[str] = []

    class CountingStore(LocalBlobStore):
        def upload(self, src: Path, url: str, **options: object) -> object:  # type: ignore[override]
            uploads.append(url.rsplit("/", 1)[-1])
            return super().upload(src, url, **options)  # type: ignore[arg-type]

    checkpoints = Checkpoints(CountingStore(), f"file://{tmp_path}/m.pth", "run-1", tmp_path)
    first = checkpoints.save(_state(1))
    assert checkpoints.save(_state(1)) == first
    checkpoints.save(_state(1, batches=3))
    assert uploads == ["step-0001-000000.pt", "step-0001-000003.pt"]
    assert checkpoints.latest_pointer()["position"]["batches"] == 3  # type: ignore[index]


def test_a_pointer_outside_the_run_is_ignored(tmp_path: Path) -> None:
    store = LocalBlobStore()
    checkpoints = Checkpoints(store, f"file://{tmp_path}/m.pth", "run-1", tmp_path)
    store.write_bytes(
        checkpoints.pointer, json.dumps({"url": f"file://{tmp_path}/elsewhere.pt"}).encode()
    )
    assert checkpoints.load_latest() is None


def test_the_artifact_loads_and_classifies(tmp_path: Path) -> None:
    model = create_model("resnet18", 3)
    artifact = build_artifact(
        model, architecture="resnet18", classes=["cat", "dog", "owl"], input_size=32,
        metrics={"val_accuracy": 0.5}, hyperparameters={"epochs": 1}, run_id="r", project_id="p",
    )  # fmt: skip
    path = tmp_path / "model.pth"
    torch.save(artifact, path)

    loaded = load_model(path)

    assert loaded.classes == ["cat", "dog", "owl"]
    assert loaded.metadata["versions"]["torch"] == torch.__version__
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name])
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    [prediction] = loaded.classify([image])
    assert prediction.label in loaded.classes and 0 < prediction.confidence <= 1
    batch = loaded.preprocess(image)
    assert batch.shape == (3, 32, 32)


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(InvalidInput, match="is not a training-agent-model file"):
        load_model(path)


def test_charts_and_metrics_are_written(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8},
    ]
    png = write_charts(history, [[3, 1], [0, 4]], ["a", "b"], tmp_path / "c.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 500
    metrics = write_metrics_json({"history": history}, tmp_path / "m.json")
    assert json.loads(metrics.read_text())["history"][1]["val_accuracy"] == 0.8

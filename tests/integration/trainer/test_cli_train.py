"""``training-agent train``: a one-off local training, no API and no database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer import load_model
from training_agent.cli import app
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_OK
from typer.testing import CliRunner, Result

from tests.fixtures.digits import DigitsZip

pytestmark = pytest.mark.slow


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ, "SCRATCH_DIR": str(tmp_path / "scratch"), "OMP_NUM_THREADS": "1", "COLUMNS": "200",
    }  # fmt: skip
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "training_agent", "train", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def _train_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """The same command through typer in this process (no interpreter and torch start-up)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("COLUMNS", "200")
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return CliRunner().invoke(app, ["train", *args])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_train_writes_a_model_to_the_output_folder(
    tmp_path: Path, digits_zip: DigitsZip, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = digits_zip(16, 300)
    args = ["--dataset", str(dataset), "--model", "resnet18", "--epochs", "1", "--image-size", "16",
            "--batch-size", "32", "--seed", "1", "--output", "out"]  # fmt: skip

    done = _train(tmp_path, *args)

    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "Epoch 1/1 completed. Loss:" in done.stdout
    assert "Input pipeline: decoded-image cache in cpu memory" in done.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "model.metrics.json",
        "model.png",
        "model.pth",
        "model_tb",  # TensorBoard events: tensorboard --logdir out
    ]  # fmt: skip — and no checkpoints left
    assert len(list((out / "model_tb").glob("local-*/events.out.tfevents.*"))) == 1  # its run's
    loaded = load_model(out / "model.pth")
    assert loaded.classes == [str(d) for d in range(10)] and loaded.input_size == 16
    assert list((tmp_path / "scratch").iterdir()) == []

    # The same command again finds its model and changes nothing.
    before = (out / "model.pth").read_bytes()
    again = _train_in_process(tmp_path, monkeypatch, *args)
    assert again.exit_code == EXIT_OK, again.output
    assert "Model already uploaded" in again.output and "Epoch" not in again.output
    assert (out / "model.pth").read_bytes() == before


def test_train_with_two_processes_writes_one_model(tmp_path: Path, digits_zip: DigitsZip) -> None:
    dataset = digits_zip(16, 300)

    done = _train(
        tmp_path, "--dataset", str(dataset), "--epochs", "1", "--image-size", "16",
        "--batch-size", "32", "--seed", "1", "--output", "out", "--nproc", "2",
    )  # fmt: skip

    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "Training on 2 processes on cpu" in done.stdout
    assert done.stdout.count("Epoch 1/1 completed. Loss:") == 1  # rank 0 alone tells it
    loaded = load_model(tmp_path / "out" / "model.pth")
    assert loaded.classes == [str(d) for d in range(10)]
    assert not any(p.name.endswith(".checkpoints") for p in (tmp_path / "out").iterdir())
    assert list((tmp_path / "scratch").iterdir()) == []


def test_train_refuses_a_missing_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = _train_in_process(tmp_path, monkeypatch, "--dataset", "nowhere.zip", "--output", "out")
    assert done.exit_code == EXIT_DO_NOT_RETRY
    assert "Training failed at step 'download dataset': dataset" in done.output
    assert "nowhere.zip not found" in done.output
    assert not (tmp_path / "out" / "model.pth").exists()

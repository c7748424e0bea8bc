"""bf16 on the CPU trains as well as fp32: the same digits, seed and steps, both precisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_core.runspec import EXIT_OK

from tests.fixtures.digits import DigitsZip

pytestmark = pytest.mark.slow


def _train(folder: Path, dataset: Path, precision: str) -> tuple[str, float]:
    """``training-agent train`` with ``PRECISION``: its output and the model's val accuracy."""
    folder.mkdir()
    env = {
        **os.environ, "SCRATCH_DIR": str(folder / "scratch"), "OMP_NUM_THREADS": "1",
        "COLUMNS": "200", "PRECISION": precision,
    }  # fmt: skip
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "training_agent", "train", "--dataset", str(dataset),
         "--model", "resnet18", "--epochs", "2", "--image-size", "32", "--batch-size", "32",
         "--seed", "1", "--output", "out"],
        env=env, cwd=folder, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    metrics = json.loads((folder / "out" / "model.metrics.json").read_text())
    return done.stdout, metrics["val_accuracy"]


def test_bf16_trains_digits_as_well_as_fp32(tmp_path: Path, digits_zip: DigitsZip) -> None:
    # 32 px: below it a CPU refuses bf16 (NaN gradients, see trainer.precision).
    dataset = digits_zip(32)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        output, accuracy[precision] = _train(tmp_path / precision, dataset, precision)
        # The chosen precision and why, in the run's log (bf16 may be emulated on this CPU).
        assert f"Training on cpu (eager, {precision}: PRECISION={precision}" in output
    assert accuracy["fp32"] >= 0.85, accuracy  # 2 epochs from scratch learn the digits
    assert accuracy["bf16"] >= 0.85, accuracy
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.05, accuracy

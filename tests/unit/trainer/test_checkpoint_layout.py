"""The trainer writes a run's files where the launchers look for them (to remove what an
ended run left)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from trainer.checkpoints import Checkpoints
from training_core.blobs.local import LocalBlobStore
from training_core.runspec import checkpoints_prefix


def test_the_trainer_keeps_checkpoints_under_the_shared_prefix(tmp_path: Path) -> None:
    run_id, model_url = uuid4(), f"file://{tmp_path}/models/cats_model.pth"

    checkpoints = Checkpoints(LocalBlobStore(), model_url, run_id, tmp_path)

    assert checkpoints.prefix == checkpoints_prefix(model_url, run_id)

"""The run's progress carries every finished epoch, a resumed run's earlier ones included."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import torch
from trainer.engine import Interrupted
from trainer.outcome import Outcome, epoch_progress, final_progress
from training_core.domain import Progress
from training_core.runspec import RunSpec

from tests.unit.trainer.test_engine import _trainer

KEYS = {"epoch", "loss", "val_loss", "val_accuracy", "images_per_second", "seconds"}


def test_each_epochs_progress_holds_the_history_so_far_and_a_resume_keeps_it() -> None:
    first = _trainer()
    published: list[Progress] = []
    stops = iter([False] * 10 + [True] * 100)  # epoch 1 is 10 batches; stop right after it

    try:
        first.fit(lambda result: published.append(epoch_progress(first, result)), lambda: next(stops))
    except Interrupted:
        pass
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    resumed = _trainer(seed=99)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    resumed.fit(lambda result: published.append(epoch_progress(resumed, result)))

    assert [p.epoch for p in published] == [1, 2, 3]
    assert [[h.epoch for h in p.history or []] for p in published] == [[1], [1, 2], [1, 2, 3]]
    last = published[-1]
    assert last.history[0] == published[0].history[0]  # epoch 1, from before the resume
    assert last.history[-1].loss == last.loss and last.history[-1].val_accuracy == last.val_accuracy
    stored = last.model_dump(mode="json", exclude_none=True)
    assert set(stored["history"][0]) == KEYS
    assert len(json.dumps(stored["history"])) < 150 * len(stored["history"])  # small per epoch


def test_the_final_progress_holds_the_whole_history() -> None:
    trainer = _trainer()
    history = trainer.fit(lambda _: None)
    spec = RunSpec(
        run_id="9b1c2d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e", run_name="train-x-1",
        project_id="3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34", dataset_url="file:///d.zip",
        model="resnet18", model_url="file:///m.pth", epochs=3,
    )  # fmt: skip
    outcome = Outcome(Path("m.pth"), {"history": [asdict(r) for r in history]}, {})

    final = final_progress(spec, outcome)

    assert [h.epoch for h in final.history or []] == [1, 2, 3]
    assert final.history == Progress.history_of(asdict(r) for r in history)
    assert final.eta_seconds == 0 and final.epoch == 3


def test_history_points_are_rounded_and_keep_what_is_unknown_unknown() -> None:
    [point] = Progress.history_of([{
        "epoch": 2, "train_loss": 0.123456789, "val_loss": None, "val_accuracy": 0.987654321,
        "images_per_second": 812.3456, "seconds": 3.14159,
    }])  # fmt: skip

    assert point.model_dump() == {
        "epoch": 2, "loss": 0.12346, "val_loss": None, "val_accuracy": 0.98765,
        "images_per_second": 812.3, "seconds": 3.14,
    }  # fmt: skip

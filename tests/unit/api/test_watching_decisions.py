"""What the runs page reads, as plain functions: the epoch history, where a model's metrics
file is, which run has one, its class names, and a metrics file that is not one."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from training_core.domain import EpochPoint, ModelRecord, Phase, Run
from training_api.decisions import (
    classes_of,
    history_of,
    metrics_url_of,
    parse_metrics,
    progress_without_history,
    with_metrics,
)
from training_api.errors import ApiError

PROJECT_ID = UUID("3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34")
MODEL_URL = "gs://models-bucket/models/digits_model.pth"


def run(phase: Phase = Phase.SUCCEEDED, **fields) -> Run:
    values = {"id": uuid4(), "project_id": PROJECT_ID, "name": "train-x-1", "phase": phase,
              "model_url": MODEL_URL}  # fmt: skip
    return Run(**{**values, **fields})


def test_the_history_is_read_from_the_progress_and_answered_once() -> None:
    point = {"epoch": 1, "loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8,
             "images_per_second": 900.0, "seconds": 1.5}  # fmt: skip
    latest = run(Phase.RUNNING, progress={"epoch": 1, "loss": 0.5, "history": [point, 7]})

    assert history_of(latest) == [EpochPoint(**point)]
    assert progress_without_history(latest) == {"epoch": 1, "loss": 0.5}
    assert history_of(None) == [] and history_of(run(progress={"history": "?"})) == []


def test_the_metrics_file_sits_next_to_the_model() -> None:
    assert metrics_url_of(MODEL_URL) == "gs://models-bucket/models/digits_model.metrics.json"


@pytest.mark.parametrize("phase", [Phase.QUEUED, Phase.RUNNING, Phase.FAILED, Phase.CANCELLED])
def test_only_a_succeeded_run_has_metrics(phase: Phase) -> None:
    with pytest.raises(ApiError) as refused:
        with_metrics(run(phase))
    assert refused.value.status == 404 and refused.value.code == "metrics_not_found"
    assert phase.value in refused.value.message
    with pytest.raises(ApiError):
        with_metrics(None)
    latest = run()
    assert with_metrics(latest) is latest


def test_class_names_come_from_the_runs_models_row() -> None:
    latest = run()

    def record(run_id, classes) -> ModelRecord:
        return ModelRecord(id=uuid4(), project_id=PROJECT_ID, run_id=run_id, name="m",
                           gcs_url=MODEL_URL, metadata={"classes": classes})  # fmt: skip

    older = record(uuid4(), ["a", "b"])
    assert classes_of([older, record(latest.id, ["cat", "dog"])], latest) == ["cat", "dog"]
    assert classes_of([older], latest) is None
    assert classes_of([record(latest.id, "cat,dog")], latest) is None


def test_a_metrics_file_must_hold_a_confusion_matrix() -> None:
    parsed = parse_metrics(b'{"confusion_matrix": [[1, 0], [0, 1]], "extra": true}', "u")
    assert parsed.confusion_matrix == [[1, 0], [0, 1]] and parsed.history == []

    for broken in (b"{not json", b"[]", b'{"confusion_matrix": "none"}', b"{}"):
        with pytest.raises(ApiError) as refused:
            parse_metrics(broken, "gs://b/m.metrics.json")
        assert refused.value.status == 502 and refused.value.code == "invalid_metrics"
        assert "gs://b/m.metrics.json" in refused.value.message

"""The experiment trackers' own logic: where the event folder is, when a failing tracker is
tried again or given up, and what a resumed attempt adds to the events an earlier one wrote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer.engine import EpochResult
from trainer.experiments import (
    EPOCH_METRICS,
    FAILURES_BEFORE_GIVING_UP,
    MlflowRun,
    Outage,
    TensorBoardEvents,
    configure_mlflow_client,
    event_folder_url,
    missing_epochs,
    redact_uri,
    short_error,
)
from training_core.blobs.local import LocalBlobStore
from training_core.errors import BlobUnavailable
from training_core.runspec import RunSpec

from tests.fixtures.gcs import free_port


def _result(epoch: int) -> EpochResult:
    return EpochResult(
        epoch=epoch, train_loss=1.0 / epoch, val_loss=1.5 / epoch, val_accuracy=0.5 + epoch / 100,
        images_per_second=100.0 * epoch, seconds=1.0,
    )  # fmt: skip


# -- where the events go -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_url", "folder"),
    [
        ("gs://bucket/models/flowers_model.pth", "gs://bucket/models/flowers_model_tb/run-1/"),
        ("file:///srv/bucket/models/x_model.pth", "file:///srv/bucket/models/x_model_tb/run-1/"),
        ("file:///home/me/digits-model/model.pth", "file:///home/me/digits-model/model_tb/run-1/"),
    ],
)
def test_the_event_folder_is_beside_the_model_one_per_run(model_url: str, folder: str) -> None:
    assert event_folder_url(model_url, "run-1") == folder
    assert event_folder_url(model_url, "run-2") != folder  # a reused model URL: runs stay apart


# -- failing, retrying, giving up ------------------------------------------------------------
def test_the_first_failure_is_reported_then_retried_then_given_up() -> None:
    outage = Outage(limit=3)
    first, second, third = outage.failed(), outage.failed(), outage.failed()
    assert (first.report, first.give_up) == (True, False)
    assert (second.report, second.give_up) == (False, False)
    assert (third.report, third.give_up) == (False, True)
    assert outage.given_up


def test_a_success_resets_the_count_but_a_later_outage_is_not_reported_again() -> None:
    outage = Outage(limit=2)
    assert outage.failed().report
    assert outage.succeeded() is True  # back after an outage
    assert outage.succeeded() is False
    again = outage.failed()
    assert not again.report and not again.give_up  # one failure in a row, reported already
    assert outage.failed().give_up


def test_a_limit_of_one_gives_up_at_the_first_failure_and_reports_it() -> None:
    verdict = Outage(limit=1).failed()
    assert verdict.report and verdict.give_up


def test_a_resumed_attempt_adds_only_the_epochs_not_logged_yet() -> None:
    history = [_result(1), _result(2)]
    logged = {name: {1} for name in EPOCH_METRICS}
    logged["val_loss"] = {1, 2}
    missing = missing_epochs(history, logged)
    assert sorted((step, name) for step, name, _ in missing) == sorted(
        (2, name) for name in EPOCH_METRICS if name != "val_loss"
    )
    assert len(missing_epochs(history, {})) == 2 * len(EPOCH_METRICS)


def test_messages_never_show_a_tracking_uri_s_credentials() -> None:
    uri = "https://user:s3cret@mlflow.example.com:8443/prefix"
    assert redact_uri(uri) == "https://mlflow.example.com:8443/prefix"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    message = short_error(ConnectionError(f"request to {uri}/api failed\n  retry"), uri)
    assert "s3cret" not in message and "\n" not in message
    assert message == (
        "ConnectionError: request to https://mlflow.example.com:8443/prefix/api failed retry"
    )
    assert len(short_error(RuntimeError("x" * 5000))) <= 300


# -- TensorBoard events ----------------------------------------------------------------------
def _scalars(folder: Path) -> dict[str, list[int]]:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [event.step for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_a_resumed_attempt_appends_its_own_file_and_writes_no_epoch_twice(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    folder_url = f"file://{bucket}/models/m_model_tb/"
    blobs = LocalBlobStore()
    reports: list[str] = []

    first = TensorBoardEvents(blobs, folder_url, reports.append)
    first.open(tmp_path / "scratch-1", {"model": "resnet18", "epochs": 3}, [])
    first.epoch(_result(1))
    first.epoch(_result(2))  # its checkpoint (epoch 1) was the last one: epoch 2 is retrained
    first.close()

    resumed = TensorBoardEvents(blobs, folder_url, reports.append)
    resumed.open(tmp_path / "scratch-2", {"model": "resnet18", "epochs": 3}, [_result(1)])
    resumed.epoch(_result(2))
    resumed.epoch(_result(3))
    resumed.scalars({"test_accuracy": 0.9}, 3)
    resumed.close()

    folder = bucket / "models" / "m_model_tb"
    assert reports == []
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one per attempt
    steps = _scalars(folder)
    assert steps == {**{name: [1, 2, 3] for name in EPOCH_METRICS}, "test_accuracy": [3]}

    # An attempt with nothing new (the model was there already) adds no file at all.
    again = TensorBoardEvents(blobs, folder_url, reports.append)
    again.open(tmp_path / "scratch-3", {"model": "resnet18", "epochs": 3}, [])
    again.scalars({"test_accuracy": 0.9}, 3)
    again.close()
    assert reports == [] and len(list(folder.glob("events.out.tfevents.*"))) == 2


class _RefusingBucket(LocalBlobStore):
    def __init__(self) -> None:
        super().__init__()
        self.uploads = 0

    def upload(self, *args: Any, **kwargs: Any) -> Any:
        self.uploads += 1
        raise BlobUnavailable("the bucket is away")


def test_a_bucket_that_refuses_the_events_is_reported_once_then_given_up(tmp_path: Path) -> None:
    bucket = _RefusingBucket()
    reports: list[str] = []
    events = TensorBoardEvents(bucket, f"file://{tmp_path}/m_model_tb/", reports.append)
    events.open(tmp_path / "scratch", {"model": "resnet18"}, [])
    for epoch in range(1, 6):
        events.epoch(_result(epoch))  # never raises
    events.close()
    assert len(reports) == 1
    assert reports[0].startswith(
        f"Experiment tracking lost (TensorBoard events in file://{tmp_path}/m_model_tb/)"
    )
    assert "the bucket is away" in reports[0]
    assert bucket.uploads == FAILURES_BEFORE_GIVING_UP
    # The local file has every epoch all the same (written before each upload).
    assert _scalars(tmp_path / "scratch" / "tensorboard")["val_loss"] == [1, 2]


# -- MLflow away ----------------------------------------------------------------------------
def test_an_unreachable_mlflow_is_reported_once_and_given_up_quickly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training_core.settings import load_settings

    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "MLFLOW_DISABLE_TELEMETRY"):  # fmt: skip
        monkeypatch.setenv(name, "")  # restored after the test, whatever the client sets
        monkeypatch.delenv(name)
    configure_mlflow_client(load_settings(mlflow_timeout_seconds=1))
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = RunSpec(
        run_id=uuid4(), run_name="r-1", project_id=uuid4(), dataset_url="gs://b/raw/d.zip",
        model="resnet18", model_url="gs://b/models/m_model.pth", epochs=5,
    )  # fmt: skip
    reports: list[str] = []
    run = MlflowRun(uri, "training-agent", spec, {}, reports.append)
    from mlflow.tracking import MlflowClient  # imported before the clock starts

    assert MlflowClient
    started = time.monotonic()
    run.start({"model": "resnet18"}, [])
    for epoch in range(1, 6):
        run.epoch(_result(epoch))
    run.finish({"test_accuracy": 0.9}, 5, [])
    run.end("FINISHED")
    assert time.monotonic() - started < 10
    assert len(reports) == 1
    assert reports[0].startswith(f"Experiment tracking lost (MLflow at {uri})")
    assert run.outage.given_up and run.run_id is None


# -- settings ------------------------------------------------------------------------------
def test_tracking_settings_default_to_tensorboard_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from training_core.settings import load_settings

    for name in ("TENSORBOARD", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT",
                 "MLFLOW_TIMEOUT_SECONDS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.tensorboard is True and settings.mlflow_tracking_uri is None
    assert (settings.mlflow_experiment, settings.mlflow_timeout_seconds) == ("training-agent", 5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "  ")  # a chart value left blank
    monkeypatch.setenv("TENSORBOARD", "false")
    settings = load_settings()
    assert settings.mlflow_tracking_uri is None and settings.tensorboard is False


def test_with_both_trackers_off_nothing_is_written(tmp_path: Path) -> None:
    from trainer.experiments import Experiments
    from training_core.settings import load_settings

    spec = RunSpec(
        run_id=uuid4(), run_name="r-1", project_id=uuid4(), dataset_url="gs://b/raw/d.zip",
        model="resnet18", model_url=f"file://{tmp_path}/models/m_model.pth", epochs=1,
    )  # fmt: skip
    settings = load_settings(tensorboard=False, mlflow_tracking_uri=None)
    tracker: Any = None  # nothing may reach it
    experiments = Experiments(spec, settings, LocalBlobStore(), tracker)
    assert experiments.tensorboard is None and experiments.mlflow is None
    experiments.epoch(_result(1))
    experiments.succeeded({"history": [], "test_accuracy": 0.5}, tmp_path)
    experiments.close(ended=True)
    assert not (tmp_path / "models").exists()

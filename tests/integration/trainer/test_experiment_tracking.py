"""What the experiment trackers get from a real run: TensorBoard event files next to the model
in a real GCS-protocol bucket, read back with TensorBoard's own reader, and a run in a real
MLflow tracking server, read back with MLflow's client; an MLflow that goes away mid-run costs
a bounded few seconds and one log line, never the training."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer.experiments import (
    EPOCH_METRICS,
    FAILURES_BEFORE_GIVING_UP,
    RUN_ID_TAG,
    MlflowRun,
    event_folder_url,
)
from training_core.domain import Phase
from training_core.runspec import EXIT_OK, EXIT_RETRY

from tests.fixtures.mlflow import MlflowServer
from tests.integration.trainer.conftest import TrainerCase

pytestmark = [pytest.mark.slow, pytest.mark.digits(limit=300)]
OUTAGE_TIMEOUT_SECONDS = 2  # MLFLOW_TIMEOUT_SECONDS of the outage's run


@pytest.fixture(autouse=True)
def _mlflow_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer run in this process sets MLflow's client variables: restored afterwards."""
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "MLFLOW_DISABLE_TELEMETRY"):  # fmt: skip
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _with_mlflow(case: TrainerCase, server: MlflowServer, timeout: int | None = None) -> str:
    experiment = f"test-{uuid4().hex[:8]}"
    case.env.update(MLFLOW_TRACKING_URI=server.url, MLFLOW_EXPERIMENT=experiment)
    if timeout is not None:
        case.env["MLFLOW_TIMEOUT_SECONDS"] = str(timeout)
    return experiment


def _events(case: TrainerCase, tmp_path: Path) -> tuple[list[str], EventAccumulator]:
    """The run's event folder, downloaded from the bucket and read by TensorBoard."""
    folder = tmp_path / "tb"
    names = []
    for url in case.blobs.list(event_folder_url(case.spec.model_url, case.spec.run_name)):
        names.append(url.rsplit("/", 1)[-1])
        case.blobs.download(url, folder / names[-1])
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return names, accumulator


def _steps(accumulator: EventAccumulator) -> dict[str, list[int]]:
    return {
        tag: [event.step for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _mlflow_run(server: MlflowServer, experiment: str, case: TrainerCase) -> Any:
    client = MlflowClient(tracking_uri=server.url)
    found = client.search_experiments(filter_string=f"name = '{experiment}'")
    assert len(found) == 1, found
    runs = client.search_runs(
        [found[0].experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{case.run.id}'"
    )
    assert len(runs) == 1, runs  # one MLflow run per training run, whatever the attempts
    return runs[0]


def _metric_steps(server: MlflowServer, run_id: str, name: str) -> list[int]:
    history = MlflowClient(tracking_uri=server.url).get_metric_history(run_id, name)
    return sorted(metric.step for metric in history)


# -- TensorBoard -------------------------------------------------------------------------------
def test_a_finished_run_leaves_one_scalar_per_epoch_per_metric(
    trainer_case: TrainerCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    started = time.monotonic()
    assert case.run_in_process(monkeypatch, epochs=2) == EXIT_OK
    print(f"trained with TensorBoard events in {time.monotonic() - started:.1f} s")

    folder = event_folder_url(case.spec.model_url, case.spec.run_name)
    assert folder == f"{case.spec.model_url.removesuffix('.pth')}_tb/{case.spec.run_name}/"
    names, events = _events(case, tmp_path)
    assert len(names) == 1 and names[0].startswith("events.out.tfevents.")
    assert _steps(events) == {**{name: [1, 2] for name in EPOCH_METRICS}, "test_accuracy": [2]}
    metrics_url = case.spec.model_url.removesuffix(".pth") + ".metrics.json"
    metrics = json.loads(case.blobs.read_bytes(metrics_url))
    assert [e.value for e in events.Scalars("val_accuracy")] == pytest.approx(
        [row["val_accuracy"] for row in metrics["history"]]
    )
    assert events.Scalars("test_accuracy")[0].value == pytest.approx(metrics["test_accuracy"])
    assert "_hparams_/session_start_info" in events.summary_metadata
    assert f"Experiment tracking: TensorBoard events in {folder}" in case.log_lines()
    assert list(case.scratch.iterdir()) == []


# -- MLflow ------------------------------------------------------------------------------------
def test_a_run_is_tracked_in_mlflow_with_params_metrics_and_artifacts(
    trainer_case: TrainerCase, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = trainer_case
    experiment = _with_mlflow(case, mlflow_server)
    started = time.monotonic()
    assert case.run_in_process(monkeypatch, epochs=2) == EXIT_OK
    print(f"trained with MLflow in {time.monotonic() - started:.1f} s")

    run = _mlflow_run(mlflow_server, experiment, case)
    assert run.info.status == "FINISHED" and run.info.run_name == case.spec.run_name
    params = dict(run.data.params)
    assert params.pop("precision") in ("fp32", "bf16")  # what the device and the probe chose
    assert params.pop("compiled") in ("False", "True")
    assert params.pop("device") in ("cpu", "cuda")
    assert params == {
        "model": "resnet18", "epochs": "2", "learning_rate": "0.001", "batch_size": "32",
        "image_size": "16", "pretrained": "False", "seed": "0",
    }  # fmt: skip
    tags = run.data.tags
    assert tags[RUN_ID_TAG] == str(case.run.id)
    assert tags["training_agent.project_id"] == str(case.project.id)
    assert tags["training_agent.model_url"] == case.spec.model_url
    assert tags["training_agent.tensorboard"] == event_folder_url(
        case.spec.model_url, case.spec.run_name
    )
    for name in EPOCH_METRICS:
        assert _metric_steps(mlflow_server, run.info.run_id, name) == [1, 2], name
    assert _metric_steps(mlflow_server, run.info.run_id, "test_accuracy") == [2]
    [model] = case.store.get_models(case.project.id)
    assert run.data.metrics["val_accuracy"] == pytest.approx(model.metadata["val_accuracy"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(model.metadata["test_accuracy"])
    artifacts = MlflowClient(tracking_uri=mlflow_server.url).list_artifacts(run.info.run_id)
    assert sorted(a.path for a in artifacts) == ["curves.png", "metrics.json"]
    assert any(
        line.startswith("Experiment tracking: TensorBoard events in ")
        and f"MLflow run {run.info.run_id} of experiment '{experiment}'" in line
        for line in case.log_lines()
    )
    assert not any("Experiment tracking lost" in line for line in case.log_lines())


def test_a_resumed_run_continues_its_mlflow_run_and_its_event_folder(
    trainer_case: TrainerCase, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    case = trainer_case
    experiment = _with_mlflow(case, mlflow_server)
    case.spec = case.spec.model_copy(update={"epochs": 3})

    first = case.start()  # SIGTERM in epoch 2: exit 75, to be resumed
    case.wait_for_epoch(first, 1)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_RETRY, case.output()
    assert _mlflow_run(mlflow_server, experiment, case).info.status == "KILLED"

    assert case.run_trainer() == EXIT_OK, case.output()
    run = _mlflow_run(mlflow_server, experiment, case)
    assert run.info.status == "FINISHED"
    for name in EPOCH_METRICS:  # each epoch once, from whichever attempt trained it
        assert _metric_steps(mlflow_server, run.info.run_id, name) == [1, 2, 3], name
    names, events = _events(case, tmp_path)
    assert len(names) == 2  # one file per attempt, merged by TensorBoard
    assert _steps(events) == {**{name: [1, 2, 3] for name in EPOCH_METRICS}, "test_accuracy": [3]}
    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED


@pytest.mark.digits(limit=600)
def test_mlflow_going_away_mid_run_costs_seconds_and_one_log_line(
    trainer_case: TrainerCase, stoppable_mlflow: MlflowServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After epoch 1's metrics reach it, the server dies and its port answers nothing more (a
    hung server: every call waits its whole timeout). The run trains on and succeeds; the
    trainer gives MLflow up after a few failed calls."""
    case = trainer_case
    server = stoppable_mlflow
    experiment = _with_mlflow(case, server, timeout=OUTAGE_TIMEOUT_SECONDS)
    calls: list[tuple[float, float]] = []  # (start, seconds) of every MLflow call
    attempt = MlflowRun._attempt

    def timed(self: MlflowRun, what: str, call: Any) -> bool:
        started = time.monotonic()
        try:
            return attempt(self, what, call)
        finally:
            calls.append((started, time.monotonic() - started))

    monkeypatch.setattr(MlflowRun, "_attempt", timed)
    crash = CrashAfterFirstEpoch(server, experiment, case)
    crash.start()

    started = time.monotonic()
    assert case.run_in_process(monkeypatch, epochs=4) == EXIT_OK
    total = time.monotonic() - started
    crashed_at = crash.result()
    assert crashed_at is not None, "the server was not stopped during the run"
    assert crash.error is None, crash.error

    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    lost = [line for line in case.log_lines() if line.startswith("Experiment tracking lost")]
    assert len(lost) == 1, lost
    assert lost[0].startswith(f"Experiment tracking lost (MLflow at {server.url}): ")
    after = [seconds for start, seconds in calls if start >= crashed_at]
    waited = sum(after)
    print(f"trained in {total:.1f} s; {waited:.1f} s on MLflow calls after it went away")
    assert len([s for s in after if s > OUTAGE_TIMEOUT_SECONDS / 2]) <= FAILURES_BEFORE_GIVING_UP
    assert waited <= FAILURES_BEFORE_GIVING_UP * OUTAGE_TIMEOUT_SECONDS + 2
    assert f"given up after {FAILURES_BEFORE_GIVING_UP} failed calls in a row" in caplog.text


class CrashAfterFirstEpoch(threading.Thread):
    """Watches the server for the run's epoch 1, then crashes it and holds its port
    unanswered; ``result()`` gives the moment it did (``None``: it never saw epoch 1)."""

    def __init__(self, server: MlflowServer, experiment: str, case: TrainerCase) -> None:
        super().__init__(daemon=True)
        self.server, self.experiment, self.case = server, experiment, case
        self.crashed_at: float | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        client = MlflowClient(tracking_uri=self.server.url)
        deadline = time.monotonic() + 240
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                logged = self._first_epoch_logged(client)
            except Exception:  # noqa: BLE001 - the run is not there yet
                logged = False
            if logged:
                self.crashed_at = time.monotonic()
                try:
                    self.server.stop(crash=True)
                    self.server.blackhole()
                except BaseException as error:  # the test says it
                    self.error = error
                return
            time.sleep(0.05)

    def _first_epoch_logged(self, client: MlflowClient) -> bool:
        experiments = client.search_experiments(filter_string=f"name = '{self.experiment}'")
        if not experiments:
            return False
        runs = client.search_runs(
            [experiments[0].experiment_id],
            filter_string=f"tags.`{RUN_ID_TAG}` = '{self.case.run.id}'",
        )
        return bool(runs and client.get_metric_history(runs[0].info.run_id, "val_loss"))

    def result(self) -> float | None:
        self.done.set()
        self.join(timeout=30)
        return self.crashed_at

"""A run lives through outages of the store and the bucket: a Postgres stopped mid-run
delays its log lines and progress but not its training; a bucket lost during the upload
sends it back to be retried, and the next attempt finishes from the last checkpoint."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable

import pytest
from training_core.domain import Phase
from training_core.runspec import EXIT_OK, EXIT_RETRY

from tests.fixtures.gcs import FakeGcsServer, fresh_bucket_name
from tests.fixtures.postgres import RestartablePostgres
from tests.integration.trainer.conftest import TrainerCase

pytestmark = [pytest.mark.slow, pytest.mark.digits(limit=600)]

OUTAGE_SECONDS = 10


@pytest.fixture
def database_url(restartable_pg: RestartablePostgres) -> str:
    return restartable_pg.url  # the trainer case's records live on a server the test can stop


@pytest.fixture
def gcs_bucket_url(restartable_gcs: FakeGcsServer) -> str:
    name = fresh_bucket_name()
    restartable_gcs.create_bucket(name)
    return f"gs://{name}"


def _wait_until(
    process: subprocess.Popen[bytes], case: TrainerCase, ready: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, case.output()
        time.sleep(0.02)


def _no_line_twice(case: TrainerCase) -> None:
    repeated = {line: n for line, n in Counter(case.log_lines()).items() if n > 1}
    assert not repeated, repeated


def test_postgres_stopped_mid_run_delays_the_log_not_the_training(
    trainer_case: TrainerCase, restartable_pg: RestartablePostgres
) -> None:
    case = trainer_case
    case.spec = case.spec.model_copy(update={"epochs": 3})
    case.env = {**case.env, "STORE_TIMEOUT_SECONDS": "2"}

    trainer = case.start()
    _wait_until(trainer, case, lambda: case.store.get_run(case.run.id).progress.get("epoch", 0) >= 1)
    restartable_pg.stop()
    time.sleep(OUTAGE_SECONDS)
    assert trainer.poll() is None, case.output()  # still training (or waiting to record)
    restartable_pg.start()

    assert trainer.wait(timeout=180) == EXIT_OK, case.output()
    assert "retrying in the background" in case.output()  # it did meet the outage
    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.SUCCEEDED and run.progress["epoch"] == 3
    assert case.store.get_project(case.project.id).status == "trained"
    assert len(case.store.get_models(case.project.id)) == 1
    lines = case.log_lines()
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]  # in order, each once
    assert lines[-1].startswith("Training finished")
    _no_line_twice(case)


def test_bucket_lost_during_the_upload_is_retried_then_resumed(
    trainer_case: TrainerCase, restartable_gcs: FakeGcsServer
) -> None:
    case = trainer_case
    case.spec = case.spec.model_copy(update={"epochs": 2})
    case.env = {**case.env, "RETRY_MAX_DELAY_SECONDS": "0.5", "BLOB_TIMEOUT_SECONDS": "5"}
    final_checkpoint = "checkpoint step-0002-000000.pt saved"

    first = case.start()
    # The last epoch's checkpoint is in the bucket; evaluation and the charts come next, then
    # the upload, which meets a bucket that is gone.
    _wait_until(first, case, lambda: final_checkpoint in case.output())
    restartable_gcs.stop()
    assert first.wait(timeout=120) == EXIT_RETRY, case.output()
    assert "(attempt 1 of" in case.output()  # the client retried before giving up
    assert "The bucket is unavailable at step 'upload model'" in case.log_lines()[-1]
    assert case.store.get_run(case.run.id).phase == Phase.RUNNING  # to be resumed
    assert case.store.get_project(case.project.id).status == "training"

    restartable_gcs.start()
    assert case.run_trainer() == EXIT_OK, case.output()
    lines = case.log_lines()
    assert "Resuming from checkpoint: 2/2 epochs done" in lines
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/2", "Epoch 2/2"]  # nothing trained twice
    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    [model] = case.store.get_models(case.project.id)
    assert model.run_id == case.run.id
    objects = case.objects()
    assert objects.count(case.spec.model_url) == 1
    assert not any(".checkpoints/" in url for url in objects)
    assert list(case.scratch.iterdir()) == []

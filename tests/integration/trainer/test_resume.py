"""A trainer killed mid-run (SIGTERM: preemption or cancel; SIGKILL: a lost node) resumes
from its last checkpoint in the bucket and finishes with exactly one model and one row."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from training_core.domain import Phase
from training_core.runspec import EXIT_OK, EXIT_RETRY

from tests.integration.trainer.conftest import TrainerCase

pytestmark = [pytest.mark.slow, pytest.mark.digits(limit=600)]


def _wait_for_epoch(case: TrainerCase, process: subprocess.Popen[bytes], epoch: int) -> None:
    deadline = time.monotonic() + 180
    while case.store.get_run(case.run.id).progress.get("epoch", 0) < epoch:
        assert process.poll() is None, case.output()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)


def test_a_killed_trainer_resumes_from_its_checkpoint(trainer_case: TrainerCase) -> None:
    case = trainer_case
    case.spec = case.spec.model_copy(update={"epochs": 3})
    checkpoints = f"{case.spec.model_url}.checkpoints/{case.run.id}/"

    # 1. SIGTERM during epoch 2: the current batch ends, a checkpoint is written, exit 75.
    first = case.start()
    _wait_for_epoch(case, first, 1)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_RETRY, case.output()
    assert case.store.get_run(case.run.id).phase == Phase.RUNNING  # not over: it will resume
    assert case.store.get_project(case.project.id).status == "training"
    assert "Training interrupted (SIGTERM)" in case.log_lines()[-1]
    assert f"{checkpoints}latest.json" in case.objects()
    assert case.spec.model_url not in case.objects()

    # 2. SIGKILL once epoch 2 is done: nothing runs on the way out; the bucket still has epoch 2.
    second = case.start()
    _wait_for_epoch(case, second, 2)
    second.kill()
    second.wait(timeout=30)

    # 3. The next attempt finishes from epoch 3.
    assert case.run_trainer() == EXIT_OK, case.output()

    lines = case.log_lines()
    resumes = [line for line in lines if line.startswith("Resuming from checkpoint")]
    assert re.fullmatch(
        r"Resuming from checkpoint: 1/3 epochs done and \d+ batches of epoch 2", resumes[0]
    )
    assert resumes[1] == "Resuming from checkpoint: 2/3 epochs done"
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]  # each epoch trained once

    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    assert case.store.get_project(case.project.id).status == "trained"
    [model] = case.store.get_models(case.project.id)
    assert model.run_id == case.run.id
    assert len(model.metadata["classes"]) == 10
    objects = case.objects()
    assert objects.count(case.spec.model_url) == 1
    assert not any(".checkpoints/" in url for url in objects)  # deleted once the run ended
    assert list(case.scratch.iterdir()) == []  # the killed attempt's scratch too

"""A run of several training processes (gloo on this machine's CPU), as ``python -m trainer``
runs it in a pod: the program becomes the node's agent and starts one process per rank.

Two processes train the model one process trains (same global batch, same seed, same
accuracy band) and write its story once; a stop on one rank stops the group at a batch
boundary with one checkpoint, which a group of another size resumes; a rank killed outright
takes the group down promptly, with a line naming it, and the run resumes."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import psutil
import pytest
from training_core.domain import Phase
from training_core.runspec import (
    EXIT_DO_NOT_RETRY,
    EXIT_OK,
    EXIT_RETRY,
    METRICS_SUFFIX,
    Resources,
    model_sibling,
)

from tests.integration.trainer.conftest import TrainerCase

pytestmark = pytest.mark.slow

TWO = Resources(gpu_count=0, processes=2)
ONE = Resources(gpu_count=0, processes=1)
STOP_WITHIN_SECONDS = 60  # a group whose rank died exits within this (no collective timeout)


def _rank(agent: subprocess.Popen[bytes], rank: int, case: TrainerCase) -> psutil.Process:
    """The training process of ``rank``, a child of the node's agent."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert agent.poll() is None, case.output()
        for child in psutil.Process(agent.pid).children():
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank}\n{case.output()}")


def _children(agent: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(agent.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _two_ranks_in_epoch_two(case: TrainerCase) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """A 3-epoch run of two processes, training inside its second epoch; its rank 1."""
    case.spec = case.spec.model_copy(update={"epochs": 3})
    agent = case.start(resources=TWO)
    case.wait_for_epoch(agent, 1)
    return agent, _rank(agent, 1, case)


def _steps(case: TrainerCase) -> int:
    metrics = json.loads(case.blobs.read_bytes(model_sibling(case.spec.model_url, METRICS_SUFFIX)))
    return metrics["steps"]


def _no_line_twice(case: TrainerCase) -> None:
    repeated = {line: n for line, n in Counter(case.log_lines()).items() if n > 1}
    assert not repeated, repeated


def test_two_processes_train_the_model_one_process_trains(trainer_case: TrainerCase) -> None:
    case = trainer_case

    assert case.run_trainer(resources=TWO) == EXIT_OK, case.output()

    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.SUCCEEDED and run.progress["epoch"] == 4
    [model] = case.store.get_models(case.project.id)  # one row
    # The band the one-process run of the same metadata reaches (test_program.py).
    assert model.metadata["val_accuracy"] >= 0.9
    assert model.metadata["test_accuracy"] >= 0.85
    lines = case.log_lines()
    assert lines[0].startswith("Training started: resnet18, 4 epochs")
    assert any(line.startswith("Training on 2 processes on cpu") for line in lines)
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/4", "Epoch 2/4", "Epoch 3/4", "Epoch 4/4"]
    assert lines[-1].startswith("Training finished")
    _no_line_twice(case)
    objects = case.objects()
    assert objects.count(case.spec.model_url) == 1
    assert not any(".checkpoints/" in url for url in objects)
    assert list(case.scratch.iterdir()) == []


@pytest.mark.digits(limit=600)
def test_a_stop_on_one_rank_stops_the_group_and_another_size_resumes_it(
    trainer_case: TrainerCase,
) -> None:
    case = trainer_case
    agent, rank_1 = _two_ranks_in_epoch_two(case)
    rank_1.send_signal(signal.SIGTERM)  # not rank 0: the stop is agreed
    assert agent.wait(timeout=120) == EXIT_RETRY, case.output()
    assert case.store.get_run(case.run.id).phase == Phase.RUNNING  # to be resumed
    assert "Training interrupted (SIGTERM)" in case.log_lines()[-1]
    # One checkpoint, by rank 0, inside epoch 2 (step-<epochs done>-<batches of the next>).
    saved = re.findall(r"checkpoint (step-0001-0*[1-9]\d*)\.pt saved", case.output())
    assert len(saved) == 1, case.output()
    _no_line_twice(case)  # rank 0 alone wrote them

    # One process resumes what two began, from the batch they stopped at.
    assert case.run_trainer(resources=ONE) == EXIT_OK, case.output()
    lines = case.log_lines()
    resumed = [line for line in lines if line.startswith("Resuming from checkpoint")]
    assert resumed and resumed[0].startswith("Resuming from checkpoint: 1/3 epochs done and ")
    epochs = [line.split(" completed")[0] for line in lines if line.startswith("Epoch ")]
    assert epochs == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    # As many optimizer steps in all as one uninterrupted run takes: 3 epochs of global
    # batches of 32.
    counts = next(line for line in lines if line.startswith("Dataset: 10 classes; images:"))
    train_images = int(re.findall(r"train (\d+)", counts)[0])
    assert _steps(case) == 3 * math.ceil(train_images / 32)
    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    assert len(case.store.get_models(case.project.id)) == 1


@pytest.mark.digits(limit=600)
def test_a_stopped_pod_stops_every_rank_with_one_checkpoint(trainer_case: TrainerCase) -> None:
    """SIGTERM to the pod's first process, the node's agent (preemption, kubectl delete):
    it passes the stop to the ranks, waits for them, and exits to be retried."""
    case = trainer_case
    agent, _ = _two_ranks_in_epoch_two(case)
    ranks = _children(agent)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=120) == EXIT_RETRY, case.output()
    assert "Training interrupted (SIGTERM)" in case.log_lines()[-1]
    saved = re.findall(r"checkpoint (step-0001-0*[1-9]\d*)\.pt saved", case.output())
    assert len(saved) == 1, case.output()
    assert case.store.get_run(case.run.id).phase == Phase.RUNNING
    assert len(ranks) >= 2 and not any(rank.is_running() for rank in ranks)  # none left behind


@pytest.mark.digits(limit=600)
def test_a_rank_killed_outright_takes_the_group_down_and_the_run_resumes(
    trainer_case: TrainerCase,
) -> None:
    case = trainer_case
    agent, rank_1 = _two_ranks_in_epoch_two(case)
    rank_1.kill()
    killed = time.monotonic()
    assert agent.wait(timeout=STOP_WITHIN_SECONDS) == EXIT_RETRY, case.output()
    assert time.monotonic() - killed < STOP_WITHIN_SECONDS
    assert case.log_lines()[-1] == (
        "Training stopped: training process 1 of 2 was killed by SIGKILL; "
        "the run resumes from its last checkpoint"
    )
    assert case.store.get_run(case.run.id).phase == Phase.RUNNING
    assert case.store.get_project(case.project.id).status == "training"

    assert case.run_trainer(resources=TWO) == EXIT_OK, case.output()
    lines = case.log_lines()
    assert any(line.startswith("Resuming from checkpoint: 1/3 epochs done") for line in lines)
    assert case.store.get_run(case.run.id).phase == Phase.SUCCEEDED
    [model] = case.store.get_models(case.project.id)
    assert model.run_id == case.run.id
    assert list(case.scratch.iterdir()) == []


@pytest.mark.digits(limit=200)
def test_a_damaged_image_fails_the_run_once(
    trainer_case: TrainerCase, tmp_path: Path
) -> None:
    case = trainer_case
    original = tmp_path / "digits.zip"
    original.write_bytes(case.blobs.read_bytes(case.spec.dataset_url))
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(damaged, "w") as target:
        names = source.namelist()
        last = max(name for name in names if name.startswith("train/") and name.endswith(".png"))
        for name in names:  # the split's last image
            data = source.read(name)
            target.writestr(name, data[: len(data) // 2] if name == last else data)
    case.blobs.upload(damaged, case.spec.dataset_url, create_only=False)

    assert case.run_trainer(resources=TWO) == EXIT_DO_NOT_RETRY, case.output()

    run = case.store.get_run(case.run.id)
    assert run.phase == Phase.FAILED
    assert f"cannot be decoded: {last}" in (run.error or ""), run.error
    failures = [line for line in case.log_lines() if line.startswith("Training failed")]
    assert len(failures) == 1, failures
    assert case.store.get_project(case.project.id).status == "failed"
    assert list(case.scratch.iterdir()) == []

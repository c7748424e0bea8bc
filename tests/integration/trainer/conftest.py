"""A claimed project with a recorded run, its dataset in a real GCS-protocol bucket and its
records in a real Postgres, and the trainer program (``python -m trainer``) to run on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import torch
from training_core.blobs import BlobStore, open_blob_store
from training_core.domain import Project, Run, run_name
from training_core.runspec import RunSpec, model_url_for
from training_core.settings import load_settings
from training_core.store.base import NewRun
from training_core.store.postgres import PostgresStore

from tests.fixtures.digits import DigitsZip

# Small and quick on a CPU: 16 px digits, a batch of 32, a fixed seed.
TRAINING = {
    "image_size": 16,
    "batch_size": 32,
    "learning_rate": 0.001,
    "pretrained": False,
    "seed": 0,
}


@dataclass
class TrainerCase:
    store: PostgresStore
    blobs: BlobStore
    bucket_url: str
    project: Project
    run: Run
    spec: RunSpec
    env: dict[str, str]
    scratch: Path
    log_dir: Path
    attempts: list[Path] = field(default_factory=list)

    def start(self, **spec_changes: Any) -> subprocess.Popen[bytes]:
        """``python -m trainer`` as a Job would run it; its output goes to a file."""
        spec = self.spec.model_copy(update=spec_changes)
        log_path = self.log_dir / f"trainer-{len(self.attempts) + 1}.log"
        self.attempts.append(log_path)
        with log_path.open("wb") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "trainer"],
                env={**self.env, **spec.to_env()},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def run_trainer(self, timeout: float = 240, **spec_changes: Any) -> int:
        process = self.start(**spec_changes)
        try:
            return process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()

    def run_in_process(self, monkeypatch: pytest.MonkeyPatch, **spec_changes: Any) -> int:
        """The same program (``trainer.main.main``) in this process: no interpreter and torch
        start-up per run, for the many short runs that fail before or soon after training."""
        from trainer.main import main

        spec = self.spec.model_copy(update=spec_changes)
        for name, value in {**self.env, **spec.to_env()}.items():
            if os.environ.get(name) != value:
                monkeypatch.setenv(name, value)
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 does for the subprocesses
        try:
            return main()
        finally:
            torch.set_num_threads(threads)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def wait_for_epoch(self, process: subprocess.Popen[bytes], epoch: int) -> None:
        """Until the run's recorded progress reaches ``epoch`` (the trainer still alive)."""
        deadline = time.monotonic() + 180
        while self.store.get_run(self.run.id).progress.get("epoch", 0) < epoch:
            assert process.poll() is None, self.output()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.1)

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.attempts)

    def log_lines(self) -> list[str]:
        return [
            entry.message for entry in reversed(self.store.get_logs(self.project.id, limit=500))
        ]

    def objects(self) -> list[str]:
        return self.blobs.list(f"{self.bucket_url}/")


@pytest.fixture
def trainer_case(
    pg_store: PostgresStore, database_url: str, gcs_bucket_url: str, digits_zip: DigitsZip,
    tmp_path: Path, request: pytest.FixtureRequest,
) -> Iterator[TrainerCase]:  # fmt: skip
    """Everything the API would have done before a trainer starts: project claimed
    ('training'), run recorded (Queued) with its spec, dataset uploaded and registered."""
    marker = request.node.get_closest_marker("digits")
    limit = (
        marker.kwargs.get("limit") if marker else None
    )  # the closest: a test's own, else its module's
    settings = load_settings(bucket_url=gcs_bucket_url)
    blobs = open_blob_store(settings)
    dataset_url = f"{gcs_bucket_url}/raw/digits.zip"
    blobs.upload(digits_zip(TRAINING["image_size"], limit), dataset_url)
    project = pg_store.create_project(
        f"Digits {uuid4().hex[:6]}", status="training", metadata={"num_classes": 10}
    )
    pg_store.add_dataset(project.id, dataset_url, name="digits")
    run_id = uuid4()
    spec = RunSpec(
        run_id=run_id, run_name=run_name(project.id, 1), project_id=project.id,
        dataset_url=dataset_url, model="resnet18", model_url=model_url_for(gcs_bucket_url, project.name),
        epochs=4, **TRAINING,
    )  # fmt: skip
    run = pg_store.create_run(
        NewRun(id=run_id, project_id=project.id, name=spec.run_name, spec=spec.model_dump(mode="json"),
               model_url=spec.model_url)
    )  # fmt: skip
    scratch = tmp_path / "scratch"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BUCKET_URL": gcs_bucket_url,
        "SCRATCH_DIR": str(scratch),
        "LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",  # the test machine's cores are shared (see tests/unit/trainer)
    }
    yield TrainerCase(pg_store, blobs, gcs_bucket_url, project, run, spec, env, scratch, tmp_path)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "digits(limit): train on the first `limit` digits only")

"""A newcomer's own dataset, trained through the command line only: ``serve --local``, then
``projects create`` from a local zip, ``runs start``/``watch``/``status``/``cancel``. Archives
that a run would refuse are refused at registration, leaving nothing behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.fixtures.digits import DigitsZip
from training_agent.localstack import start_local_stack
from training_core.settings import Settings

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("training-agent"))
# Tiny and fast: 16 px digits (the ones the demo trains on), a ResNet18 from scratch.
TINY = ("--model", "resnet18", "--image-size", "16", "--batch-size", "64", "--no-pretrained")


@dataclass(frozen=True)
class Agent:
    home: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args],
            env=self.env,
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def create(self, name: str, dataset: Path, *options: str) -> subprocess.CompletedProcess[str]:
        return self.run("projects", "create", "--name", name, "--dataset", str(dataset), *options)

    def rows(self, sql: str) -> list[dict]:
        stack = start_local_stack(self.home)  # reused when running; else started and stopped
        try:
            with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
                return conn.execute(sql).fetchall()
        finally:
            stack.stop()


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """The user's environment minus any agent setting: the local stack decides them all."""
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    clean = {k: v for k, v in clean.items() if not k.startswith("TRAINING_AGENT_")}
    return {**clean, "TRAINING_AGENT_HOME": str(home), "COLUMNS": "200", **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """``training-agent serve --local`` on a free port, with its own home."""
    home = tmp_path_factory.mktemp("served") / "home"
    home.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    agent = Agent(home, agent_env(home, TRAINING_AGENT_URL=url))
    with (home.parent / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [CLI, "serve", "--local", "--port", str(port)],
            env=agent.env,
            cwd=home.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, process, home.parent / "api.log")
        yield agent
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_own_zip_trains_to_succeeded_and_a_second_run_is_cancelled(
    served: Agent, digits_zip: DigitsZip
) -> None:
    dataset = digits_zip(image_size=16, limit=400)

    created = served.create("my-digits", dataset, *TINY, "--epochs", "2", "--learning-rate", "0.01")
    assert created.returncode == 0, created.stderr
    project_id = created.stdout.strip()  # the id alone on stdout
    assert "10 classes" in created.stderr

    started = served.run("runs", "start", project_id)
    assert started.returncode == 0, started.stderr
    assert "queued" in started.stdout

    watched = served.run("runs", "watch", project_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "Succeeded" in watched.stdout and "epoch 2/2" in watched.stdout

    status = served.run("runs", "status", project_id, "--json")
    assert status.returncode == 0, status.stderr
    answer = json.loads(status.stdout)
    assert answer["project_status"] == "trained" and answer["run"]["phase"] == "Succeeded"
    assert Path(answer["model_url"].removeprefix("file://")).is_file()
    assert "Succeeded" in served.run("runs", "status", project_id).stdout

    # The platform's view: the metadata the API trained with, the archive in the bucket's raw/.
    [row] = served.rows(
        "select p.metadata, d.gcs_url, d.source from projects p join datasets d"
        f" on d.project_id = p.id where p.id = '{project_id}'"
    )
    assert row["metadata"] == {
        "model": "resnet18", "epochs": 2, "learning_rate": 0.01, "batch_size": 64,
        "image_size": 16, "pretrained": False, "num_classes": 10,
    }  # fmt: skip
    archive = Path(row["gcs_url"].removeprefix("file://"))
    assert archive.parent == served.home / "bucket" / "raw"
    assert archive.read_bytes() == dataset.read_bytes() and row["source"] == "cli"

    # A second project: started, then cancelled while it is still active.
    second = served.create("to-cancel", dataset, *TINY, "--epochs", "50").stdout.strip()
    assert served.run("runs", "start", second).returncode == 0
    cancelled = served.run("runs", "cancel", second)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout
    after = served.run("runs", "watch", second)
    assert after.returncode == 1 and "Cancelled" in after.stdout

    listed = json.loads(served.run("projects", "list", "--json").stdout)
    statuses = {project["id"]: project["status"] for project in listed}
    assert statuses == {project_id: "trained", second: "pending_training"}
    assert second in served.run("projects", "list").stdout


def test_api_refusals_and_usage_errors_have_their_exit_codes(served: Agent) -> None:
    unknown = "3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34"
    refused = served.run("runs", "start", unknown)
    assert refused.returncode == 1
    assert refused.stderr.startswith("project_not_found:")

    wrong_token = served.run("runs", "status", unknown, "--token", "not-the-token")
    assert wrong_token.returncode == 1 and wrong_token.stderr.startswith("unauthorized:")
    assert "not-the-token" not in wrong_token.stdout + wrong_token.stderr

    assert served.run("runs", "status", "not-a-uuid").returncode == 2
    missing_file = served.run("runs", "status", unknown, "--token-file", "/nonexistent")
    assert missing_file.returncode == 2
    assert served.run("projects", "create", "--name", "x", "--dataset", "x.zip",
                      "--epochs", "100000").returncode == 2  # fmt: skip


def hostile_zip(path: Path, digits: Path) -> Path:
    """A valid digits dataset, plus one entry that climbs out of the extraction folder."""
    with zipfile.ZipFile(digits) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr("../evil", b"outside")
    return path


def not_an_archive(path: Path, _: Path) -> Path:
    path.write_bytes(b"this is not a zip")
    return path


def zip_without_splits(path: Path, _: Path) -> Path:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    with zipfile.ZipFile(path, "w") as out:
        out.writestr("images/cat/1.png", buffer.getvalue())
        out.writestr("images/dog/1.png", buffer.getvalue())
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (hostile_zip, "'..'"),
        (not_an_archive, "not a zip or tar"),
        (zip_without_splits, "train/ is missing"),
    ],
    ids=["path-traversal", "not-an-archive", "no-train-val"],
)
def test_refused_archives_leave_nothing_in_the_bucket_or_the_database(
    tmp_path: Path, digits_zip: DigitsZip, make: Callable[[Path, Path], Path], reason: str
) -> None:
    home = tmp_path / "home"  # no API running: the command starts the database itself
    agent = Agent(home, agent_env(home))
    archive = make(tmp_path / "dataset.zip", digits_zip(image_size=16, limit=200))

    result = agent.create("refused", archive, *TINY)

    assert result.returncode == 65, result.stdout + result.stderr
    assert "Not registered:" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (home / "postgres" / "postmaster.pid").exists()  # it stopped what it started
    assert [p for p in (home / "bucket").rglob("*")] == []
    assert list((home / "scratch").iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (home / "evil").exists()
    [counts] = agent.rows(
        "select (select count(*) from projects) as projects,"
        " (select count(*) from datasets) as datasets"
    )
    assert counts == {"projects": 0, "datasets": 0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"the API did not become healthy: {log.read_text()}")

"""``make demo``: the whole flow on one machine, driven over HTTP as the MCP server drives it.

Start the local stack (embedded Postgres, a folder bucket) → write the digits dataset as an
ImageFolder zip under ``raw/`` → register a project and its dataset → start the API with the
local launcher (its web page's address is printed, to watch the run in a browser too) →
``POST /agents/training/start`` → follow ``/agents/training/status`` → report where the
model, its curves and the logs are.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from training_agent.localstack import LocalStack, start_local_stack
from training_agent.run_progress import follow_run
from training_core.store.postgres import PostgresStore


@dataclass(frozen=True)
class DemoResult:
    project_id: str
    phase: str
    model_url: str | None
    test_accuracy: float | None
    val_accuracy: float | None
    wall_seconds: float


def run_demo(
    *,
    home: Path | None = None,
    model: str = "resnet18",
    epochs: int = 5,
    image_size: int = 32,
    timeout: float = 600,
    console: Console | None = None,
) -> DemoResult:
    console = console or Console()
    started = time.monotonic()
    stack = start_local_stack(home)
    console.print(f"[bold]Local stack[/] in {stack.home} (embedded Postgres, bucket {stack.bucket_url})")

    try:
        store = PostgresStore(stack.database_url)
        try:
            project_id = _register_project(stack, store, model, epochs, image_size, console)
        finally:
            store.close()
        with _api_server(stack) as base_url:
            console.print(
                f"Watch it at [bold]{base_url}/ui/[/] (it asks for the API token in"
                f" {stack.token_file})"
            )
            client = httpx.Client(
                base_url=base_url, headers={"Authorization": f"Bearer {stack.api_token}"}, timeout=30
            )
            answer = client.post("/agents/training/start", json={"project_id": project_id})
            answer.raise_for_status()
            console.print(f"POST /agents/training/start → {answer.status_code} {answer.text}")
            status_path = f"/agents/training/status/{project_id}"
            status = follow_run(
                lambda: client.get(status_path, params={"logs": 5}).json(),
                console=console,
                total_epochs=epochs,
                timeout=timeout,
            )
    finally:
        stack.stop()

    result = _result(project_id, status, _metrics(stack, status), time.monotonic() - started)
    _report(stack, result, status, console)
    return result


def _register_project(
    stack: LocalStack, store: PostgresStore, model: str, epochs: int, image_size: int, console: Console
) -> str:
    """Play the platform: put the dataset in the bucket and record the project."""
    from training_agent.samples import write_digits_zip

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    zip_path = stack.home / "bucket" / "raw" / f"digits-{stamp}.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    write_digits_zip(zip_path, image_size=image_size)
    project = store.create_project(
        f"digits-demo-{stamp}",
        metadata={
            "model": model,
            "epochs": epochs,
            "image_size": image_size,
            "num_classes": 10,
            "pretrained": False,
            "batch_size": 64,
            "seed": 0,
        },
    )
    store.add_dataset(
        project.id, f"file://{zip_path}", name="digits", size=zip_path.stat().st_size, source="demo"
    )
    console.print(f"Project [bold]{project.name}[/] ({project.id}), dataset file://{zip_path}")
    return str(project.id)


@contextlib.contextmanager
def _api_server(stack: LocalStack) -> Iterator[str]:
    """``training-agent serve --local`` as a child process, stopped on the way out."""
    port = _free_port()
    log_path = stack.home / "runs" / "api.log"
    env = {**os.environ, **stack.env()}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "training_agent", "serve", "--local", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become healthy in 60 s; see {log_path}")


def _metrics(stack: LocalStack, status: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` the trainer writes next to the model (empty if there is none)."""
    from training_core.blobs import open_blob_store
    from training_core.errors import BlobNotFound
    from training_core.runspec import METRICS_SUFFIX, model_sibling
    from training_core.settings import load_settings

    model_url = status.get("model_url")
    if not model_url or (status.get("run") or {}).get("phase") != "Succeeded":
        return {}
    blobs = open_blob_store(load_settings(bucket_url=stack.bucket_url))
    try:
        return json.loads(blobs.read_bytes(model_sibling(model_url, METRICS_SUFFIX)))
    except BlobNotFound:
        return {}


def _result(
    project_id: str, status: dict[str, Any], metrics: dict[str, Any], wall: float
) -> DemoResult:
    run = status.get("run") or {}
    progress = status.get("progress") or {}
    return DemoResult(
        project_id=project_id,
        phase=run.get("phase", "unknown"),
        model_url=status.get("model_url"),
        test_accuracy=metrics.get("test_accuracy"),
        val_accuracy=metrics.get("val_accuracy", progress.get("val_accuracy")),
        wall_seconds=wall,
    )


def _report(stack: LocalStack, result: DemoResult, status: dict[str, Any], console: Console) -> None:
    colour = "green" if result.phase == "Succeeded" else "red"
    console.print(f"\n[bold {colour}]{result.phase}[/] in {result.wall_seconds:.0f} s")
    if result.model_url:
        stem = Path(result.model_url.removeprefix("file://")).with_suffix("")
        console.print(f"  model         {result.model_url}")
        for label, path in (("curves", stem.with_suffix(".png")), ("metrics", Path(f"{stem}.metrics.json"))):
            if path.exists():
                console.print(f"  {label:<13} {path}")
    if result.test_accuracy is not None:
        console.print(f"  test accuracy {result.test_accuracy:.3f}")
    if result.val_accuracy is not None:
        console.print(f"  val accuracy  {result.val_accuracy:.3f}")
    console.print(f"  run logs      {stack.home / 'runs'}")
    console.print(f"  status        GET /agents/training/status/{result.project_id}")
    for line in reversed(status.get("logs") or []):
        console.print(f"    [dim]{line.get('created_at', '')}[/] {line.get('message', '')}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

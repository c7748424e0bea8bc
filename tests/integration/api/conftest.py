"""The API on a real Postgres; launchers are real (local processes or the test Kubernetes API)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from training_core.domain import Project
from training_api.launchers import LauncherUnavailable
from training_api.launchers.local import LocalLauncher
from training_core.settings import Settings, load_settings
from training_core.store.postgres import PostgresStore
from training_api import create_app

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Plays the trainer where a test is about the API, not about training: it just waits.
IDLE_TRAINER = [sys.executable, "-c", "import time; time.sleep(300)"]


def make_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_tokens": f"{TOKEN},second-token-abcdef",
        "bucket_url": f"file://{tmp_path / 'bucket'}",
        "local_runs_dir": tmp_path / "runs",
        "rate_limit_per_minute": 10_000,
        "store_timeout_seconds": 5,
    }
    return load_settings(**{**values, **overrides})


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[PostgresStore]:
    store = PostgresStore(settings.database_url.get_secret_value(), timeout=5)
    yield store
    store.close()


@pytest.fixture
def idle_launcher(settings: Settings, store: PostgresStore) -> Iterator[LocalLauncher]:
    launcher = LocalLauncher(
        settings, store, command=IDLE_TRAINER, grace_seconds=2, poll_seconds=0.05
    )
    wait_for(lambda: ready(launcher))  # it has looked at the runs already recorded
    yield launcher
    launcher.close()


@pytest.fixture
def app(settings: Settings, store: PostgresStore, idle_launcher: LocalLauncher) -> FastAPI:
    return create_app(settings, store, idle_launcher)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def project_factory(store: PostgresStore, tmp_path: Path) -> Callable[..., Project]:
    """Play the platform: a project (pending by default) with a dataset in the bucket."""

    def make(name: str = "flowers", *, dataset: str | None = "default", **fields: Any) -> Project:
        project = store.create_project(name, **fields)
        if dataset == "default":
            dataset = f"file://{tmp_path / 'bucket' / 'raw' / name}.zip"
        if dataset is not None:
            store.add_dataset(project.id, dataset, name=name)
        return project

    return make


def error_of(response: httpx.Response) -> dict[str, str]:
    """The error object, after checking the one error shape every refusal has."""
    body = response.json()
    assert set(body) == {"success", "error"} and body["success"] is False, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]


def ready(launcher: LocalLauncher) -> bool:
    try:
        launcher.ping()
    except LauncherUnavailable:
        return False
    return True


def wait_for(condition: Callable[[], Any], timeout: float = 30, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn (in a thread) on a free port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)

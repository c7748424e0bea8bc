"""Fixtures shared by the whole suite: the real servers live in tests/fixtures/."""

from __future__ import annotations

import pytest

import logging
from collections.abc import Iterator

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.postgrest",
    "tests.fixtures.cluster",
    "tests.fixtures.gcs",
    "tests.fixtures.digits",
    "tests.fixtures.mlflow",
]


@pytest.fixture(autouse=True)
def _clean_settings_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests never read the developer's .env or settings cache."""
    from training_core.settings import get_settings

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _drop_log_handlers_set_up_in_tests() -> Iterator[None]:
    """A command run in-process installs the agent's log handler on pytest's captured stream;
    remove it after the test, so that server threads and exit hooks never write to a closed
    stream."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_training_agent", False)]:
        root.removeHandler(handler)

"""Fixtures shared by the whole suite: the real servers live in tests/fixtures/."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.postgrest", "tests.fixtures.kube", "tests.fixtures.gcs", "tests.fixtures.digits"]


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's .env or settings cache."""
    from training_core.settings import get_settings

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    get_settings.cache_clear()

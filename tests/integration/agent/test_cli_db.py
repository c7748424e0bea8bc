"""``training-agent db migrate``, run as the installed console script, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.postgres import drop_database
from training_core.settings import Settings

CLI = str(Path(sys.executable).with_name("training-agent"))
AGENT_TABLES = {"projects", "datasets", "models", "agent_logs", "training_runs"}


@pytest.fixture
def empty_database(pg_server) -> Iterator[str]:
    """A database with nothing in it (not cloned from the migrated template)."""
    name = f"blank_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri("postgres"), autocommit=True) as conn:
        conn.execute(f"create database {name}")
    url = pg_server.get_uri(name)
    yield url
    drop_database(pg_server, url)


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [CLI, *args],
        check=False,
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select table_name from information_schema.tables where table_schema = 'public'"
        )
        return {name for (name,) in rows}


def test_migrate_creates_the_schema_and_can_run_again(tmp_path: Path, empty_database: str) -> None:
    assert tables(empty_database) == set()

    first = run_cli(tmp_path, "db", "migrate", DATABASE_URL=empty_database)
    again = run_cli(tmp_path, "db", "migrate", DATABASE_URL=empty_database)

    assert first.returncode == 0, first.stderr
    assert "applied 20261126000000_training_agent.sql" in first.stdout
    assert tables(empty_database) == AGENT_TABLES
    assert again.returncode == 0, again.stderr  # every statement is "if absent"


def test_a_bad_setting_exits_2_with_one_clear_line(tmp_path: Path, empty_database: str) -> None:
    result = run_cli(tmp_path, "db", "migrate", DATABASE_URL=empty_database, BATCH_SIZE="lots")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BATCH_SIZE" in lines[0]
    assert "Traceback" not in result.stderr
    assert tables(empty_database) == set()


def test_migrate_without_a_database_url_says_so(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "db", "migrate")

    assert result.returncode == 2
    assert result.stderr.strip() == "DATABASE_URL is not set"


def test_an_unreachable_database_fails_without_showing_the_password(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path, "db", "migrate", DATABASE_URL="postgresql://agent:pw-5e1d@127.0.0.1:1/training"
    )

    assert result.returncode == 1
    assert result.stderr.startswith("migration failed:")
    assert "pw-5e1d" not in result.stderr + result.stdout

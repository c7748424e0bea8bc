"""The ``make demo`` flow, smaller, through the CLI entry point: the same command a user runs,
then the final state as the platform sees it (tables, bucket, logs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from trainer.artifact import load_model
from training_agent.localstack import start_local_stack


def run_demo_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINING_AGENT_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "training_agent", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_tables(database_url: str) -> list[dict]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "select p.id, p.name, p.status, m.gcs_url, m.metadata, r.phase,"
            " (select count(*) from models where project_id = p.id) as model_rows,"
            " (select array_agg(message order by id) from agent_logs where project_id = p.id) as logs"
            " from projects p join training_runs r on r.project_id = p.id"
            " left join models m on m.run_id = r.id order by p.created_at"
        ).fetchall()


@pytest.mark.slow
def test_demo_trains_a_model_end_to_end_twice(tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    first = run_demo_cli(home, "--epochs", "2", "--image-size", "24")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Succeeded" in first.stdout and "test accuracy" in first.stdout
    assert re.search(r"Watch it at http://127\.0\.0\.1:\d+/ui/", first.stdout), first.stdout

    # A second demo on the same home reuses the database and bucket with a new project.
    second = run_demo_cli(home, "--epochs", "1", "--image-size", "16")
    assert second.returncode == 0, second.stdout + second.stderr

    # Each demo stopped the database it started; nothing of it is left running.
    assert not list(home.glob("postgres/postmaster.pid"))
    stack = start_local_stack(home)
    try:
        rows = read_tables(stack.database_url)
    finally:
        stack.stop()
    assert [row["status"] for row in rows] == ["trained", "trained"]
    assert [row["phase"] for row in rows] == ["Succeeded", "Succeeded"]
    for row in rows:
        assert row["model_rows"] == 1
        assert row["metadata"]["classes"] == [str(digit) for digit in range(10)]
        model_path = Path(row["gcs_url"].removeprefix("file://"))
        assert model_path.parent == home / "bucket" / "models"
        assert model_path.with_suffix(".png").is_file()
        assert load_model(model_path).metadata["classes"] == row["metadata"]["classes"]
        assert any(line.startswith("Epoch 1/") for line in row["logs"])
        assert any("Training finished" in line for line in row["logs"])
    # The dataset archives stay in the bucket; nothing is left in the scratch folder.
    assert len(list((home / "bucket" / "raw").glob("digits-*.zip"))) == 2
    assert list((home / "scratch").iterdir()) == []

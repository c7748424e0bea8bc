"""``training-agent operator``: the process a Deployment runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from training_core.domain import Phase

from tests.fixtures.cluster import free_port
from tests.integration.operator.conftest import Workspace, eventually, expect


def test_operator_command_reconciles_answers_liveness_and_stops_on_sigterm(
    workspace: Workspace, operator_env: object, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "OPERATOR_LIVENESS_PORT": str(port)}
    cli = Path(sys.executable).with_name("training-agent")
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen(
        [str(cli), "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _, run = workspace.start_run()
        eventually(
            lambda: expect(workspace.store.get_run(run.id).phase is Phase.RUNNING), timeout=30
        )
        assert [job["metadata"]["name"] for job in workspace.jobs()] == [run.name]
        health = eventually(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2), timeout=30
        )
        assert health.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]

"""``training-agent operator``: the process a Deployment runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from training_core.domain import Phase

from tests.integration.operator.conftest import Cluster, eventually
from tests.integration.operator.test_lifecycle import _assert


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_operator_command_reconciles_answers_liveness_and_stops_on_sigterm(
    cluster: Cluster, operator_env: object, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "OPERATOR_LIVENESS_PORT": str(port)}
    cli = Path(sys.executable).with_name("training-agent")
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen(
        [str(cli), "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _, run = cluster.start_run()
        eventually(
            lambda: _assert(cluster.store.get_run(run.id).phase is Phase.PENDING), timeout=15
        )
        assert [job["metadata"]["name"] for job in cluster.jobs()] == [run.name]
        health = eventually(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2), timeout=30
        )
        assert health.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]

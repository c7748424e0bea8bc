"""``training-agent serve``: the real command, as an operator starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.api.conftest import TOKEN, wait_for


def serve(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "training_agent", "serve", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_healthy(base: str) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=60, interval=0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_refuses_to_start_without_tokens(database_url, tmp_path):
    process = serve(
        {"DATABASE_URL": database_url, "API_TOKENS": "", "LOCAL_RUNS_DIR": str(tmp_path)}
    )

    output, _ = process.communicate(timeout=60)

    assert process.returncode == 2
    assert "API_TOKENS is empty" in output and "--insecure" in output


def test_serve_answers_over_http_and_stops_cleanly(database_url, tmp_path):
    port = free_port()
    env = {"DATABASE_URL": database_url, "API_TOKENS": TOKEN, "LOCAL_RUNS_DIR": str(tmp_path)}
    process = serve(env, "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base)
        ready = httpx.get(f"{base}/ready")
        refused = httpx.get(f"{base}/metrics")
        metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)

    assert ready.json() == {"status": "ready"}
    assert refused.status_code == 401 and metrics.status_code == 200
    # uvicorn shuts down gracefully, then ends by the signal it was sent (as a shell expects).
    assert process.returncode in (0, -15)
    assert "Application shutdown complete" in output
    assert TOKEN not in output and database_url not in output


def test_several_workers_serve_and_count_their_requests_together(
    database_url, tmp_path, training_cluster, kube_namespace
):
    port = free_port()
    env = {
        "DATABASE_URL": database_url, "API_TOKENS": TOKEN, "API_WORKERS": "2",
        "LAUNCHER": "kubernetes", "NAMESPACE": kube_namespace,
        "KUBECONFIG": str(training_cluster.admin_kubeconfig),
    }  # fmt: skip
    process = serve(env, "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base)
        answers = [httpx.get(f"{base}/ready").status_code for _ in range(20)]  # a connection each
        text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)

    assert output.count("Started server process") == 2 and answers == [200] * 20
    [requests] = [f for f in text_string_to_metric_families(text) if f.name == "training_api_requests"]
    ready = sum(s.value for s in requests.samples if s.labels.get("route") == "/ready" and s.name.endswith("_total"))
    assert ready == 20  # whichever worker answered each
    assert TOKEN not in output


def test_several_workers_need_the_kubernetes_launcher(database_url, tmp_path):
    process = serve({"DATABASE_URL": database_url, "API_TOKENS": TOKEN, "API_WORKERS": "2"})
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "API_WORKERS above 1 needs LAUNCHER=kubernetes" in output

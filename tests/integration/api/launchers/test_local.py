"""``LocalLauncher`` with real processes and a real Postgres.

Small stand-in programs play the trainer where a test is about process handling (exit codes,
signals, queueing, restarts); the real trainer runs in ``test_local_training.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import psutil
import pytest

from training_core.domain import Phase, run_name
from training_core.errors import StoreUnavailable
from training_api.launchers.local import LocalLauncher
from training_core.runspec import RunSpec
from training_core.store.base import NewRun, RunUpdate

from tests.integration.api.conftest import make_settings, wait_for


def program(source: str, *args: str) -> list[str]:
    return [sys.executable, "-c", source, *args]


DUMP_ENV = "import json, os; json.dump(dict(os.environ), open('env.json', 'w'))"
EXIT_WITH = "import sys; sys.exit(int(sys.argv[1]))"
# Appends "<run> start|end <time>" to a shared journal, so tests can see order and overlap.
JOURNAL = (
    "import os, sys, time\n"
    "def note(what):\n"
    "    line = f\"{os.environ['TRAINING_RUN_NAME']} {what} {time.time()}\\n\"\n"
    "    with open(sys.argv[1], 'a') as f: f.write(line)\n"
    "note('start'); time.sleep(float(sys.argv[2])); note('end')\n"
)
COUNT_AND_RETRY = "open('calls', 'a').write('x'); raise SystemExit(75)"
# Says when its handler is in place, so the test cancels a trainer that really ignores SIGTERM.
IGNORE_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " open('deaf', 'w').write('yes'); time.sleep(300)"
)
EXIT_WHEN_TOLD = "import os, time\nwhile not os.path.exists('go'): time.sleep(0.02)\n"
MARK_AND_WAIT = "open('spawned', 'w').write('yes'); import time; time.sleep(300)"
# Counts its starts; the first waits for 'go', then exits with the code it is given.
FIRST_EXITS_WHEN_TOLD = (
    "import os, sys, time\n"
    "first = not os.path.exists('calls')\n"
    "open('calls', 'a').write('x')\n"
    "if not first: time.sleep(300)\n"
    "while not os.path.exists('go'): time.sleep(0.02)\n"
    "sys.exit(int(sys.argv[1]))\n"
)
# A trainer killed while it uploads its model: its scratch folder (named after its run), the
# checkpoint it saved and what it uploaded of its model stay behind in the (folder) bucket.
KILLED_AT_WORK = (
    "import os, signal\n"
    "from training_core.blobs.local import LocalBlobStore\n"
    "run, model = os.environ['TRAINING_RUN_ID'], os.environ['TRAINING_MODEL_URL']\n"
    "os.makedirs(os.path.join(os.environ['SCRATCH_DIR'], run + '-work'))\n"
    "bucket = LocalBlobStore()\n"
    "for name in ('step-0001-000000.pt', 'latest.json'):\n"
    "    bucket.write_bytes(f'{model}.checkpoints/{run}/{name}', b'saved')\n"
    "for suffix in ('.metrics.json', '.png'):\n"
    "    bucket.write_bytes(model.removesuffix('.pth') + suffix, b'companion')\n"
    "open('weights', 'wb').write(b'weights')\n"
    "bucket.upload(os.path.abspath('weights'), model, metadata={'run_id': run})\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)
CHECKPOINTED_AND_WAITING = KILLED_AT_WORK.replace(
    "os.kill(os.getpid(), signal.SIGKILL)", "open('spawned', 'w').write('yes'); signal.pause()"
)


class FlakyStore:
    """The store as the launcher sees it through an outage: the calls named in ``failing``
    raise ``StoreUnavailable`` while ``down`` is set; ``refused`` counts them."""

    def __init__(self, store, failing=("update_run", "set_project_status", "log")) -> None:
        self._store = store
        self.failing = set(failing)
        self.down = False
        self.refused = 0

    def __getattr__(self, name):
        method = getattr(self._store, name)
        if name not in self.failing:
            return method

        def call(*args, **kwargs):
            if self.down:
                self.refused += 1
                raise StoreUnavailable("database unreachable (outage)")
            return method(*args, **kwargs)

        return call


@pytest.fixture
def launch(settings, store):
    """Make a launcher with a given stand-in program; every launcher made is closed."""
    made: list[LocalLauncher] = []

    def make(command: list[str], **options) -> LocalLauncher:
        options = {"grace_seconds": 1, "poll_seconds": 0.05, **options}
        launcher = LocalLauncher(
            options.pop("settings", settings), options.pop("store", store), command=command,
            **options,
        )  # fmt: skip
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.close()


@pytest.fixture
def record(store, project_factory, settings):
    """A project in training with a recorded run (as the API leaves it)."""

    def make(phase: Phase = Phase.QUEUED, backoff_limit: int = 3) -> RunSpec:
        project = project_factory(f"p-{uuid4().hex[:6]}", status="training")
        run_id = uuid4()
        spec = RunSpec(
            run_id=run_id,
            run_name=run_name(project.id, 1),
            project_id=project.id,
            dataset_url="file:///data/x.zip",
            model_url=f"{settings.bucket_url}/models/m.pth",
            backoff_limit=backoff_limit,
        )
        store.create_run(
            NewRun(
                id=run_id,
                project_id=project.id,
                name=spec.run_name,
                spec=spec.model_dump(mode="json"),
                model_url=spec.model_url,
                phase=phase,
            )
        )
        return spec

    return make


def run_dir(settings, spec: RunSpec) -> Path:
    return settings.local_runs_dir / spec.run_name


def phase_of(store, spec: RunSpec) -> Phase:
    return store.get_run(spec.run_id).phase


def test_the_trainer_gets_the_job_environment_contract(
    launch, record, store, settings, monkeypatch
):
    monkeypatch.setenv("API_TOKENS", "must-not-leak")
    spec = record()

    launch(program(DUMP_ENV)).start(spec)

    env_file = run_dir(settings, spec) / "env.json"
    env = json.loads(wait_for(lambda: env_file.exists() and env_file.read_text()))
    assert {k: env[k] for k in spec.to_env()} == spec.to_env()
    assert env["DATABASE_URL"] == settings.database_url.get_secret_value()
    assert env["BUCKET_URL"] == settings.bucket_url and env["PYTHONUNBUFFERED"] == "1"
    assert "API_TOKENS" not in env
    assert (run_dir(settings, spec) / "trainer.log").exists()
    assert oct(run_dir(settings, spec).stat().st_mode & 0o777) == "0o700"


def test_a_crash_fails_the_run_and_the_project(launch, record, store, settings):
    spec = record()

    launch(program(EXIT_WITH, "3")).start(spec)

    wait_for(lambda: phase_of(store, spec) is Phase.FAILED)
    run = store.get_run(spec.run_id)
    assert "exited with code 3 before finishing the run" in run.error
    assert str(run_dir(settings, spec) / "trainer.log") in run.error
    assert store.get_project(spec.project_id).status == "failed"
    assert any(
        e.log_level == "error" and "code 3" in e.message for e in store.get_logs(spec.project_id)
    )


def test_an_outcome_the_trainer_recorded_is_never_overwritten(launch, record, store, settings):
    spec = record()
    launcher = launch(program(EXIT_WHEN_TOLD))
    launcher.start(spec)
    wait_for(lambda: phase_of(store, spec) is Phase.RUNNING)
    store.update_run(spec.run_id, RunUpdate(phase=Phase.SUCCEEDED))  # as the trainer does
    store.set_project_status(spec.project_id, "trained")
    (run_dir(settings, spec) / "go").write_text("exit now")

    run = store.get_run(spec.run_id)
    wait_for(lambda: launcher.describe(run)["state"] == "ended")
    time.sleep(0.2)

    assert phase_of(store, spec) is Phase.SUCCEEDED and store.get_run(spec.run_id).error is None
    assert store.get_project(spec.project_id).status == "trained"


def test_exit_65_without_an_outcome_is_recorded_as_failed(launch, record, store):
    spec = record()

    launch(program(EXIT_WITH, "65")).start(spec)

    wait_for(lambda: phase_of(store, spec) is Phase.FAILED)
    assert "exited with code 65 without recording an outcome" in store.get_run(spec.run_id).error


def test_interrupted_runs_resume_up_to_the_backoff_limit(launch, record, store, settings):
    spec = record(backoff_limit=2)

    launch(program(COUNT_AND_RETRY)).start(spec)

    wait_for(lambda: phase_of(store, spec) is Phase.FAILED)
    assert (run_dir(settings, spec) / "calls").read_text() == "xxx"  # the first try and 2 retries
    assert "exited with code 75" in store.get_run(spec.run_id).error
    lines = [e.message for e in store.get_logs(spec.project_id)]
    assert any("resuming from its checkpoint (retry 2 of 2)" in line for line in lines)


def test_runs_wait_their_turn_in_order(launch, record, store, settings, database_url, tmp_path):
    journal = tmp_path / "journal"
    specs = [record() for _ in range(3)]
    launcher = launch(
        program(JOURNAL, str(journal), "1"),
        settings=make_settings(database_url, tmp_path, local_max_concurrent=1),
    )
    for spec in specs:
        launcher.start(spec)

    wait_for(lambda: phase_of(store, specs[0]) is Phase.RUNNING)
    assert [phase_of(store, s) for s in specs[1:]] == [Phase.QUEUED, Phase.QUEUED]
    assert launcher.describe(store.get_run(specs[2].run_id))["state"] == "queued"
    wait_for(lambda: journal.exists() and journal.read_text().count("end") == 3, timeout=20)

    events = [line.split() for line in journal.read_text().splitlines()]
    assert [name for name, what, _ in events if what == "start"] == [s.run_name for s in specs]
    times = [float(t) for _, _, t in events]
    assert times == sorted(times)  # one at a time: each starts after the previous ended
    assert [what for _, what, _ in events] == ["start", "end"] * 3


def test_cancel_of_a_queued_run_means_it_never_starts(
    launch, record, store, settings, database_url, tmp_path
):
    first, second = record(), record()
    launcher = launch(
        program(MARK_AND_WAIT),
        settings=make_settings(database_url, tmp_path, local_max_concurrent=1),
    )
    launcher.start(first)
    launcher.start(second)
    wait_for(lambda: (run_dir(settings, first) / "spawned").exists())

    launcher.cancel(store.get_run(second.run_id))
    launcher.cancel(store.get_run(first.run_id))

    wait_for(lambda: launcher.describe(store.get_run(first.run_id))["state"] == "ended")
    time.sleep(0.3)
    assert launcher.describe(store.get_run(second.run_id)) is None
    assert not run_dir(settings, second).exists()


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period(
    launch, record, store, settings
):
    spec = record()
    launcher = launch(program(IGNORE_SIGTERM), grace_seconds=0.5)
    launcher.start(spec)
    run = store.get_run(spec.run_id)
    pid = wait_for(lambda: (launcher.describe(run) or {}).get("pid"))
    wait_for(lambda: (run_dir(settings, spec) / "deaf").exists())

    started = time.monotonic()
    launcher.cancel(run)
    assert launcher.describe(run)["state"] == "stopping"
    wait_for(lambda: launcher.describe(run)["state"] == "ended", timeout=10)

    assert time.monotonic() - started >= 0.5
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_restart_adopts_a_live_trainer_and_resumes_it_when_it_vanishes(
    launch, record, store, settings, request
):
    spec = record(Phase.RUNNING)
    folder = run_dir(settings, spec)
    folder.mkdir(parents=True)
    survivor = subprocess.Popen(program("import time; time.sleep(300)"), start_new_session=True)
    request.addfinalizer(survivor.kill)
    (folder / "pid").write_text(f"{survivor.pid} {psutil.Process(survivor.pid).create_time()}\n")

    launcher = launch(program(MARK_AND_WAIT))
    run = store.get_run(spec.run_id)
    wait_for(lambda: (launcher.describe(run) or {}).get("pid") == survivor.pid)
    assert not (folder / "spawned").exists()  # adopted, not started twice

    survivor.kill()
    survivor.wait()

    wait_for(lambda: (folder / "spawned").exists())
    assert phase_of(store, spec) is Phase.RUNNING
    assert any("disappeared; resuming" in e.message for e in store.get_logs(spec.project_id))


def test_restart_requeues_active_runs_whose_process_is_gone(
    launch, record, store, settings, database_url, tmp_path
):
    running, queued = record(Phase.RUNNING), record(Phase.QUEUED)
    folder = run_dir(settings, running)
    folder.mkdir(parents=True)
    (folder / "pid").write_text(f"{os.getpid()} 12.0\n")  # a pid now used by another process

    launch(
        program(MARK_AND_WAIT),
        settings=make_settings(database_url, tmp_path, local_max_concurrent=2),
    )

    for spec in (running, queued):
        wait_for(lambda spec=spec: (run_dir(settings, spec) / "spawned").exists())
        assert phase_of(store, spec) is Phase.RUNNING


def test_close_stops_trainers_and_leaves_their_runs_to_resume(launch, record, store):
    spec = record()
    launcher = launch(program("import time; time.sleep(300)"))
    launcher.start(spec)
    run = store.get_run(spec.run_id)
    pid = wait_for(lambda: (launcher.describe(run) or {}).get("pid"))

    launcher.close()

    assert not psutil.pid_exists(pid)
    assert phase_of(store, spec) is Phase.RUNNING  # the next start re-queues it


def test_a_run_with_an_unusable_spec_is_failed_on_restart(launch, store, project_factory):
    project = project_factory(status="training")
    broken = store.create_run(
        NewRun(project_id=project.id, name="train-broken-1", spec={"model": 1})
    )

    launch(program(MARK_AND_WAIT))

    wait_for(lambda: store.get_run(broken.id).phase is Phase.FAILED)
    assert "spec is not valid" in store.get_run(broken.id).error


def test_an_exit_during_a_store_outage_is_retried_once_the_store_is_back(
    launch, record, store, settings
):
    spec = record()
    flaky = FlakyStore(store)
    launch(program(FIRST_EXITS_WHEN_TOLD, "75"), store=flaky).start(spec)
    folder = run_dir(settings, spec)
    wait_for(lambda: (folder / "calls").exists())

    flaky.down = True
    (folder / "go").write_text("exit now")
    wait_for(lambda: flaky.refused >= 2)  # the exit was seen, and tried again
    flaky.down = False

    wait_for(lambda: (folder / "calls").read_text() == "xx")  # resumed
    assert phase_of(store, spec) is Phase.RUNNING
    lines = [e.message for e in store.get_logs(spec.project_id) if "resuming" in e.message]
    assert len(lines) == 1 and "(retry 1 of 3)" in lines[0]


@pytest.mark.parametrize(
    "failing", [("update_run", "set_project_status", "log"), ("set_project_status",)]
)
def test_a_crash_during_a_store_outage_fails_the_run_once_the_store_is_back(
    launch, record, store, settings, failing
):
    spec = record()
    flaky = FlakyStore(store, failing)
    launch(program(FIRST_EXITS_WHEN_TOLD, "3"), store=flaky).start(spec)
    wait_for(lambda: phase_of(store, spec) is Phase.RUNNING)

    flaky.down = True
    (run_dir(settings, spec) / "go").write_text("exit now")
    wait_for(lambda: flaky.refused >= 2)
    flaky.down = False

    wait_for(lambda: store.get_project(spec.project_id).status == "failed")
    assert phase_of(store, spec) is Phase.FAILED
    lines = [e.message for e in store.get_logs(spec.project_id) if "failed:" in e.message]
    assert len(lines) == 1 and "exited with code 3" in lines[0]


def test_a_killed_trainer_leaves_no_scratch_folder_checkpoint_or_partial_model(
    launch, record, store, database_url, tmp_path
):
    settings = make_settings(database_url, tmp_path, scratch_dir=tmp_path / "scratch")
    spec = record()
    model = Path(spec.model_url.removeprefix("file://"))
    another_run = uuid4()
    (tmp_path / "scratch" / f"{another_run}-work").mkdir(parents=True)
    (model.parent / f"{model.name}.checkpoints" / str(another_run)).mkdir(parents=True)
    (model.parent / f"{model.name}.checkpoints" / str(another_run) / "latest.json").write_text("{}")

    launch(program(KILLED_AT_WORK), settings=settings).start(spec)

    wait_for(lambda: phase_of(store, spec) is Phase.FAILED)
    assert "killed by SIGKILL" in store.get_run(spec.run_id).error
    wait_for(lambda: not list(settings.scratch_dir.glob(f"{spec.run_id}-*")))
    wait_for(lambda: not (model.parent / f"{model.name}.checkpoints" / str(spec.run_id)).exists())
    # The model and its companions go (the run failed); another run's files stay.
    wait_for(lambda: not model.exists())
    assert sorted(p.name for p in model.parent.iterdir() if not p.name.startswith(".")) == [
        f"{model.name}.checkpoints"
    ]
    assert [p.name for p in settings.scratch_dir.iterdir()] == [f"{another_run}-work"]
    assert [p.name for p in (model.parent / f"{model.name}.checkpoints").iterdir()] == [
        str(another_run)
    ]


def test_a_cancelled_run_leaves_no_checkpoint(launch, record, store, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, scratch_dir=tmp_path / "scratch")
    spec = record()
    checkpoints = Path(f"{spec.model_url.removeprefix('file://')}.checkpoints") / str(spec.run_id)
    launcher = launch(program(CHECKPOINTED_AND_WAITING), settings=settings)
    launcher.start(spec)
    wait_for(lambda: (run_dir(settings, spec) / "spawned").exists())
    assert checkpoints.is_dir()

    launcher.cancel(store.get_run(spec.run_id))  # what the API's cancel does first

    wait_for(lambda: launcher.describe(store.get_run(spec.run_id))["state"] == "ended")
    wait_for(lambda: not checkpoints.exists())
    assert not list(settings.scratch_dir.glob(f"{spec.run_id}-*"))
    # A model uploaded before the cancel is not a failure's leftover: it stays.
    assert Path(spec.model_url.removeprefix("file://")).is_file()

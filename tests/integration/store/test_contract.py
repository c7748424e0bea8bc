"""The store contract: every adapter behaves the same over the same real Postgres.

Each test runs against ``PostgresStore`` and ``SupabaseStore`` (through the PostgREST
endpoint) and checks what lands in the tables, not only what the adapter returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from uuid import uuid4

import pytest

from training_core.domain import Phase
from training_core.errors import Conflict, InvalidInput, InvalidState, NotFound
from training_core.store.base import NewRun, ProjectStatus, RunUpdate, Store

T = TypeVar("T")


def race(count: int, attempt: Callable[[], T]) -> list[T | Exception]:
    """Run ``attempt`` in ``count`` threads released together; results or errors, in order."""
    start = threading.Barrier(count)

    def one() -> T | Exception:
        start.wait()
        try:
            return attempt()
        except Exception as error:  # noqa: BLE001 - the outcome is what the test inspects
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: one(), range(count)))


def new_run(store: Store, project_id: Any, attempt: int = 1, **fields: Any):
    return store.create_run(
        NewRun(
            project_id=project_id, name=f"train-{project_id}-{attempt}", attempt=attempt, **fields
        )
    )


# -- projects ----------------------------------------------------------------------------
def test_a_created_project_reads_back_and_is_in_the_table(store: Store, db) -> None:
    project = store.create_project("digits", metadata={"num_classes": 10})

    assert store.get_project(project.id) == project
    row = db.execute("select name, status, task_type, framework, metadata from projects").fetchone()
    assert row == {
        "name": "digits",
        "status": "pending_training",
        "task_type": "image_classification",
        "framework": "pytorch",
        "metadata": {"num_classes": 10},
    }


def test_an_unknown_project_is_not_found(store: Store) -> None:
    missing = uuid4()
    with pytest.raises(NotFound, match=str(missing)):
        store.get_project(missing)


def test_set_project_status_is_conditional_and_reports_the_actual_status(store: Store, db) -> None:
    project = store.create_project("digits", status="training")

    assert (
        store.set_project_status(project.id, "trained", expected=["training"]).status == "trained"
    )
    with pytest.raises(InvalidState) as lost:
        store.set_project_status(project.id, "failed", expected=["training", "pending_training"])
    assert lost.value.actual == "trained"
    assert "'trained'" in str(lost.value)
    assert db.execute("select status from projects").fetchone() == {"status": "trained"}

    assert store.set_project_status(project.id, "pending_training").status == "pending_training"
    with pytest.raises(NotFound):
        store.set_project_status(uuid4(), "trained", expected=["training"])


# -- datasets ----------------------------------------------------------------------------
def test_the_newest_dataset_of_the_project_is_returned(store: Store) -> None:
    project = store.create_project("digits")
    other = store.create_project("other")
    with pytest.raises(NotFound, match="dataset"):
        store.get_dataset(project.id)

    store.add_dataset(project.id, "gs://bucket/p/raw/v1.zip", name="v1", size=10)
    newest = store.add_dataset(project.id, "gs://bucket/p/raw/v2.zip", name="v2", size=20)
    store.add_dataset(other.id, "gs://bucket/o/raw/dataset.zip")

    dataset = store.get_dataset(project.id)
    assert dataset == newest
    assert (dataset.gcs_url, dataset.name, dataset.size, dataset.source) == (
        "gs://bucket/p/raw/v2.zip",
        "v2",
        20,
        "upload",
    )


def test_a_dataset_of_an_unknown_project_is_refused(store: Store, db) -> None:
    missing = uuid4()
    with pytest.raises(NotFound, match=str(missing)):
        store.add_dataset(missing, "gs://bucket/x/raw/dataset.zip")
    assert db.execute("select count(*) as n from datasets").fetchone() == {"n": 0}


# -- the claim -----------------------------------------------------------------------------
def test_twenty_concurrent_starts_have_exactly_one_winner(store: Store, db) -> None:
    project = store.create_project("digits")

    def start() -> Any:
        run = NewRun(project_id=project.id, name=f"train-digits-{uuid4().hex[:8]}")
        return store.start_run("pending_training", "training", run)

    outcomes = race(20, start)

    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1 and not any(isinstance(o, Exception) for o in outcomes)
    assert db.execute("select status from projects").fetchone() == {"status": "training"}
    assert db.execute("select count(*) as n from training_runs").fetchone() == {"n": 1}


# -- runs ----------------------------------------------------------------------------------
def test_a_created_run_is_queued_and_reads_back(store: Store, db) -> None:
    project = store.create_project("digits")
    chosen = uuid4()

    run = store.create_run(
        NewRun(
            id=chosen,
            project_id=project.id,
            name="train-digits-1",
            spec={"epochs": 3, "model": "resnet18"},
            model_url="gs://bucket/p/models/digits.pth",
        )
    )

    assert run.id == chosen
    assert (run.phase, run.attempt, run.progress, run.error) == (Phase.QUEUED, 1, {}, None)
    assert run.started_at is None and run.finished_at is None and run.created_at is not None
    assert store.get_run(run.id) == run
    row = db.execute("select id, phase, spec, model_url from training_runs").fetchone()
    assert row == {
        "id": chosen,
        "phase": "Queued",
        "spec": {"epochs": 3, "model": "resnet18"},
        "model_url": "gs://bucket/p/models/digits.pth",
    }
    with pytest.raises(NotFound, match="run"):
        store.get_run(uuid4())


def test_a_run_of_an_unknown_project_is_not_found(store: Store) -> None:
    missing = uuid4()
    with pytest.raises(NotFound, match=str(missing)):
        new_run(store, missing)


def test_a_second_active_run_of_a_project_is_a_conflict(store: Store, db) -> None:
    project = store.create_project("digits")
    first = new_run(store, project.id, attempt=1)

    with pytest.raises(Conflict, match="active run"):
        new_run(store, project.id, attempt=2)
    assert db.execute("select count(*) as n from training_runs").fetchone() == {"n": 1}

    store.update_run(first.id, RunUpdate(phase=Phase.FAILED, error="out of memory"))
    assert new_run(store, project.id, attempt=2).phase is Phase.QUEUED


def test_concurrent_runs_of_one_project_leave_exactly_one(store: Store, db) -> None:
    project = store.create_project("digits")

    outcomes = race(8, lambda: store.create_run(NewRun(project_id=project.id, name=f"r-{uuid4()}")))

    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert all(isinstance(o, Conflict) for o in outcomes if isinstance(o, Exception))
    assert db.execute("select count(*) as n from training_runs").fetchone() == {"n": 1}


def test_a_lost_conditional_update_reports_the_actual_phase_and_writes_nothing(
    store: Store, db
) -> None:
    project = store.create_project("digits")
    run = new_run(store, project.id)
    store.update_run(run.id, RunUpdate(phase=Phase.SUCCEEDED), expected=[Phase.QUEUED])

    with pytest.raises(InvalidState) as lost:
        store.update_run(
            run.id,
            RunUpdate(phase=Phase.FAILED, error="pod deleted"),
            expected=[Phase.QUEUED, Phase.PENDING, Phase.RUNNING],
        )

    assert lost.value.actual == "Succeeded"
    assert "'Succeeded'" in str(lost.value) and "Running" in str(lost.value)
    assert db.execute("select phase, error from training_runs").fetchone() == {
        "phase": "Succeeded",
        "error": None,
    }
    with pytest.raises(NotFound):
        store.update_run(uuid4(), RunUpdate(phase=Phase.RUNNING), expected=[Phase.QUEUED])


def test_an_update_changes_only_the_fields_it_names(store: Store) -> None:
    project = store.create_project("digits")
    run = new_run(store, project.id, model_url="gs://bucket/p/models/a.pth")

    running = store.update_run(
        run.id, RunUpdate(phase=Phase.RUNNING, progress={"epoch": 1, "total_epochs": 3})
    )
    progressed = store.update_run(run.id, RunUpdate(progress={"epoch": 2, "total_epochs": 3}))

    assert running.progress == {"epoch": 1, "total_epochs": 3}
    assert progressed.phase is Phase.RUNNING
    assert progressed.progress == {"epoch": 2, "total_epochs": 3}
    assert progressed.model_url == "gs://bucket/p/models/a.pth" and progressed.error is None
    # Nothing to change: the run as it is, or the condition's verdict.
    assert (
        store.update_run(run.id, RunUpdate(), expected=[Phase.RUNNING]).progress
        == progressed.progress
    )
    with pytest.raises(InvalidState):
        store.update_run(run.id, RunUpdate(), expected=[Phase.QUEUED])


def test_the_database_stamps_started_and_finished_once(store: Store) -> None:
    project = store.create_project("digits")
    run = new_run(store, project.id)

    started = store.update_run(run.id, RunUpdate(phase=Phase.RUNNING), expected=[Phase.QUEUED])
    preempted = store.update_run(run.id, RunUpdate(phase=Phase.PENDING), expected=[Phase.RUNNING])
    resumed = store.update_run(run.id, RunUpdate(phase=Phase.RUNNING), expected=[Phase.PENDING])
    done = store.update_run(run.id, RunUpdate(phase=Phase.SUCCEEDED), expected=[Phase.RUNNING])

    assert started.started_at is not None and started.finished_at is None
    assert preempted.started_at == resumed.started_at == done.started_at == started.started_at
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.updated_at >= done.finished_at


def test_the_latest_run_is_the_newest(store: Store) -> None:
    project = store.create_project("digits")
    assert store.get_latest_run(project.id) is None

    first = new_run(store, project.id, attempt=1)
    store.update_run(first.id, RunUpdate(phase=Phase.CANCELLED))
    second = new_run(store, project.id, attempt=2)
    new_run(store, store.create_project("other").id)

    assert store.get_latest_run(project.id) == second


def test_a_start_claims_the_project_and_records_its_run_together(store: Store) -> None:
    project = store.create_project("digits", status="pending_training")
    run = NewRun(project_id=project.id, name="train-digits-1", spec={"epochs": 3})

    started = store.start_run("pending_training", "training", run)

    assert started is not None and started.id == run.id and started.phase is Phase.QUEUED
    assert started.spec == {"epochs": 3} and started.attempt == 1
    assert store.get_project(project.id).status == "training"
    assert store.get_latest_run(project.id) == started


def test_a_start_that_lost_the_claim_records_nothing(store: Store) -> None:
    project = store.create_project("digits", status="training")
    run = NewRun(project_id=project.id, name="train-digits-1")

    assert store.start_run("pending_training", "training", run) is None
    assert store.get_latest_run(project.id) is None
    assert store.start_run("pending_training", "training", run.model_copy(
        update={"project_id": uuid4()}
    )) is None  # no such project


def test_a_start_beside_an_active_run_is_undone_whole(store: Store) -> None:
    project = store.create_project("digits", status="pending_training")
    active = new_run(store, project.id)  # recorded while the project still says pending

    with pytest.raises(Conflict, match="already has an active run"):
        store.start_run(
            "pending_training", "training", NewRun(project_id=project.id, name="second", attempt=2)
        )
    assert store.get_project(project.id).status == "pending_training"  # the claim undone
    assert store.get_latest_run(project.id) == active


def test_only_stale_claims_without_an_active_run_are_released(store: Store) -> None:
    stuck = store.create_project("stuck", status="training")
    busy = store.create_project("busy", status="training")
    new_run(store, busy.id)

    assert store.release_stale_claims("training", "pending_training", 3600) == []
    released = store.release_stale_claims("training", "pending_training", 0)

    assert [p.id for p in released] == [stuck.id] and released[0].status == "pending_training"
    assert store.get_project(stuck.id).status == "pending_training"
    assert store.get_project(busy.id).status == "training"


def test_projects_are_listed_newest_first_and_bounded(store: Store) -> None:
    made = [store.create_project(f"listed-{n}") for n in range(3)]

    newest = store.list_projects(limit=3)
    assert [p.id for p in newest] == [p.id for p in reversed(made)]
    assert newest[0] == store.get_project(made[-1].id)
    assert newest[0].created_at is not None and newest[0].created_at >= newest[1].created_at
    assert len(store.list_projects(limit=2)) == 2
    assert store.list_projects(limit=0) == []


def test_a_deleted_project_goes_with_its_dataset_runs_and_logs(store: Store) -> None:
    project = store.create_project("short-lived")
    store.add_dataset(project.id, "gs://data-bucket/raw/short.zip", name="short")
    new_run(store, project.id)
    store.log(project.id, "registered")
    kept = store.create_project("kept")

    store.delete_project(project.id)
    store.delete_project(project.id)  # nothing left to delete: no error

    with pytest.raises(NotFound):
        store.get_project(project.id)
    assert store.get_latest_run(project.id) is None
    assert store.get_logs(project.id) == []
    assert store.get_project(kept.id) == kept


def test_a_projects_runs_are_listed_newest_first_and_bounded(store: Store) -> None:
    project = store.create_project("digits")
    assert store.list_runs(project.id) == []
    runs = []
    for attempt in (1, 2, 3):
        runs.append(new_run(store, project.id, attempt=attempt))
        store.update_run(runs[-1].id, RunUpdate(phase=Phase.FAILED))
    new_run(store, store.create_project("other").id)

    assert [r.id for r in store.list_runs(project.id)] == [r.id for r in reversed(runs)]
    assert [r.attempt for r in store.list_runs(project.id, limit=2)] == [3, 2]
    assert store.list_runs(project.id, limit=0) == []
    assert store.list_runs(project.id)[0] == store.get_latest_run(project.id)


def test_recent_runs_of_all_projects_are_listed_newest_first_with_their_project(
    store: Store,
) -> None:
    assert store.list_recent_runs() == []
    digits = store.create_project("digits", status="training")
    flowers = store.create_project("<img src=x onerror=alert(1)>")
    first = new_run(store, digits.id)
    store.update_run(first.id, RunUpdate(phase=Phase.FAILED))
    second = new_run(store, flowers.id)
    third = new_run(store, digits.id, attempt=2)

    listed = store.list_recent_runs()

    assert [(item.project.id, item.run.id) for item in listed] == [
        (digits.id, third.id), (flowers.id, second.id), (digits.id, first.id)
    ]  # fmt: skip
    assert listed[0].project == store.get_project(digits.id)
    assert listed[0].run == store.get_run(third.id)
    assert listed[1].project.name == "<img src=x onerror=alert(1)>"  # stored as given
    assert [item.run.id for item in store.list_recent_runs(limit=2)] == [third.id, second.id]
    assert store.list_recent_runs(limit=0) == []

    store.delete_project(digits.id)
    assert [item.run.id for item in store.list_recent_runs()] == [second.id]


def test_a_runs_epoch_history_lives_in_its_progress_and_reads_back_whole(store: Store, db) -> None:
    run = new_run(store, store.create_project("digits").id)
    history = [
        {"epoch": n, "loss": 1 / n, "val_loss": 1.5 / n, "val_accuracy": 0.5 + n / 10,
         "images_per_second": 800.5, "seconds": 2.25}
        for n in (1, 2, 3)
    ]  # fmt: skip
    progress = {"epoch": 3, "total_epochs": 5, "loss": 1 / 3, "history": history}

    updated = store.update_run(run.id, RunUpdate(phase=Phase.RUNNING, progress=progress))

    assert updated.progress == progress == store.get_run(run.id).progress
    assert store.list_recent_runs()[0].run.progress["history"] == history
    assert db.execute("select progress from training_runs").fetchone() == {"progress": progress}


def test_a_model_url_is_in_use_once_any_run_has_it(store: Store) -> None:
    url = "gs://models-bucket/models/digits_model.pth"
    assert store.model_url_in_use(url) is False
    new_run(store, store.create_project("digits").id, model_url=url)
    assert store.model_url_in_use(url) is True
    assert store.model_url_in_use(url.replace("digits", "other")) is False


def test_active_runs_are_listed_oldest_first(store: Store) -> None:
    projects = [store.create_project(f"p{i}") for i in range(4)]
    runs = [new_run(store, p.id) for p in projects]
    store.update_run(runs[1].id, RunUpdate(phase=Phase.RUNNING))
    store.update_run(runs[2].id, RunUpdate(phase=Phase.SUCCEEDED))
    store.update_run(runs[3].id, RunUpdate(phase=Phase.PENDING))

    active = store.list_active_runs()

    assert [r.id for r in active] == [runs[0].id, runs[1].id, runs[3].id]
    assert [r.phase for r in active] == [Phase.QUEUED, Phase.RUNNING, Phase.PENDING]


# -- models ----------------------------------------------------------------------------------
def test_a_model_is_recorded_once_per_run(store: Store, db) -> None:
    project = store.create_project("digits")
    run = new_run(store, project.id)

    first = store.insert_model(
        project_id=project.id,
        run_id=run.id,
        name="digits",
        gcs_url="gs://bucket/p/models/digits.pth",
        metadata={"val_accuracy": 0.97},
    )
    again = store.insert_model(
        project_id=project.id, run_id=run.id, name="other", gcs_url="gs://bucket/other.pth"
    )

    assert again == first
    assert (first.name, first.gcs_url, first.metadata) == (
        "digits",
        "gs://bucket/p/models/digits.pth",
        {"val_accuracy": 0.97},
    )
    assert store.get_models(project.id) == [first]
    assert db.execute("select count(*) as n from models").fetchone() == {"n": 1}


def test_concurrent_model_records_of_one_run_agree(store: Store, db) -> None:
    project = store.create_project("digits")
    run = new_run(store, project.id)

    outcomes = race(
        8,
        lambda: store.insert_model(
            project_id=project.id, run_id=run.id, name="m", gcs_url="gs://bucket/m.pth"
        ),
    )

    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert len({o.id for o in outcomes}) == 1  # type: ignore[union-attr]
    assert db.execute("select count(*) as n from models").fetchone() == {"n": 1}


# -- agent_logs --------------------------------------------------------------------------------
def test_logs_are_newest_first_and_bounded(store: Store, db) -> None:
    project = store.create_project("digits")
    other = store.create_project("other")
    for i in range(5):
        store.log(project.id, f"line {i}")
    store.log(project.id, "training failed: out of memory", level="error", agent="trainer")
    store.log(other.id, "not mine")

    newest = store.get_logs(project.id, limit=3)

    assert [e.message for e in newest] == ["training failed: out of memory", "line 4", "line 3"]
    assert (newest[0].log_level, newest[0].agent_name) == ("error", "trainer")
    assert (newest[1].log_level, newest[1].agent_name) == ("info", "training-agent")
    assert len(store.get_logs(project.id)) == 6
    assert store.get_logs(project.id, limit=0) == []
    assert db.execute("select count(*) as n from agent_logs").fetchone() == {"n": 7}


# -- the status page ---------------------------------------------------------------------------
def test_a_status_is_what_the_three_reads_give_in_one(store: Store) -> None:
    project = store.create_project("digits", status="training")
    assert store.get_status(project.id, logs=5) == ProjectStatus(project, None, [])

    store.update_run(new_run(store, project.id, attempt=1).id, RunUpdate(phase=Phase.FAILED))
    latest = store.update_run(
        new_run(store, project.id, attempt=2).id,
        RunUpdate(phase=Phase.RUNNING, progress={"epoch": 2, "loss": 0.5}),
    )
    for i in range(4):
        store.log(project.id, f"line {i}")
    store.log(store.create_project("other").id, "not mine")

    status = store.get_status(project.id, logs=3)
    assert status == ProjectStatus(
        store.get_project(project.id), store.get_latest_run(project.id), store.get_logs(project.id, 3)
    )
    assert status.run == latest and [e.message for e in status.logs] == ["line 3", "line 2", "line 1"]
    assert store.get_status(project.id, logs=0).logs == []


def test_the_status_of_an_unknown_project_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="project"):
        store.get_status(uuid4())


# -- bad values and health --------------------------------------------------------------------
def test_a_value_the_database_refuses_is_invalid_input(store: Store, db) -> None:
    with pytest.raises(InvalidInput):
        store.create_project("bad\x00name")
    assert db.execute("select count(*) as n from projects").fetchone() == {"n": 0}


def test_ping_answers(store: Store) -> None:
    store.ping()

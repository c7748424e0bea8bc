from training_core.domain import Phase
from training_core.store.base import NewRun


def test_project_run_roundtrip(pg_store):
    project = pg_store.create_project("digits", metadata={"num_classes": 10})
    run = pg_store.create_run(NewRun(project_id=project.id, name="r1"))
    assert run.phase is Phase.QUEUED
    assert pg_store.get_latest_run(project.id).id == run.id

"""Registering a project from a local archive: what a failure while recording takes back,
against a real Postgres and a real folder bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.cluster import free_port
from tests.fixtures.digits import DigitsZip
from training_core.blobs import open_blob_store
from training_core.errors import AgentError, InvalidInput, StoreUnavailable
from training_agent.registration import register_project
from training_core.settings import Settings, load_settings
from training_core.store import Store
from training_core.store.postgres import PostgresStore


@pytest.fixture
def bucket_settings(tmp_path: Path) -> Settings:
    return load_settings(bucket_url=f"file://{tmp_path / 'bucket'}", scratch_dir=tmp_path / "scratch")


def register(settings: Settings, store: Store, archive: Path) -> object:
    blobs = open_blob_store(settings)
    return register_project("p", str(archive), {}, settings=settings, store=store, blobs=blobs)


def bucket_objects(settings: Settings) -> list[str]:
    return open_blob_store(settings).list(f"{settings.bucket_url}/")


@pytest.fixture
def store_that_cannot_add_datasets(database_url: str) -> Iterator[PostgresStore]:
    """A store whose database role may record projects but not datasets."""
    role = f"registrar_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f"create role {role} login")
        admin.execute(f"grant select, insert, delete on projects to {role}")
        admin.execute(f"grant select on datasets to {role}")
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    store = PostgresStore(psycopg.conninfo.make_conninfo(**{**params, "user": role}), timeout=5)
    yield store
    store.close()


def test_an_archive_is_removed_again_when_the_project_cannot_be_recorded(
    bucket_settings: Settings, digits_zip: DigitsZip
) -> None:
    unreachable = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout=1)
    try:
        with pytest.raises(StoreUnavailable):
            register(bucket_settings, unreachable, digits_zip(16, limit=200))
    finally:
        unreachable.close()
    assert bucket_objects(bucket_settings) == []


def test_a_project_is_removed_again_when_its_dataset_cannot_be_recorded(
    bucket_settings: Settings, digits_zip: DigitsZip, store_that_cannot_add_datasets: PostgresStore,
    pg_store: PostgresStore,
) -> None:
    with pytest.raises(AgentError):
        register(bucket_settings, store_that_cannot_add_datasets, digits_zip(16, limit=200))

    assert pg_store.list_projects() == []
    assert bucket_objects(bucket_settings) == []


def test_a_refused_archive_writes_nothing(
    bucket_settings: Settings, pg_store: PostgresStore, tmp_path: Path
) -> None:
    archive = tmp_path / "notes.zip"
    archive.write_text("not an archive")

    with pytest.raises(InvalidInput, match="not a zip or tar"):
        register(bucket_settings, pg_store, archive)

    assert pg_store.list_projects() == []
    assert bucket_objects(bucket_settings) == []
    assert not list((tmp_path / "scratch").rglob("*.*"))  # no extracted files left

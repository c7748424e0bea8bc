"""Registering a project and its dataset, as the platform does, so that the API can train it.

A local archive goes through a run's own intake first (safe extraction, ImageFolder layout,
every image decoded) and is then copied into the bucket's ``raw/``; a URL is only checked
to exist. Nothing is written before every check passed, and a failure while recording
removes what was written: no archive without a project, no project without its dataset.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Le
from pydantic import TypeAdapter, ValidationError

from training_core.blobs import BlobStore, parse_url
from training_core.dataset import InvalidDataset
from training_core.domain import Dataset, Project, safe_name
from training_core.errors import AgentError, BlobNotFound, InvalidInput
from training_core.intake import intake_dataset
from training_core.runspec import MIN_CLASSES, SUPPORTED_MODELS, RunSpec, TrainingMetadata
from training_core.settings import Settings
from training_core.store import Store

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar")
DATASET_SOURCE = "cli"  # datasets.source of the rows this module writes


class InvalidOption(InvalidInput):
    """A training option outside what the API accepts; ``option`` names it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


@dataclass(frozen=True)
class DatasetRef:
    url: str
    name: str
    size: int
    classes: tuple[str, ...] | None  # known when the archive was checked here


@dataclass(frozen=True)
class Registered:
    project: Project
    dataset: Dataset
    classes: tuple[str, ...] | None


# -- pure decisions ------------------------------------------------------------------------
def training_metadata(options: TrainingMetadata, settings: Settings) -> dict[str, Any]:
    """The ``projects.metadata`` keys the API's start decision reads, checked against the
    bounds it applies: RunSpec's, narrowed by the deployment's MAX_EPOCHS and MAX_BATCH_SIZE."""
    given = options.model_dump(exclude_none=True)
    if "model" in given and given["model"] not in SUPPORTED_MODELS:
        raise InvalidOption("model", f"use one of {', '.join(SUPPORTED_MODELS)}")
    narrower = {"epochs": Le(settings.max_epochs), "batch_size": Le(settings.max_batch_size)}
    for name in ("epochs", "learning_rate", "batch_size", "image_size"):
        if name in given:
            _check_bounds(name, given[name], narrower.get(name))
    return given


def _check_bounds(name: str, value: Any, narrower: Le | None) -> None:
    field = RunSpec.model_fields[name]
    bounds = [*field.metadata, *([narrower] if narrower else [])]
    try:
        TypeAdapter(Annotated[(field.annotation, *bounds)]).validate_python(value)
    except ValidationError as error:
        raise InvalidOption(name, error.errors()[0]["msg"]) from None


def is_url(source: str) -> bool:
    """As a run's intake reads a dataset source: a URL, or else a local path."""
    return "://" in source


def check_dataset_url(url: str, bucket_url: str) -> str:
    """A URL the trainers can read: ``gs://``, or the bucket's own scheme (``file://`` on
    one machine, where the trainers share this machine's files)."""
    scheme = parse_url(url).scheme  # InvalidInput for anything else
    bucket_scheme = parse_url(bucket_url, prefix=True).scheme
    if scheme not in ("gs", bucket_scheme):
        raise InvalidInput(
            f"dataset {url}: the bucket is {bucket_url}, so the trainers cannot read "
            f"{scheme}:// URLs; use a gs:// URL"
        )
    return url


def archive_suffix(filename: str) -> str:
    """The archive's own suffix (a dataset's format is told by its content, not its name)."""
    lower = filename.lower()
    return next((suffix for suffix in ARCHIVE_SUFFIXES if lower.endswith(suffix)), "")


def dataset_name(filename: str) -> str:
    suffix = archive_suffix(filename)
    return filename[: len(filename) - len(suffix)] or filename


def raw_object_url(
    bucket_url: str, project_name: str, filename: str, now: datetime, token: str
) -> str:
    """``<bucket>/raw/<project>-<time>-<token><suffix>``: a fresh name, so no upload ever
    replaces another project's archive."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    return f"{bucket_url}/raw/{safe_name(project_name)}-{stamp}-{token}{archive_suffix(filename)}"


# -- I/O -----------------------------------------------------------------------------------
def check_archive(path: Path, settings: Settings) -> tuple[str, ...]:
    """Check a local archive as a run's intake will; its classes, or ``InvalidInput``."""
    if not path.exists():
        raise InvalidInput(f"dataset {path} not found")
    if not path.is_file():
        raise InvalidInput(f"{path} is a folder: give its zip or tar archive")
    if path.stat().st_size > settings.max_download_bytes:
        raise InvalidInput(
            f"{path} is {path.stat().st_size} bytes; runs download at most "
            f"{settings.max_download_bytes} (MAX_DOWNLOAD_BYTES)"
        )
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix="register-") as workdir:
        description = intake_dataset(str(path), Path(workdir), settings)
    if description.num_classes < MIN_CLASSES:
        raise InvalidDataset(
            f"train/ has {description.num_classes} class ({', '.join(description.classes)}); "
            f"a classifier needs at least {MIN_CLASSES}"
        )
    return description.classes


def existing_dataset(url: str, settings: Settings, blobs: BlobStore) -> DatasetRef:
    check_dataset_url(url, settings.bucket_url)
    try:
        info = blobs.stat(url)
    except BlobNotFound:
        raise InvalidInput(f"dataset {url} not found") from None
    return DatasetRef(url, dataset_name(url.rsplit("/", 1)[-1]), info.size, None)


def register_project(
    name: str,
    source: str,
    metadata: dict[str, Any],
    *,
    settings: Settings,
    store: Store,
    blobs: BlobStore,
) -> Registered:
    """Record a project (status STATUS_PENDING) and its dataset; ``metadata`` comes from
    :func:`training_metadata`. ``InvalidInput`` when the dataset is refused."""
    if is_url(source):
        return _record(name, metadata, existing_dataset(source, settings, blobs), settings, store)
    path = Path(source)
    classes = check_archive(path, settings)
    url = raw_object_url(
        settings.bucket_url, name, path.name, datetime.now(UTC), secrets.token_hex(3)
    )
    info = blobs.upload(path, url, create_only=True)
    dataset = DatasetRef(url, dataset_name(path.name), info.size, classes)
    with _undone_on_failure(lambda: blobs.delete(url), f"the uploaded archive {url}"):
        return _record(name, {**metadata, "num_classes": len(classes)}, dataset, settings, store)


def _record(
    name: str, metadata: dict[str, Any], dataset: DatasetRef, settings: Settings, store: Store
) -> Registered:
    project = store.create_project(name, status=settings.status_pending, metadata=metadata)
    with _undone_on_failure(lambda: store.delete_project(project.id), f"project {project.id}"):
        row = store.add_dataset(
            project.id, dataset.url, name=dataset.name, size=dataset.size, source=DATASET_SOURCE
        )
    return Registered(project, row, dataset.classes)


@contextmanager
def _undone_on_failure(undo: Callable[[], object], what: str) -> Iterator[None]:
    """Run ``undo`` if the block fails (Ctrl-C included); the block's error still propagates."""
    try:
        yield
    except BaseException:
        try:
            undo()
        except AgentError as error:
            log.error("could not remove %s after the failure: %s", what, error)
        raise

"""Dataset intake, the one way a training run and ``check-dataset`` take a dataset in: fetch
the archive (a path or a blob URL), extract it safely, and describe the ImageFolder inside."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_core.archive import ArchiveLimits, extract_archive
from training_core.blobs import BlobStore, parse_url
from training_core.dataset import DatasetDescription, describe_dataset
from training_core.errors import BlobNotFound, InvalidInput
from training_core.settings import Settings


@dataclass(frozen=True)
class Fetched:
    path: Path  # the archive (or an extracted folder)
    size: int | None  # bytes downloaded; None: a local path, read where it is


def intake_dataset(
    source: str, workdir: Path, settings: Settings, *, blobs: BlobStore | None = None,
    **checks: Any,
) -> DatasetDescription:  # fmt: skip
    """``source``: an archive's path or ``gs://``/``file://`` URL, or an extracted folder.
    Whatever is fetched or extracted goes under ``workdir`` (an empty scratch folder);
    ``checks`` are :func:`open_dataset`'s (``expected_num_classes``, ``val_split``)."""
    fetched = fetch_dataset(source, workdir, settings, blobs=blobs)
    return open_dataset(fetched.path, workdir, settings, **checks)


def fetch_dataset(
    source: str, workdir: Path, settings: Settings, *, blobs: BlobStore | None = None,
    local_paths: bool = True,
) -> Fetched:  # fmt: skip
    """The archive a source names: a local path as it is (where ``local_paths`` allows one:
    a Job reads buckets only, never its own disk), a URL downloaded under ``workdir``."""
    if "://" not in source:
        if not local_paths:
            raise InvalidInput(f"dataset URL {source!r} must be gs://… or file://…")
        path = Path(source)
        if not path.exists():
            raise InvalidInput(f"dataset {source} not found")
        return Fetched(path, None)
    if blobs is None:
        from training_core.blobs import open_blob_store

        blobs = open_blob_store(settings)
    # Its own name, so that messages about it name the file the user uploaded.
    target = workdir / "download" / (Path(parse_url(source).path).name or "dataset")
    try:
        info = blobs.download(source, target, max_bytes=settings.max_download_bytes)
    except BlobNotFound:
        raise InvalidInput(f"dataset {source} not found") from None
    return Fetched(target, info.size)


def open_dataset(
    archive: Path, workdir: Path, settings: Settings, *,
    expected_num_classes: int | None = None, val_split: float | None = None,
) -> DatasetDescription:  # fmt: skip
    """Extract ``archive`` (an extracted folder is read as it is) into ``workdir/dataset``
    within the settings' limits, and check and describe the ImageFolder there. A downloaded
    archive is removed once extracted: the extracted copy is what counts."""
    if archive.is_dir():
        root = archive
    else:
        root = workdir / "dataset"
        extract_archive(archive, root, ArchiveLimits.from_settings(settings))
        if archive.is_relative_to(workdir):
            archive.unlink()
    return describe_dataset(
        root,
        expected_num_classes=expected_num_classes,
        val_split=val_split,
        max_image_pixels=settings.max_image_pixels,
    )

"""Dataset intake as a training run does it: fetch the archive (a path or a blob URL),
extract it safely, and describe the ImageFolder inside."""

from __future__ import annotations

from pathlib import Path

from training_core.archive import ArchiveLimits, extract_archive
from training_core.dataset import DatasetDescription, describe_dataset
from training_core.errors import BlobNotFound, InvalidInput
from training_core.settings import Settings


def intake_dataset(
    source: str,
    workdir: Path,
    settings: Settings,
    *,
    expected_num_classes: int | None = None,
    val_split: float | None = None,
) -> DatasetDescription:
    """``source``: an archive's path or ``gs://``/``file://`` URL, or an extracted folder.
    Whatever is fetched or extracted goes under ``workdir`` (an empty scratch folder)."""
    archive = _fetch(source, workdir, settings)
    if archive.is_dir():
        root = archive
    else:
        root = workdir / "dataset"
        extract_archive(archive, root, ArchiveLimits.from_settings(settings))
    return describe_dataset(
        root,
        expected_num_classes=expected_num_classes,
        val_split=val_split,
        max_image_pixels=settings.max_image_pixels,
    )


def _fetch(source: str, workdir: Path, settings: Settings) -> Path:
    if "://" not in source:
        path = Path(source)
        if not path.exists():
            raise InvalidInput(f"dataset {source} not found")
        return path
    from training_core.blobs import open_blob_store

    target = workdir / "dataset.archive"
    try:
        open_blob_store(settings).download(source, target, max_bytes=settings.max_download_bytes)
    except BlobNotFound:
        raise InvalidInput(f"dataset {source} not found") from None
    return target

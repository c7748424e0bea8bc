"""File helpers both adapters share: crc32c as GCS reports it, free-space checks, and
temporary files that either become the destination in one rename or vanish."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from training_core.errors import BlobTooLarge, InsufficientDiskSpace

CHUNK_BYTES = 1 << 20


def encode_crc32c(checksum: google_crc32c.Checksum) -> str:
    """Base64 of the big-endian digest: the form GCS reports in ``crc32c``."""
    return base64.b64encode(checksum.digest()).decode("ascii")


def file_crc32c(path: Path) -> str:
    checksum = google_crc32c.Checksum()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            checksum.update(chunk)
    return encode_crc32c(checksum)


def read_chunks(source: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: source.read(CHUNK_BYTES), b"")


def ensure_free_space(directory: Path, needed_bytes: int, reserve_bytes: int) -> None:
    """Refuse early rather than fill the volume half-way (``reserve_bytes`` stay free)."""
    free = shutil.disk_usage(directory).free
    if free - needed_bytes < reserve_bytes:
        raise InsufficientDiskSpace(
            f"not enough free disk space in {directory}: {needed_bytes} bytes needed, "
            f"{free} free, {reserve_bytes} must stay free"
        )


class CountingWriter:
    """Writes chunks to a file while counting bytes (against a limit) and summing crc32c."""

    def __init__(self, target: BinaryIO, *, url: str, max_bytes: int | None = None) -> None:
        self._target = target
        self._url = url
        self._max_bytes = max_bytes
        self._checksum = google_crc32c.Checksum()
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise BlobTooLarge(f"{self._url} is larger than the limit of {self._max_bytes} bytes")
        self._checksum.update(chunk)
        return self._target.write(chunk)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    @property
    def crc32c(self) -> str:
        return encode_crc32c(self._checksum)


@contextlib.contextmanager
def temporary_sibling(dest: Path, *, prefix: str | None = None) -> Iterator[tuple[Path, BinaryIO]]:
    """A temp file next to ``dest`` (same filesystem, so a rename is atomic).

    The caller renames or links it into place; whatever is left afterwards (an error, or a
    link that kept the original name) is removed, so no partial file ever remains.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=prefix or f".{dest.name}.", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield path, handle
    finally:
        path.unlink(missing_ok=True)


def commit(tmp: Path, handle: BinaryIO, dest: Path, *, create_only: bool) -> None:
    """Make ``tmp`` visible as ``dest`` in one step; ``FileExistsError`` if create-only loses."""
    handle.flush()
    os.fsync(handle.fileno())
    if create_only:
        os.link(tmp, dest)  # fails atomically if dest exists, even against a concurrent writer
    else:
        os.replace(tmp, dest)

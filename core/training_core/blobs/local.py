"""``file:///path``: a local folder that behaves like a bucket.

Writes go to a temp file in the same folder and appear in one rename (or one hard link
for create-only writes, which fails atomically if another writer got there first).
The checksum, content type and metadata of an object live in a hidden sidecar
``.blob-meta-<name>.json`` next to it, so downloads are verified as on GCS; a file put
into the folder by other means (no sidecar) is served unverified.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from training_core.blobs._files import (
    CountingWriter,
    commit,
    ensure_free_space,
    file_crc32c,
    read_chunks,
    temporary_sibling,
)
from training_core.blobs.base import BlobInfo, BlobStore, BlobUrl
from training_core.errors import (
    BlobError,
    BlobExists,
    BlobNotFound,
    BlobTooLarge,
    ChecksumMismatch,
    InvalidInput,
)
from training_core.settings import Settings

_RESERVED = ".blob-"  # temp files and sidecars; never listed, never accepted as object names


class LocalBlobStore(BlobStore):
    def __init__(self, *, min_free_disk_bytes: int = 0) -> None:
        self._min_free = min_free_disk_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBlobStore:
        return cls(min_free_disk_bytes=settings.min_free_disk_bytes)

    # -- reading -------------------------------------------------------------------------
    def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> BlobInfo:
        info = self._recorded(url)
        if max_bytes is not None and info.size > max_bytes:
            raise _too_large(url, info.size, max_bytes)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        ensure_free_space(dest.parent, info.size, self._min_free)
        with temporary_sibling(dest) as (tmp, handle):
            writer = CountingWriter(handle, url=url, max_bytes=max_bytes)
            with _open_object(url, self._path(url)) as source:
                writer.write_all(read_chunks(source))
            _verify(url, info, writer.crc32c)
            commit(tmp, handle, dest, create_only=False)
        return info.model_copy(update={"size": writer.size, "crc32c": writer.crc32c})

    def read_bytes(self, url: str) -> bytes:
        info = self._recorded(url)
        buffer = io.BytesIO()
        writer = CountingWriter(buffer, url=url)
        with _open_object(url, self._path(url)) as source:
            writer.write_all(read_chunks(source))
        _verify(url, info, writer.crc32c)
        return buffer.getvalue()

    def stat(self, url: str) -> BlobInfo:
        info = self._recorded(url)
        if info.crc32c is None:
            info = info.model_copy(update={"crc32c": file_crc32c(self._path(url))})
        return info

    def _recorded(self, url: str) -> BlobInfo:
        """Size and what the sidecar recorded (no checksum for a file put there by hand)."""
        path = self._path(url)
        if not path.is_file():
            raise BlobNotFound(url)
        size = path.stat().st_size
        sidecar = _read_sidecar(_sidecar_path(path))
        if sidecar.get("size") != size:
            sidecar = {}  # replaced by other means: the recorded checksum no longer applies
        return BlobInfo(
            url=url, size=size, crc32c=sidecar.get("crc32c"), metadata=sidecar.get("metadata", {})
        )

    def exists(self, url: str) -> bool:
        return self._path(url).is_file()

    def list(self, prefix_url: str) -> list[str]:
        prefix = _parse(prefix_url, prefix=True).path
        base = Path(prefix if prefix.endswith("/") else os.path.dirname(prefix))
        found = []
        for folder, dirs, files in os.walk(base):  # symlinked folders are not followed
            dirs[:] = [name for name in dirs if not name.startswith(_RESERVED)]
            for name in files:
                path = os.path.join(folder, name)
                if not name.startswith(_RESERVED) and path.startswith(prefix):
                    found.append(f"file://{path}")
        return sorted(found)

    def verify_upload(self, src: Path, url: str) -> BlobInfo:
        path = self._path(url)
        if not path.is_file():
            raise BlobNotFound(url)
        expected_size, expected_crc = Path(src).stat().st_size, file_crc32c(Path(src))
        actual_size, actual_crc = path.stat().st_size, file_crc32c(path)
        if (actual_size, actual_crc) != (expected_size, expected_crc):
            raise ChecksumMismatch(
                f"{url} does not match {src}: size {actual_size} vs {expected_size}, "
                f"crc32c {actual_crc} vs {expected_crc}"
            )
        return self.stat(url)

    # -- writing -------------------------------------------------------------------------
    def upload(
        self,
        src: Path,
        url: str,
        *,
        create_only: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> BlobInfo:
        try:
            with Path(src).open("rb") as source:
                return self._write(url, read_chunks(source), create_only, content_type, metadata)
        except FileNotFoundError:
            raise InvalidInput(f"cannot upload {src}: no such file") from None

    def write_bytes(
        self, url: str, data: bytes, *, create_only: bool = False, content_type: str | None = None
    ) -> BlobInfo:
        return self._write(url, [data], create_only, content_type, None)

    def delete(self, url: str, *, missing_ok: bool = True) -> None:
        path = self._path(url)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            if not missing_ok:
                raise BlobNotFound(url) from None
        _sidecar_path(path).unlink(missing_ok=True)

    def _write(
        self,
        url: str,
        chunks: Iterable[bytes],
        create_only: bool,
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> BlobInfo:
        path = self._path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _name_clash(url) from None
        try:
            with temporary_sibling(path, prefix=f"{_RESERVED}tmp-") as (tmp, handle):
                writer = CountingWriter(handle, url=url)
                writer.write_all(chunks)
                sidecar = {
                    "size": writer.size,
                    "crc32c": writer.crc32c,
                    "content_type": content_type,
                    "metadata": dict(metadata or {}),
                }
                if not create_only:
                    _sidecar_path(path).unlink(
                        missing_ok=True
                    )  # never pair new bytes with old checksum
                commit(tmp, handle, path, create_only=create_only)
            _write_sidecar(_sidecar_path(path), sidecar)
        except FileExistsError:
            raise BlobExists(url) from None
        except (IsADirectoryError, NotADirectoryError):
            raise _name_clash(url) from None
        return BlobInfo(
            url=url, size=writer.size, crc32c=writer.crc32c, metadata=sidecar["metadata"]
        )

    @staticmethod
    def _path(url: str) -> Path:
        path = Path(_parse(url).path)
        if path.name.startswith(_RESERVED):
            raise InvalidInput(
                f"invalid blob URL {url!r}: names starting with {_RESERVED!r} are reserved"
            )
        return path


def _parse(url: str, *, prefix: bool = False) -> BlobUrl:
    from training_core.blobs import parse_url

    parsed = parse_url(url, prefix=prefix)
    if parsed.scheme != "file":
        raise InvalidInput(f"{url!r} is not a file:// URL")
    return parsed


def _open_object(url: str, path: Path):
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError):
        raise BlobNotFound(url) from None


def _verify(url: str, info: BlobInfo, crc32c: str) -> None:
    if info.crc32c and info.crc32c != crc32c:
        raise ChecksumMismatch(
            f"{url}: checksum mismatch (crc32c {crc32c}, expected {info.crc32c})"
        )


def _name_clash(url: str) -> BlobError:
    return BlobError(f"cannot write {url}: a file and a folder would have one name")


def _too_large(url: str, size: int, max_bytes: int) -> BlobError:
    return BlobTooLarge(f"{url} is {size} bytes, larger than the limit of {max_bytes} bytes")


def _sidecar_path(path: Path) -> Path:
    return path.with_name(f"{_RESERVED}meta-{path.name}.json")


def _read_sidecar(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _write_sidecar(path: Path, content: dict) -> None:
    with temporary_sibling(path, prefix=f"{_RESERVED}tmp-") as (tmp, handle):
        handle.write(json.dumps(content).encode())
        commit(tmp, handle, path, create_only=False)

"""Blob storage: ``gs://bucket/path`` (Google Cloud Storage) and ``file:///path`` (a folder).

``open_blob_store(settings)`` gives one :class:`BlobStore` that routes each URL to its
adapter; the GCS client is only created when a ``gs://`` URL is first used, so a
machine without cloud credentials can work with ``file://`` alone.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from contextlib import suppress
from pathlib import Path

from training_core.blobs.base import BlobInfo, BlobStore, BlobUrl
from training_core.errors import InvalidInput
from training_core.settings import Settings

__all__ = ["BlobInfo", "BlobStore", "BlobUrl", "open_blob_store", "parse_url"]

_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9._-]*[a-z0-9]")
_MAX_OBJECT_NAME_BYTES = 1024


def parse_url(url: str, *, prefix: bool = False) -> BlobUrl:
    """Validate a blob URL. ``prefix=True`` accepts a bucket root or a path ending in ``/``
    (for listing); otherwise the URL must name one object."""
    if not isinstance(url, str):
        raise InvalidInput(f"blob URL must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("gs", "file"):
        raise InvalidInput(f"unsupported blob URL {url!r}: use gs://bucket/path or file:///path")
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidInput(
                f"invalid blob URL {url!r}: file URLs need an absolute path (file:///path)"
            )
        _check_path(url, rest[1:], prefix=prefix)
        return BlobUrl(scheme="file", bucket="", path=rest)
    bucket, _, path = rest.partition("/")
    _check_bucket(url, bucket)
    _check_path(url, path, prefix=prefix)
    return BlobUrl(scheme="gs", bucket=bucket, path=path)


def _check_bucket(url: str, bucket: str) -> None:
    """GCS naming rules: the server refuses other names, so say why before asking it."""
    if not bucket:
        raise InvalidInput(f"invalid blob URL {url!r}: no bucket name")
    problem = None
    if not 3 <= len(bucket) <= 222 or not _BUCKET_CHARS.fullmatch(bucket):
        problem = (
            "3-222 characters: lowercase letters, digits, '-', '_', '.'; "
            "letter or digit at both ends"
        )
    elif any(pair in bucket for pair in ("..", ".-", "-.")):
        problem = "no '..', '.-' or '-.'"
    elif any(len(part) > 63 for part in bucket.split(".")) or (
        "." not in bucket and len(bucket) > 63
    ):
        problem = "at most 63 characters between dots"
    elif bucket.startswith("goog") or "google" in bucket:
        problem = "must not start with 'goog' or contain 'google'"
    elif _is_ip_address(bucket):
        problem = "must not be an IP address"
    if problem:
        raise InvalidInput(f"invalid bucket name {bucket!r} in {url!r}: {problem}")


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_path(url: str, path: str, *, prefix: bool) -> None:
    if not path:
        if prefix:
            return
        raise InvalidInput(f"invalid blob URL {url!r}: no object path")
    if len(path.encode("utf-8")) > _MAX_OBJECT_NAME_BYTES:
        raise InvalidInput(
            f"invalid blob URL {url!r}: path longer than {_MAX_OBJECT_NAME_BYTES} bytes"
        )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise InvalidInput(f"invalid blob URL {url!r}: control characters in the path")
    segments = path.split("/")
    if prefix and segments[-1] == "":
        segments.pop()  # a trailing slash names a folder-like prefix
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidInput(
                f"invalid blob URL {url!r}: empty, '.' or '..' path segments are not allowed"
            )


class RoutingBlobStore(BlobStore):
    """One store for both schemes; each call goes to the adapter its URL names."""

    def __init__(self, settings: Settings) -> None:
        from training_core.blobs.local import LocalBlobStore

        self._settings = settings
        self._local = LocalBlobStore.from_settings(settings)
        self._gcs: BlobStore | None = None
        self._lock = threading.Lock()

    def _adapter(self, url: str, *, prefix: bool = False) -> BlobStore:
        if parse_url(url, prefix=prefix).scheme == "file":
            return self._local
        with self._lock:
            if self._gcs is None:
                from training_core.blobs.gcs import GcsBlobStore

                self._gcs = GcsBlobStore.from_settings(self._settings)
            return self._gcs

    def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> BlobInfo:
        return self._adapter(url).download(url, dest, max_bytes=max_bytes)

    def upload(
        self,
        src: Path,
        url: str,
        *,
        create_only: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> BlobInfo:
        return self._adapter(url).upload(
            src, url, create_only=create_only, content_type=content_type, metadata=metadata
        )

    def read_bytes(self, url: str) -> bytes:
        return self._adapter(url).read_bytes(url)

    def write_bytes(
        self, url: str, data: bytes, *, create_only: bool = False, content_type: str | None = None
    ) -> BlobInfo:
        return self._adapter(url).write_bytes(
            url, data, create_only=create_only, content_type=content_type
        )

    def stat(self, url: str) -> BlobInfo:
        return self._adapter(url).stat(url)

    def exists(self, url: str) -> bool:
        return self._adapter(url).exists(url)

    def delete(self, url: str, *, missing_ok: bool = True) -> None:
        self._adapter(url).delete(url, missing_ok=missing_ok)

    def list(self, prefix_url: str) -> list[str]:
        return self._adapter(prefix_url, prefix=True).list(prefix_url)

    def verify_upload(self, src: Path, url: str) -> BlobInfo:
        return self._adapter(url).verify_upload(src, url)


def open_blob_store(settings: Settings) -> BlobStore:
    return RoutingBlobStore(settings)


def delete_folder(blobs: BlobStore, prefix_url: str, *, empty_parents: int = 0) -> None:
    """Delete every object under ``prefix_url``; on a folder bucket (which, unlike GCS, keeps
    empty folders) also the folder and up to ``empty_parents`` parents left empty."""
    for url in blobs.list(f"{prefix_url.rstrip('/')}/"):
        blobs.delete(url)
    if prefix_url.startswith("file://"):
        folder = Path(prefix_url.removeprefix("file://"))
        for empty in (folder, *folder.parents[:empty_parents]):
            with suppress(OSError):  # not empty (another run's objects): keep it
                empty.rmdir()

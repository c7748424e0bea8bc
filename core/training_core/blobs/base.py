"""The blob storage interface: ``gs://bucket/path`` (GCS) and ``file:///path`` (local folder).

Both adapters behave the same: streaming transfers, checksums verified, create-only writes,
bounded retries for transient errors, typed errors (``BlobNotFound``, ``BlobExists``,
``BlobError``, ``InvalidInput`` for a bad URL).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class BlobUrl(BaseModel):
    """A parsed, validated blob URL. ``bucket`` is empty for ``file://``."""

    model_config = ConfigDict(frozen=True)

    scheme: str  # "gs" | "file"
    bucket: str
    path: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"gs://{self.bucket}/{self.path}"


class BlobInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    size: int
    crc32c: str | None = None  # base64, as GCS reports it
    metadata: dict[str, str] = {}


class BlobStore(ABC):
    @abstractmethod
    def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> BlobInfo:
        """Stream ``url`` into ``dest`` (verified); no partial ``dest`` is left on failure."""

    @abstractmethod
    def upload(
        self,
        src: Path,
        url: str,
        *,
        create_only: bool = True,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> BlobInfo:
        """Upload ``src``; ``BlobExists`` if ``create_only`` and the object is there."""

    @abstractmethod
    def read_bytes(self, url: str) -> bytes: ...

    @abstractmethod
    def write_bytes(
        self, url: str, data: bytes, *, create_only: bool = False, content_type: str | None = None
    ) -> BlobInfo: ...

    @abstractmethod
    def stat(self, url: str) -> BlobInfo:
        """Size, checksum and metadata; ``BlobNotFound`` if absent."""

    @abstractmethod
    def exists(self, url: str) -> bool: ...

    @abstractmethod
    def delete(self, url: str, *, missing_ok: bool = True) -> None: ...

    @abstractmethod
    def list(self, prefix_url: str) -> list[str]:
        """URLs of the objects under a prefix, sorted."""

    @abstractmethod
    def verify_upload(self, src: Path, url: str) -> BlobInfo:
        """Compare the object's size and crc32c with ``src``; ``BlobError`` on mismatch."""

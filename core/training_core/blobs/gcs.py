"""``gs://bucket/path`` through the official google-cloud-storage client.

Every call has a timeout, and transient failures (network errors, 408/429/5xx, a checksum
mismatch on the way) are retried a bounded number of times with exponential backoff and
jitter (tenacity); the client's own retry is switched off so the two never multiply.
Downloads are pinned to the generation seen first, stream into a temp file checked
against the object's crc32c, and stop as soon as they pass ``max_bytes``. Create-only
writes use ``if_generation_match=0``, so two writers can never both win.

Credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` or Application Default Credentials; with
``STORAGE_EMULATOR_HOST`` set (a local GCS-protocol server), anonymous ones.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import google_crc32c
import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from training_core.blobs._files import (
    CountingWriter,
    commit,
    encode_crc32c,
    ensure_free_space,
    file_crc32c,
    temporary_sibling,
)
from training_core.blobs.base import BlobInfo, BlobStore, BlobUrl
from training_core.errors import (
    BlobError,
    BlobExists,
    BlobNotFound,
    BlobTooLarge,
    BlobUnavailable,
    ChecksumMismatch,
    InvalidInput,
)
from training_core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_TYPES = (
    ConnectionError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
    auth_exceptions.TransportError,
    DataCorruption,  # the bytes were damaged on the way: fetch them again
    ChecksumMismatch,
)
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# The client sends objects up to this size in one request, larger ones as a resumable
# upload in chunks of ``chunk_bytes``.
SINGLE_REQUEST_MAX_BYTES = 8 * 2**20


def is_transient(error: BaseException) -> bool:
    """Worth another try: the network, an overloaded server, damaged bytes in transit."""
    if isinstance(error, _TRANSIENT_TYPES):
        return True
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in _TRANSIENT_STATUS
    if isinstance(error, InvalidResponse):  # a resumable transfer's unexpected status
        return getattr(error.response, "status_code", None) in _TRANSIENT_STATUS
    return False


class GcsBlobStore(BlobStore):
    def __init__(
        self,
        client: storage.Client,
        *,
        timeout: float = 60.0,
        download_retries: int = 5,
        upload_retries: int = 3,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        chunk_bytes: int = 16 * 2**20,
        min_free_disk_bytes: int = 0,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._download_attempts = download_retries + 1
        self._upload_attempts = upload_retries + 1
        self._wait = wait_random_exponential(multiplier=initial_delay, max=max_delay)
        self._chunk_bytes = chunk_bytes
        self._min_free = min_free_disk_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> GcsBlobStore:
        return cls(
            make_client(settings),
            timeout=settings.blob_timeout_seconds,
            download_retries=settings.download_retries,
            upload_retries=settings.upload_retries,
            initial_delay=settings.retry_initial_delay_seconds,
            max_delay=settings.retry_max_delay_seconds,
            chunk_bytes=settings.upload_chunk_bytes,
            min_free_disk_bytes=settings.min_free_disk_bytes,
        )

    # -- reading -------------------------------------------------------------------------
    def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> BlobInfo:
        blob, info = self._stat_blob(url, "download")
        if max_bytes is not None and info.size > max_bytes:
            raise BlobTooLarge(
                f"{url} is {info.size} bytes, larger than the limit of {max_bytes} bytes"
            )
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        ensure_free_space(dest.parent, info.size, self._min_free)
        pinned = blob.bucket.blob(
            blob.name, generation=blob.generation
        )  # one version, even across retries
        with temporary_sibling(dest) as (tmp, handle):

            def attempt() -> None:
                handle.seek(0)
                handle.truncate()
                writer = CountingWriter(handle, url=url, max_bytes=max_bytes)
                pinned.download_to_file(writer, **self._raw_download)
                _check_crc(url, info.crc32c, writer.crc32c)

            self._retrying("download", url, self._download_attempts, attempt)
            commit(tmp, handle, dest, create_only=False)
        return info

    @property
    def _raw_download(self) -> dict[str, object]:
        # The stored bytes exactly (no gzip transcoding), so size and crc32c are the object's.
        return {"raw_download": True, "checksum": "crc32c", "timeout": self._timeout, "retry": None}

    def read_bytes(self, url: str) -> bytes:
        blob = self._blob(url)

        def attempt() -> bytes:
            return blob.download_as_bytes(**self._raw_download)

        return self._retrying("read", url, self._download_attempts, attempt)

    def stat(self, url: str) -> BlobInfo:
        return self._stat_blob(url)[1]

    def exists(self, url: str) -> bool:
        blob = self._blob(url)
        return self._retrying(
            "check",
            url,
            self._download_attempts,
            lambda: blob.exists(timeout=self._timeout, retry=None),
        )

    def list(self, prefix_url: str) -> list[str]:
        parsed = _parse(prefix_url, prefix=True)

        def attempt() -> list[str]:
            blobs = self._client.list_blobs(
                parsed.bucket, prefix=parsed.path or None, timeout=self._timeout, retry=None
            )
            return sorted(f"gs://{parsed.bucket}/{blob.name}" for blob in blobs)

        return self._retrying("list", prefix_url, self._download_attempts, attempt)

    def verify_upload(self, src: Path, url: str) -> BlobInfo:
        info = self.stat(url)
        size, crc = Path(src).stat().st_size, file_crc32c(Path(src))
        if (info.size, info.crc32c) != (size, crc):
            raise ChecksumMismatch(
                f"{url} does not match {src}: size {info.size} vs {size}, "
                f"crc32c {info.crc32c} vs {crc}"
            )
        return info

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
        src = Path(src)
        try:
            size, crc = src.stat().st_size, file_crc32c(src)
            with src.open("rb") as source:
                return self._upload(source, size, crc, url, create_only, content_type, metadata)
        except FileNotFoundError:
            raise InvalidInput(f"cannot upload {src}: no such file") from None

    def write_bytes(
        self, url: str, data: bytes, *, create_only: bool = False, content_type: str | None = None
    ) -> BlobInfo:
        crc = encode_crc32c(google_crc32c.Checksum(data))
        return self._upload(io.BytesIO(data), len(data), crc, url, create_only, content_type, None)

    def delete(self, url: str, *, missing_ok: bool = True) -> None:
        blob = self._blob(url)
        try:
            self._retrying(
                "delete",
                url,
                self._upload_attempts,
                lambda: blob.delete(timeout=self._timeout, retry=None),
            )
        except BlobNotFound:
            if not missing_ok:
                raise

    def _upload(
        self,
        source: BinaryIO,
        size: int,
        crc: str,
        url: str,
        create_only: bool,
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> BlobInfo:
        resumable = size > SINGLE_REQUEST_MAX_BYTES
        if create_only and resumable and self.exists(url):
            raise BlobExists(url)  # fail before sending gigabytes; the precondition still decides
        attempts = 0

        def attempt() -> BlobInfo:
            nonlocal attempts
            attempts += 1
            source.seek(0)
            blob = self._blob(url)
            blob.chunk_size = self._chunk_bytes
            if metadata:
                blob.metadata = metadata
            try:
                blob.upload_from_file(
                    source,
                    size=size,
                    content_type=content_type,
                    if_generation_match=0 if create_only else None,
                    checksum="crc32c",
                    timeout=self._timeout,
                    retry=None,
                )
            except api_exceptions.PreconditionFailed:
                if attempts > 1 and self._holds(url, size, crc):
                    return self.stat(url)  # an earlier attempt landed but its answer was lost
                raise
            except DataCorruption:
                self._discard_damaged(url, crc)
                raise
            if blob.crc32c != crc:
                self._discard_damaged(url, crc)
                raise ChecksumMismatch(
                    f"{url}: the stored object's crc32c {blob.crc32c} is not {crc}"
                )
            return _info(url, blob)

        return self._retrying("upload", url, self._upload_attempts, attempt)

    def _discard_damaged(self, url: str, crc: str) -> None:
        """Delete an object whose bytes arrived damaged, so a create-only retry can write it
        again; only that exact generation, never a good object written meanwhile."""
        try:
            blob = self._client.bucket(_parse(url).bucket).get_blob(
                _parse(url).path, timeout=self._timeout, retry=None
            )
            if blob is not None and blob.crc32c != crc:
                blob.delete(if_generation_match=blob.generation, timeout=self._timeout, retry=None)
        except Exception as error:  # noqa: BLE001 - best effort; the retry reports what matters
            log.warning("could not remove the damaged upload %s: %s", url, _describe(error))

    def _holds(self, url: str, size: int, crc: str) -> bool:
        try:
            info = self.stat(url)
        except BlobNotFound:
            return False
        return (info.size, info.crc32c) == (size, crc)

    # -- plumbing ------------------------------------------------------------------------
    def _blob(self, url: str) -> storage.Blob:
        parsed = _parse(url)
        return self._client.bucket(parsed.bucket).blob(parsed.path)

    def _stat_blob(self, url: str, action: str = "stat") -> tuple[storage.Blob, BlobInfo]:
        parsed = _parse(url)
        bucket = self._client.bucket(parsed.bucket)
        blob = self._retrying(
            action,
            url,
            self._download_attempts,
            lambda: bucket.get_blob(parsed.path, timeout=self._timeout, retry=None),
        )
        if blob is None:
            raise BlobNotFound(url)
        return blob, _info(url, blob)

    def _retrying(self, action: str, url: str, attempts: int, call: Callable[[], T]) -> T:
        """Run ``call`` with bounded, jittered retries; translate what finally escapes."""
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=self._wait,
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "%s %s failed (attempt %d of %d): %s; retrying",
                action,
                url,
                state.attempt_number,
                attempts,
                _describe(state.outcome.exception()),
            ),
        )
        try:
            return retrying(call)
        except ChecksumMismatch as error:
            if attempts == 1:
                raise
            raise ChecksumMismatch(f"{error} (after {attempts} attempts)") from error
        except (BlobError, InvalidInput):
            raise
        except Exception as error:
            raise _translate(action, url, error, attempts) from error


def _translate(action: str, url: str, error: Exception, attempts: int) -> BlobError:
    if isinstance(error, api_exceptions.NotFound):
        return BlobNotFound(url)
    if isinstance(error, api_exceptions.PreconditionFailed):
        return BlobExists(url)
    if isinstance(error, (api_exceptions.Forbidden, api_exceptions.Unauthorized)):
        return BlobError(
            f"{action} {url}: access denied ({_describe(error)}); check the credentials"
        )
    tries = f" after {attempts} attempts" if is_transient(error) and attempts > 1 else ""
    if isinstance(error, DataCorruption):
        return ChecksumMismatch(f"{action} {url} failed{tries}: {_describe(error)}")
    if is_transient(error):
        return BlobUnavailable(f"{action} {url} failed{tries}: {_describe(error)}")
    return BlobError(f"{action} {url} failed{tries}: {_describe(error)}")


def _describe(error: BaseException | None) -> str:
    """A short reason, without the request URLs and headers some client errors carry."""
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return f"{error.code} {error.message}"
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return f"storage unreachable ({type(error).__name__})"
    if isinstance(error, (DataCorruption, ChecksumMismatch)):
        return "checksum mismatch, the data was damaged in transit"
    return f"{type(error).__name__}: {str(error)[:200]}"


def _check_crc(url: str, expected: str | None, actual: str | None) -> None:
    if expected and actual and expected != actual:
        raise ChecksumMismatch(f"{url}: checksum mismatch (crc32c {actual}, expected {expected})")


def _info(url: str, blob: storage.Blob) -> BlobInfo:
    return BlobInfo(
        url=url, size=blob.size or 0, crc32c=blob.crc32c, metadata=dict(blob.metadata or {})
    )


def _parse(url: str, *, prefix: bool = False) -> BlobUrl:
    from training_core.blobs import parse_url

    parsed = parse_url(url, prefix=prefix)
    if parsed.scheme != "gs":
        raise InvalidInput(f"{url!r} is not a gs:// URL")
    return parsed


def make_client(settings: Settings) -> storage.Client:
    """The storage client: anonymous against an emulator, else the configured credentials."""
    try:
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return storage.Client(project="local-emulator", credentials=AnonymousCredentials())
        if settings.google_application_credentials is not None:
            return storage.Client.from_service_account_json(
                str(settings.google_application_credentials)
            )
        return storage.Client()
    except (auth_exceptions.DefaultCredentialsError, OSError, ValueError) as error:
        raise BlobError(
            "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS or run with "
            f"Application Default Credentials ({type(error).__name__})"
        ) from None

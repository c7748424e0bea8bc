"""The gs:// adapter against a real fake-gcs-server: large transfers, outages, damaged bytes."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
from training_core.blobs import BlobStore, open_blob_store
from training_core.blobs._files import file_crc32c
from training_core.errors import BlobError, BlobExists, BlobNotFound, ChecksumMismatch
from training_core.settings import load_settings

from tests.fixtures.gcs import FakeGcsServer
from tests.integration.blobs.faulty_proxy import faulty_proxy

FAST_RETRIES = {
    "retry_initial_delay_seconds": 0.05,
    "retry_max_delay_seconds": 0.2,
    "blob_timeout_seconds": 5,
}


def gcs_store(**settings: object) -> BlobStore:
    return open_blob_store(load_settings(min_free_disk_bytes=0, **{**FAST_RETRIES, **settings}))


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "dataset.zip"
    with path.open("wb") as out:
        for _ in range(50):
            out.write(os.urandom(2**20))
    return path


def test_50_mb_round_trip_is_resumable_and_verified(
    gcs_bucket_url: str, big_file: Path, tmp_path: Path
) -> None:
    store = gcs_store(upload_chunk_bytes=8 * 2**20)  # seven chunks
    url = f"{gcs_bucket_url}/raw/dataset.zip"

    uploaded = store.upload(big_file, url, content_type="application/zip")
    downloaded = store.download(url, tmp_path / "out" / "dataset.zip")

    expected = file_crc32c(big_file)
    assert uploaded.size == downloaded.size == 50 * 2**20
    assert (
        uploaded.crc32c
        == downloaded.crc32c
        == expected
        == file_crc32c(tmp_path / "out" / "dataset.zip")
    )
    assert store.verify_upload(big_file, url).crc32c == expected
    assert os.listdir(tmp_path / "out") == ["dataset.zip"]


def test_create_only_refuses_a_large_resumable_upload_too(
    gcs_bucket_url: str, tmp_path: Path
) -> None:
    store = gcs_store(upload_chunk_bytes=2**20)
    first, second = tmp_path / "first.pth", tmp_path / "second.pth"
    first.write_bytes(os.urandom(9 * 2**20))  # above 8 MiB: a resumable upload
    second.write_bytes(os.urandom(9 * 2**20))
    url = f"{gcs_bucket_url}/models/model.pth"
    store.upload(first, url)
    with pytest.raises(BlobExists, match="already exists"):
        store.upload(second, url)
    assert store.verify_upload(first, url).size == 9 * 2**20


def test_missing_bucket_is_not_found(gcs_bucket_url: str, tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound, match="gs://no-such-bucket-here/raw/x.zip not found"):
        gcs_store().download("gs://no-such-bucket-here/raw/x.zip", tmp_path / "x.zip")


def test_stopped_server_gives_bounded_retries_then_a_clear_error(
    restartable_gcs: FakeGcsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    restartable_gcs.create_bucket("outage-test")
    store = gcs_store(download_retries=3, upload_retries=2)
    store.write_bytes("gs://outage-test/raw/data.zip", b"dataset")
    restartable_gcs.stop()
    caplog.set_level(logging.WARNING, logger="training_core.blobs.gcs")

    started = time.monotonic()
    with pytest.raises(
        BlobError,
        match=r"download gs://outage-test/raw/data.zip failed after 4 attempts: storage unreach",
    ):
        store.download("gs://outage-test/raw/data.zip", tmp_path / "data.zip")
    elapsed = time.monotonic() - started

    assert len(retry_warnings(caplog)) == 3
    assert elapsed < 3 * 0.2 + 5  # three waits of at most 0.2 s, connection refusals are instant
    assert not (tmp_path / "data.zip").exists() and os.listdir(tmp_path) == []

    caplog.clear()
    with pytest.raises(
        BlobError, match="upload gs://outage-test/models/m.pth failed after 3 attempts"
    ):
        store.write_bytes("gs://outage-test/models/m.pth", b"weights")
    assert len(retry_warnings(caplog)) == 2


def test_server_restarted_during_retries_then_the_download_succeeds(
    restartable_gcs: FakeGcsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    restartable_gcs.create_bucket("restart-test")
    store = gcs_store(
        download_retries=10, retry_initial_delay_seconds=0.2, retry_max_delay_seconds=0.5
    )
    store.write_bytes("gs://restart-test/raw/data.zip", b"the dataset")
    restartable_gcs.stop()
    caplog.set_level(logging.WARNING, logger="training_core.blobs.gcs")
    restart = threading.Timer(0.6, restartable_gcs.start)
    restart.start()
    try:
        info = store.download("gs://restart-test/raw/data.zip", tmp_path / "data.zip")
    finally:
        restart.join()

    assert (tmp_path / "data.zip").read_bytes() == b"the dataset" and info.size == 11
    assert 1 <= len(retry_warnings(caplog)) < 10


@pytest.mark.parametrize("fault", ["flip-byte", "cut"])
def test_a_damaged_download_is_retried_and_then_succeeds(
    gcs_server: FakeGcsServer,
    gcs_bucket_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    url = f"{gcs_bucket_url}/raw/dataset.zip"
    data = os.urandom(300_000)
    gcs_store().write_bytes(url, data)

    with faulty_proxy(gcs_server.url, fault, times=1) as (proxy_url, proxy):  # type: ignore[arg-type]
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy_url)
        gcs_store().download(url, tmp_path / "dataset.zip")

    assert (tmp_path / "dataset.zip").read_bytes() == data
    assert proxy.media_requests == 2


def test_a_download_damaged_every_time_is_refused_and_leaves_nothing(
    gcs_server: FakeGcsServer, gcs_bucket_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{gcs_bucket_url}/raw/dataset.zip"
    gcs_store().write_bytes(url, os.urandom(300_000))

    with faulty_proxy(gcs_server.url, "flip-byte", times=100) as (proxy_url, proxy):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy_url)
        with pytest.raises(
            ChecksumMismatch, match=r"download .* failed after 3 attempts: checksum mismatch"
        ):
            gcs_store(download_retries=2).download(url, tmp_path / "dl" / "dataset.zip")

    assert proxy.media_requests == 3
    assert os.listdir(tmp_path / "dl") == []


def test_without_credentials_gs_urls_fail_clearly_and_file_urls_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    store = open_blob_store(
        load_settings(google_application_credentials=tmp_path / "missing-key.json")
    )
    store.write_bytes(f"file://{tmp_path}/bucket/a.txt", b"local works")
    assert store.read_bytes(f"file://{tmp_path}/bucket/a.txt") == b"local works"
    with pytest.raises(
        BlobError, match="no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS"
    ):
        store.exists("gs://some-bucket/a.txt")


def test_a_damaged_upload_is_removed_and_sent_again_even_when_create_only(
    gcs_server: FakeGcsServer,
    gcs_bucket_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = tmp_path / "model.pth"
    src.write_bytes(os.urandom(9 * 2**20))  # resumable, in nine chunks
    url = f"{gcs_bucket_url}/models/model.pth"
    caplog.set_level(logging.WARNING, logger="training_core.blobs.gcs")

    with faulty_proxy(gcs_server.url, "flip-upload", times=1) as (proxy_url, proxy):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy_url)
        info = gcs_store(upload_chunk_bytes=2**20).upload(src, url)

    assert proxy.faults_left == 0 and len(retry_warnings(caplog)) == 1
    assert "checksum mismatch" in retry_warnings(caplog)[0]
    assert proxy.methods.count("DELETE") == 1  # the damaged object, before sending it again
    assert info.crc32c == file_crc32c(src)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    assert gcs_store().verify_upload(src, url).size == 9 * 2**20

"""The same behaviour from both adapters, through the store the agent opens from its settings:
``file://`` on a real folder and ``gs://`` on a real fake-gcs-server."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from training_core.blobs import BlobStore, open_blob_store
from training_core.blobs._files import file_crc32c
from training_core.errors import (
    BlobExists,
    BlobNotFound,
    BlobTooLarge,
    ChecksumMismatch,
    InvalidInput,
)
from training_core.settings import load_settings


@pytest.fixture(params=["file", "gs"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty bucket URL for each test, for each adapter."""
    if request.param == "file":
        (tmp_path / "bucket").mkdir()
        return f"file://{tmp_path}/bucket"
    return request.getfixturevalue("gcs_bucket_url")


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return open_blob_store(load_settings(min_free_disk_bytes=0))


def payload(tmp_path: Path, size: int, name: str = "payload.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def leftovers(folder: Path) -> list[str]:
    """Temp files a transfer left behind (none, ever)."""
    return sorted(p.name for p in folder.rglob("*.part")) if folder.exists() else []


def test_round_trip_keeps_bytes_checksum_and_metadata(
    store: BlobStore, bucket: str, tmp_path: Path
) -> None:
    src = payload(tmp_path, 3 * 2**20 + 17)
    url = f"{bucket}/models/run-1/model.pth"

    uploaded = store.upload(
        src, url, content_type="application/octet-stream", metadata={"accuracy": "0.93"}
    )
    dest = tmp_path / "out" / "model.pth"
    downloaded = store.download(url, dest)

    assert dest.read_bytes() == src.read_bytes()
    assert uploaded.size == downloaded.size == src.stat().st_size
    assert uploaded.crc32c == downloaded.crc32c == file_crc32c(src)
    assert store.stat(url).metadata == {"accuracy": "0.93"}
    assert store.verify_upload(src, url).crc32c == file_crc32c(src)
    assert leftovers(dest.parent) == []


def test_bytes_round_trip(store: BlobStore, bucket: str) -> None:
    info = store.write_bytes(f"{bucket}/runs/1/progress.json", b'{"epoch": 3}')
    assert info.size == 12
    assert store.read_bytes(f"{bucket}/runs/1/progress.json") == b'{"epoch": 3}'
    store.write_bytes(
        f"{bucket}/runs/1/progress.json", b'{"epoch": 4}'
    )  # overwrite allowed by default
    assert store.read_bytes(f"{bucket}/runs/1/progress.json") == b'{"epoch": 4}'


def test_create_only_refuses_to_overwrite(store: BlobStore, bucket: str, tmp_path: Path) -> None:
    url = f"{bucket}/models/model.pth"
    store.upload(payload(tmp_path, 1000, "first"), url)
    with pytest.raises(BlobExists, match="already exists"):
        store.upload(payload(tmp_path, 1000, "second"), url)
    with pytest.raises(BlobExists):
        store.write_bytes(url, b"other", create_only=True)
    assert store.read_bytes(url) == (tmp_path / "first").read_bytes()


def test_overwrite_when_asked(store: BlobStore, bucket: str, tmp_path: Path) -> None:
    url = f"{bucket}/checkpoints/last.pt"
    store.upload(payload(tmp_path, 100, "a"), url, create_only=False)
    store.upload(payload(tmp_path, 200, "b"), url, create_only=False)
    assert store.read_bytes(url) == (tmp_path / "b").read_bytes()
    assert store.stat(url).size == 200


def test_missing_object_is_not_found(store: BlobStore, bucket: str, tmp_path: Path) -> None:
    url = f"{bucket}/raw/nothing.zip"
    for call in (
        lambda: store.download(url, tmp_path / "x"),
        lambda: store.read_bytes(url),
        lambda: store.stat(url),
        lambda: store.delete(url, missing_ok=False),
    ):
        with pytest.raises(BlobNotFound, match="not found"):
            call()
    assert not store.exists(url)
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_download_over_max_bytes_is_refused_and_leaves_nothing(
    store: BlobStore, bucket: str, tmp_path: Path
) -> None:
    url = f"{bucket}/raw/dataset.zip"
    store.upload(payload(tmp_path, 5000), url)
    dest = tmp_path / "dl" / "dataset.zip"
    with pytest.raises(BlobTooLarge, match="larger than the limit of 4999 bytes") as caught:
        store.download(url, dest, max_bytes=4999)
    assert isinstance(caught.value, InvalidInput)  # not worth retrying
    assert not dest.exists() and leftovers(dest.parent) == []
    assert store.download(url, dest, max_bytes=5000).size == 5000


def test_list_by_prefix_and_delete(store: BlobStore, bucket: str) -> None:
    for name in ("raw/a.zip", "raw/b.zip", "raw-old/c.zip", "models/m.pth"):
        store.write_bytes(f"{bucket}/{name}", name.encode())

    assert store.list(f"{bucket}/raw/") == [f"{bucket}/raw/a.zip", f"{bucket}/raw/b.zip"]
    assert store.list(f"{bucket}/raw") == [
        f"{bucket}/raw-old/c.zip",
        f"{bucket}/raw/a.zip",
        f"{bucket}/raw/b.zip",
    ]
    assert len(store.list(bucket)) == 4
    assert store.list(f"{bucket}/nothing/") == []

    store.delete(f"{bucket}/raw/a.zip")
    store.delete(f"{bucket}/raw/a.zip")  # already gone: fine by default
    assert not store.exists(f"{bucket}/raw/a.zip") and store.exists(f"{bucket}/raw/b.zip")
    assert store.list(f"{bucket}/raw/") == [f"{bucket}/raw/b.zip"]


def test_verify_upload_detects_a_different_object(
    store: BlobStore, bucket: str, tmp_path: Path
) -> None:
    url = f"{bucket}/models/m.pth"
    store.upload(payload(tmp_path, 4096, "model"), url)
    with pytest.raises(ChecksumMismatch, match="does not match"):
        store.verify_upload(payload(tmp_path, 4096, "other"), url)
    with pytest.raises(BlobNotFound):
        store.verify_upload(tmp_path / "model", f"{bucket}/models/absent.pth")


def test_upload_of_a_missing_file_is_invalid_input(
    store: BlobStore, bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        store.upload(tmp_path / "absent.pth", f"{bucket}/models/m.pth")
    assert not store.exists(f"{bucket}/models/m.pth")


def test_bad_urls_are_refused_before_any_io(store: BlobStore, bucket: str) -> None:
    for url in (f"{bucket}/../escape", "s3://bucket/key", f"{bucket}/a//b"):
        with pytest.raises(InvalidInput):
            store.write_bytes(url, b"x")


def test_concurrent_create_only_writers_have_exactly_one_winner(
    store: BlobStore, bucket: str
) -> None:
    url = f"{bucket}/models/race.pth"
    outcomes: list[str] = []

    def write(i: int) -> None:
        try:
            store.write_bytes(url, f"writer {i}".encode(), create_only=True)
            outcomes.append(f"won {i}")
        except BlobExists:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("lost") == 7
    assert store.read_bytes(url) == f"writer {winners[0].split()[1]}".encode()

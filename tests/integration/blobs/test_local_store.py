"""What only the ``file://`` adapter has to get right: files on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_core.blobs import open_blob_store
from training_core.blobs._files import CountingWriter
from training_core.errors import (
    BlobError,
    BlobTooLarge,
    ChecksumMismatch,
    InsufficientDiskSpace,
    InvalidInput,
)
from training_core.settings import load_settings


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    (tmp_path / "bucket").mkdir()
    return tmp_path / "bucket"


def test_bookkeeping_files_stay_out_of_listings(bucket: Path) -> None:
    store = open_blob_store(load_settings())
    store.write_bytes(
        f"file://{bucket}/models/m.pth", b"weights", content_type="application/octet-stream"
    )
    assert store.list(f"file://{bucket}/") == [f"file://{bucket}/models/m.pth"]
    assert sorted(
        p.name for p in (bucket / "models").iterdir() if not p.name.startswith(".blob-meta-")
    ) == ["m.pth"]
    with pytest.raises(InvalidInput, match="reserved"):
        store.write_bytes(f"file://{bucket}/models/.blob-meta-m.pth.json", b"{}")


def test_a_corrupted_object_is_refused_on_download(bucket: Path, tmp_path: Path) -> None:
    store = open_blob_store(load_settings())
    url = f"file://{bucket}/raw/dataset.zip"
    store.write_bytes(url, b"A" * 1000)
    (bucket / "raw" / "dataset.zip").write_bytes(b"A" * 999 + b"B")  # bit rot, same size

    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        store.download(url, tmp_path / "dataset.zip")
    assert list(tmp_path.glob("*dataset.zip*")) == []


def test_a_file_put_there_by_hand_is_served(bucket: Path, tmp_path: Path) -> None:
    (bucket / "raw").mkdir()
    (bucket / "raw" / "dataset.zip").write_bytes(b"zip bytes")
    store = open_blob_store(load_settings())
    info = store.download(f"file://{bucket}/raw/dataset.zip", tmp_path / "d.zip")
    assert (tmp_path / "d.zip").read_bytes() == b"zip bytes" and info.size == 9
    assert store.stat(f"file://{bucket}/raw/dataset.zip").crc32c == info.crc32c


def test_free_disk_space_is_checked_before_download(bucket: Path, tmp_path: Path) -> None:
    store = open_blob_store(load_settings(min_free_disk_bytes=2**60))
    url = f"file://{bucket}/raw/dataset.zip"
    store.write_bytes(url, b"x" * 100)
    with pytest.raises(InsufficientDiskSpace, match="not enough free disk space"):
        store.download(url, tmp_path / "dl" / "dataset.zip")
    assert not (tmp_path / "dl" / "dataset.zip").exists()


def test_a_name_taken_by_a_folder_or_file_is_a_clear_error(bucket: Path) -> None:
    store = open_blob_store(load_settings())
    store.write_bytes(f"file://{bucket}/models/m.pth", b"weights")
    with pytest.raises(BlobError, match="a file and a folder would have one name"):
        store.write_bytes(f"file://{bucket}/models", b"x")
    with pytest.raises(BlobError, match="a file and a folder would have one name"):
        store.write_bytes(f"file://{bucket}/models/m.pth/inner", b"x")
    assert store.list(f"file://{bucket}/") == [f"file://{bucket}/models/m.pth"]


def test_a_stream_longer_than_max_bytes_is_cut_off(tmp_path: Path) -> None:
    """The guard behind every download, for bytes that outgrow the size announced first."""
    target = tmp_path / "out"
    with target.open("wb") as handle:
        writer = CountingWriter(handle, url="gs://b/raw/x.zip", max_bytes=10)
        writer.write(b"12345")
        with pytest.raises(BlobTooLarge, match="larger than the limit of 10 bytes"):
            writer.write(b"678901")
    assert target.read_bytes() == b"12345"  # the caller's temp file, removed by the caller

"""Safe extraction: real zip and tar archives, hostile ones built here, read as a user's upload."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name")

from training_core.archive import (
    ArchiveLimits,
    ArchiveTooLarge,
    UnsafeMember,
    UnsupportedArchive,
    extract_archive,
)
from training_core.errors import InsufficientDiskSpace, InvalidInput
from training_core.settings import load_settings

LIMITS = ArchiveLimits(
    max_entries=50, max_total_bytes=4 << 20, max_entry_bytes=2 << 20, max_ratio=50.0
)
ROOMY = ArchiveLimits(
    max_entries=50, max_total_bytes=64 << 20, max_entry_bytes=64 << 20, max_ratio=50.0
)


def make_zip(
    path: Path, entries: list[tuple[str, bytes] | zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]]
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                archive.writestr(entry, b"")
            else:
                archive.writestr(*entry)
    return path


def zip_info(name: str, file_type: int, mode: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the type bits below are meaningful
    info.external_attr = (file_type | mode) << 16
    return info


def make_tar(
    path: Path, entries: list[tuple[str, bytes] | tarfile.TarInfo], mode: str = "w:gz"
) -> Path:
    with tarfile.open(path, mode) as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def tar_info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A folder holding the archives, a scratch folder, and a sentinel neighbour whose
    content must never change."""
    (tmp_path / "neighbour").mkdir()
    (tmp_path / "neighbour" / "keep.txt").write_text("untouched")
    (tmp_path / "scratch").mkdir()
    return tmp_path


def outside_scratch(area: Path) -> dict[str, bytes]:
    return {
        name: data
        for name, data in tree(area).items()
        if not name.startswith(("scratch/", "archives/"))
    }


# -- accepted archives ---------------------------------------------------------------------
def test_zip_with_wrapper_and_junk_is_extracted_without_the_junk(area: Path) -> None:
    archive = make_zip(
        area / "dataset.zip",
        [
            ("flowers/train/rose/1.png", b"rose-1"),
            ("flowers/train/tulip/1.png", b"tulip-1"),
            ("flowers/val/rose/2.png", b"rose-2"),
            ("__MACOSX/flowers/train/._1.png", b"resource fork"),
            ("flowers/.DS_Store", b"finder"),
            ("flowers/train/rose/.hidden.png", b"hidden"),
            ("flowers/Thumbs.db", b"thumbs"),
        ],
    )
    dest = area / "scratch" / "out"
    report = extract_archive(archive, dest, LIMITS)

    assert tree(dest) == {
        "flowers/train/rose/1.png": b"rose-1",
        "flowers/train/tulip/1.png": b"tulip-1",
        "flowers/val/rose/2.png": b"rose-2",
    }
    assert (report.format, report.files, report.bytes_written) == ("zip", 3, 19)
    assert sorted(report.skipped) == [
        "__MACOSX/flowers/train/._1.png",
        "flowers/.DS_Store",
        "flowers/Thumbs.db",
        "flowers/train/rose/.hidden.png",
    ]


@pytest.mark.parametrize("mode", ["w:gz", "w", "w:bz2", "w:xz"])
def test_tar_archives_are_detected_by_content_not_name(area: Path, mode: str) -> None:
    archive = make_tar(
        area / "upload.bin",
        [
            tar_info("./", tarfile.DIRTYPE),
            tar_info("./train", tarfile.DIRTYPE),
            ("./train/cat/a.jpg", b"cat"),
            ("./val/dog/b.jpg", b"dog"),
        ],
        mode,
    )
    report = extract_archive(archive, area / "scratch" / "out", LIMITS)
    assert tree(area / "scratch" / "out") == {"train/cat/a.jpg": b"cat", "val/dog/b.jpg": b"dog"}
    assert (report.format, report.files) == ("tar", 2)


def test_extracted_files_are_plain_and_not_executable(area: Path) -> None:
    info = zip_info("run.sh", stat.S_IFREG, 0o4777)  # setuid + world-writable in the archive
    archive = make_zip(area / "a.zip", [(info, b"#!/bin/sh\n")])
    extract_archive(archive, area / "scratch" / "out", LIMITS)
    mode = (area / "scratch" / "out" / "run.sh").stat().st_mode
    assert stat.S_IMODE(mode) & 0o7133 == 0


def test_limits_come_from_settings() -> None:
    settings = load_settings(
        max_archive_entries=7,
        max_uncompressed_bytes=1000,
        max_entry_bytes=100,
        max_compression_ratio=9.5,
        min_free_disk_bytes=3,
    )
    assert ArchiveLimits.from_settings(settings) == ArchiveLimits(7, 1000, 100, 9.5, 3)


# -- refused archives: nothing kept, nothing written outside ------------------------------
# Over the limits, as either kind of archive (a zip declares its sizes, a tar does not).
def _over_the_limits(too_many_bytes: str) -> dict[str, tuple[list[Any], type[Exception], str]]:
    return {
        "too many files": (
            [(f"f{i}.png", b"x") for i in range(51)],
            ArchiveTooLarge,
            "more than (the limit of )?50",
        ),
        "oversized entry": ([("big.png", os.urandom((2 << 20) + 1))], ArchiveTooLarge, "limit per file"),
        "too many bytes": (
            [(f"f{i}.png", os.urandom(1 << 20)) for i in range(5)], ArchiveTooLarge, too_many_bytes,
        ),
    }


HOSTILE_ZIPS = {
    "zip-slip": ([("train/ok.png", b"ok"), ("../evil.txt", b"pwned")], UnsafeMember, "'..'"),
    "deep zip-slip": ([("train/../../../evil.txt", b"pwned")], UnsafeMember, "'..'"),
    "backslash zip-slip": ([("..\\evil.txt", b"pwned")], UnsafeMember, "'..'"),
    "absolute path": ([("/tmp/evil.txt", b"pwned")], UnsafeMember, "absolute path"),
    "drive letter": ([("C:\\evil.txt", b"pwned")], UnsafeMember, "absolute path"),
    "symlink": ([zip_info("train/link", stat.S_IFLNK, 0o777)], UnsafeMember, "symlink"),
    "device": ([zip_info("dev/sda", stat.S_IFBLK)], UnsafeMember, "special files"),
    "fifo": ([zip_info("pipe", stat.S_IFIFO)], UnsafeMember, "special files"),
    "duplicate": ([("a.png", b"1"), ("a.png", b"2")], UnsafeMember, "appears twice"),
    "file and folder": ([("a", b"1"), ("a/b.png", b"2")], UnsafeMember, "both a file and a folder"),
    **_over_the_limits("declares"),
}


HOSTILE_TARS = {
    "zip-slip": ([("train/ok.png", b"ok"), ("../evil.txt", b"pwned")], UnsafeMember, "'..'"),
    "absolute path": ([("/tmp/evil.txt", b"pwned")], UnsafeMember, "absolute path"),
    "symlink": ([tar_info("train/link", tarfile.SYMTYPE, "/etc/passwd")], UnsafeMember, "symlink"),
    "symlink then write through it": (
        [tar_info("train", tarfile.SYMTYPE, "../neighbour"), ("train/keep.txt", b"pwned")],
        UnsafeMember,
        "symlink",
    ),
    "hard link": (
        [("a.png", b"1"), tar_info("b.png", tarfile.LNKTYPE, "a.png")],
        UnsafeMember,
        "hardlink",
    ),
    "hard link outside": (
        [tar_info("passwd", tarfile.LNKTYPE, "/etc/passwd")],
        UnsafeMember,
        "hardlink",
    ),
    "char device": ([tar_info("null", tarfile.CHRTYPE)], UnsafeMember, "special files"),
    "fifo": ([tar_info("pipe", tarfile.FIFOTYPE)], UnsafeMember, "special files"),
    **_over_the_limits("more than 4194304 bytes"),
}


HOSTILE = [
    pytest.param(make_zip, "x.zip", *case, id=f"zip: {name}") for name, case in HOSTILE_ZIPS.items()
] + [
    pytest.param(make_tar, "x.tar.gz", *case, id=f"tar: {name}") for name, case in HOSTILE_TARS.items()
]


@pytest.mark.parametrize(("make", "filename", "entries", "error", "message"), HOSTILE)
def test_hostile_archive_is_refused(
    area: Path, make: Any, filename: str, entries: list[Any], error: type[Exception], message: str
) -> None:
    (area / "archives").mkdir()
    archive = make(area / "archives" / filename, entries)
    before = outside_scratch(area)

    with pytest.raises(error, match=message):
        extract_archive(archive, area / "scratch" / "out", LIMITS)

    assert not (area / "scratch" / "out").exists()
    assert outside_scratch(area) == before
    assert not (area / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert (area / "neighbour" / "keep.txt").read_text() == "untouched"


def test_zip_bomb_is_refused_before_anything_is_written(area: Path) -> None:
    archive = make_zip(area / "bomb.zip", [("ok.png", b"fine"), ("zeros.png", bytes(20 << 20))])
    assert archive.stat().st_size < 100_000
    with pytest.raises(ArchiveTooLarge, match="compression bomb"):
        extract_archive(archive, area / "scratch" / "out", ROOMY)
    assert not (area / "scratch" / "out").exists()


def test_tar_gz_bomb_is_stopped_while_streaming(area: Path) -> None:
    archive = make_tar(area / "bomb.tgz", [("zeros.png", bytes(40 << 20))])
    with pytest.raises(ArchiveTooLarge, match="compression bomb"):
        extract_archive(archive, area / "scratch" / "out", ROOMY)
    assert not (area / "scratch" / "out").exists()


def test_a_refusal_empties_an_existing_scratch_folder_but_keeps_it(area: Path) -> None:
    dest = area / "scratch" / "out"
    dest.mkdir()
    archive = make_zip(
        area / "x.zip", [("train/a.png", b"a"), ("train/b.png", b"b"), ("../c", b"c")]
    )
    with pytest.raises(UnsafeMember):
        extract_archive(archive, dest, LIMITS)
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_streaming_tar_refusal_removes_what_was_already_written(area: Path) -> None:
    archive = make_tar(
        area / "x.tgz", [("train/a.png", b"a"), ("train/b.png", b"b"), ("../c", b"c")]
    )
    with pytest.raises(UnsafeMember):
        extract_archive(archive, area / "scratch" / "out", LIMITS)
    assert not (area / "scratch" / "out").exists()


@pytest.mark.parametrize(
    "content",
    [b"just some text, not an archive", b"", b"PK\x03\x04" + b"\x00" * 40],
    ids=["text", "empty", "truncated zip"],
)
def test_not_an_archive_is_refused_clearly(area: Path, content: bytes) -> None:
    path = area / "dataset.zip"
    path.write_bytes(content)
    with pytest.raises(UnsupportedArchive, match="dataset.zip"):
        extract_archive(path, area / "scratch" / "out", LIMITS)
    assert not (area / "scratch" / "out").exists()


def test_damaged_tar_gz_is_refused_and_cleaned_up(area: Path) -> None:
    good = make_tar(area / "good.tgz", [("train/a.png", os.urandom(200_000))])
    damaged = area / "damaged.tgz"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnsupportedArchive, match="damaged"):
        extract_archive(damaged, area / "scratch" / "out", LIMITS)
    assert not (area / "scratch" / "out").exists()


def test_encrypted_zip_is_refused(area: Path) -> None:
    archive = make_zip(area / "x.zip", [("secret.png", b"x")])
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[6] |= 0x1  # "encrypted" flag, in the local header and in the central directory
    data[central + 8] |= 0x1
    archive.write_bytes(bytes(data))
    with pytest.raises(UnsupportedArchive, match="encrypted"):
        extract_archive(archive, area / "scratch" / "out", LIMITS)


def test_extraction_needs_an_empty_folder(area: Path) -> None:
    dest = area / "scratch" / "out"
    dest.mkdir()
    (dest / "earlier.txt").write_text("keep")
    archive = make_zip(area / "x.zip", [("a.png", b"a")])
    with pytest.raises(InvalidInput, match="not empty"):
        extract_archive(archive, dest, LIMITS)
    assert tree(dest) == {"earlier.txt": b"keep"}


def test_not_enough_disk_space_is_refused_before_writing(area: Path) -> None:
    archive = make_zip(area / "x.zip", [("a.png", b"a")])
    greedy = ArchiveLimits(50, 4 << 20, 2 << 20, 50.0, min_free_disk_bytes=1 << 60)
    with pytest.raises(InsufficientDiskSpace, match="free disk space"):
        extract_archive(archive, area / "scratch" / "out", greedy)
    assert not (area / "scratch" / "out").exists()

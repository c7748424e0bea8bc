"""Safe extraction of a dataset archive (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, detected
by content) into a scratch folder.

An archive comes from a user, so it is read as hostile: every entry is checked before a
byte is written (path, type, declared size), bytes are counted as they are written (a
header can lie), and on any refusal everything extracted so far is removed. Nothing is
ever written outside ``dest``: no links are created, names are joined only after they
are checked, and files are opened with ``O_EXCL | O_NOFOLLOW``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from training_core.blobs._files import ensure_free_space, read_chunks
from training_core.errors import InvalidInput
from training_core.settings import Settings

ArchiveFormat = Literal["zip", "tar"]
MemberKind = Literal["file", "dir", "symlink", "hardlink", "device", "other"]

# Compression ratios are only judged past this many bytes: tiny, very compressible files
# (a text file of spaces) are harmless, and the total-size limit still bounds them.
RATIO_GRACE_BYTES = 1 << 20
JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


class UnsafeArchive(InvalidInput):
    """The archive cannot be extracted safely; nothing of it was kept."""


class UnsupportedArchive(UnsafeArchive):
    """Not a zip or tar archive, or a damaged one."""


class UnsafeMember(UnsafeArchive):
    """An entry would escape the folder (absolute path, ``..``) or is a link or device."""


class ArchiveTooLarge(UnsafeArchive):
    """Too many entries, too many bytes, one entry too big, or a compression bomb."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_entry_bytes: int
    max_ratio: float
    min_free_disk_bytes: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_entries=settings.max_archive_entries,
            max_total_bytes=settings.max_uncompressed_bytes,
            max_entry_bytes=settings.max_entry_bytes,
            max_ratio=settings.max_compression_ratio,
            min_free_disk_bytes=settings.min_free_disk_bytes,
        )


@dataclass(frozen=True, slots=True)
class ExtractReport:
    dest: Path
    format: ArchiveFormat
    files: int
    bytes_written: int
    skipped: tuple[str, ...]  # junk and hidden entries that were left out


@dataclass(frozen=True, slots=True)
class Member:
    """One archive entry, as the checks see it, whatever the format."""

    name: str
    kind: MemberKind
    size: int  # declared uncompressed size
    compressed_size: int | None = None  # zip only


# -- pure checks -------------------------------------------------------------------------
def safe_relative_path(name: str) -> PurePosixPath:
    """The entry's path inside ``dest``, or ``UnsafeMember`` if it would land elsewhere."""
    if "\x00" in name:
        raise UnsafeMember(f"entry name contains a NUL byte: {name!r}")
    posix = name.replace("\\", "/")  # some Windows tools write backslashes
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeMember(f"absolute path in archive: {name!r}")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"path escapes the archive folder ('..'): {name!r}")
    return PurePosixPath(*parts)  # no parts: the archive's own root folder ("./")


def is_junk(path: PurePosixPath) -> bool:
    """macOS resource forks, Finder/Explorer droppings and hidden files."""
    return any(part in JUNK_NAMES or part.startswith(".") for part in path.parts)


def check_member(member: Member, limits: ArchiveLimits) -> None:
    if member.kind in ("symlink", "hardlink"):
        raise UnsafeMember(
            f"links are not allowed in a dataset archive: {member.name!r} is a {member.kind}"
        )
    if member.kind in ("device", "other"):
        raise UnsafeMember(f"special files are not allowed in a dataset archive: {member.name!r}")
    if member.size > limits.max_entry_bytes:
        raise ArchiveTooLarge(
            f"entry {member.name!r} is {member.size} bytes; "
            f"the limit per file is {limits.max_entry_bytes}"
        )
    if member.compressed_size is not None:
        check_ratio(member.name, member.size, member.compressed_size, limits)


def check_ratio(what: str, uncompressed: int, compressed: int, limits: ArchiveLimits) -> None:
    if uncompressed > RATIO_GRACE_BYTES and uncompressed > limits.max_ratio * max(compressed, 1):
        raise ArchiveTooLarge(
            f"{what} expands {uncompressed / max(compressed, 1):.0f}-fold; "
            f"the limit is {limits.max_ratio:.0f} (a compression bomb?)"
        )


# -- formats -----------------------------------------------------------------------------
def detect_format(path: Path) -> ArchiveFormat:
    with path.open("rb") as handle:
        head = handle.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or zipfile.is_zipfile(path):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"  # a compressed tar; tarfile finds out which compression
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise UnsupportedArchive(f"{path.name} is not a zip or tar archive")


def _zip_member(info: zipfile.ZipInfo) -> Member:
    if info.flag_bits & 0x1:
        raise UnsupportedArchive(f"entry {info.filename!r} is encrypted")
    # The file type lives in the high bits of external_attr when the zip was made on Unix;
    # zero (no type recorded) means a plain file or folder.
    file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
    kind: MemberKind
    if info.is_dir() or file_type == stat.S_IFDIR:
        kind = "dir"
    elif file_type in (0, stat.S_IFREG):
        kind = "file"
    elif file_type == stat.S_IFLNK:
        kind = "symlink"
    elif file_type in (stat.S_IFCHR, stat.S_IFBLK):
        kind = "device"
    else:
        kind = "other"
    return Member(info.filename, kind, info.file_size, info.compress_size)


def _tar_member(info: tarfile.TarInfo) -> Member:
    kind: MemberKind
    if info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.ischr() or info.isblk():
        kind = "device"
    elif info.isreg():
        kind = "file"
    else:
        kind = "other"  # fifos, contiguous files, unknown types
    return Member(info.name, kind, info.size)


class _CountingReader:
    """Counts the compressed bytes tarfile pulls from the archive (to measure the ratio)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.consumed += len(data)
        return data


# -- extraction --------------------------------------------------------------------------
class _Extraction:
    """Writes checked entries into ``dest`` and keeps the running totals."""

    def __init__(self, dest: Path, limits: ArchiveLimits) -> None:
        self.dest = dest
        self.limits = limits
        self.entries = 0
        self.files = 0
        self.bytes_written = 0
        self.skipped: list[str] = []
        self._checked_dirs: set[Path] = set()

    def admit(self, member: Member) -> PurePosixPath | None:
        """Check one entry; the path to write it at, or None if it is junk to skip."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveTooLarge(f"the archive has more than {self.limits.max_entries} entries")
        relative = safe_relative_path(member.name)
        if not relative.parts:
            if member.kind == "dir":
                return None
            raise UnsafeMember(f"entry with an empty name: {member.name!r}")
        if is_junk(relative):
            self.skipped.append(member.name)
            return None
        check_member(member, self.limits)
        return relative

    def make_dir(self, relative: PurePosixPath) -> None:
        target = self.dest.joinpath(*relative.parts)
        self._ensure_parent(target)
        try:
            target.mkdir(exist_ok=True)
        except FileExistsError:
            raise UnsafeMember(f"{relative} is both a file and a folder in the archive") from None
        if target.is_symlink() or not target.is_dir():
            raise UnsafeMember(f"{relative} is both a file and a folder in the archive")

    def write_file(
        self,
        relative: PurePosixPath,
        source: BinaryIO,
        on_chunk: Callable[[], None] | None = None,
    ) -> None:
        target = self.dest.joinpath(*relative.parts)
        self._ensure_parent(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(target, flags, 0o644)
        except FileExistsError:
            raise UnsafeMember(
                f"{relative} appears twice in the archive (or as a folder too)"
            ) from None
        written = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in read_chunks(source):
                written += len(chunk)
                self.bytes_written += len(chunk)
                self._check_written(relative, written)
                out.write(chunk)
                if on_chunk is not None:
                    on_chunk()
        self.files += 1

    def _check_written(self, relative: PurePosixPath, written: int) -> None:
        if written > self.limits.max_entry_bytes:
            raise ArchiveTooLarge(
                f"entry {str(relative)!r} is over {self.limits.max_entry_bytes} bytes, "
                "the limit per file"
            )
        if self.bytes_written > self.limits.max_total_bytes:
            raise ArchiveTooLarge(
                f"the archive expands to more than {self.limits.max_total_bytes} bytes, the limit"
            )

    def _ensure_parent(self, target: Path) -> None:
        parent = target.parent
        if parent in self._checked_dirs:
            return
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UnsafeMember(
                f"{parent.relative_to(self.dest)} is both a file and a folder in the archive"
            ) from None
        # Only this code writes into dest and it makes no links, so this holds; checked
        # anyway because a mistake here would write outside the scratch folder.
        if not parent.resolve().is_relative_to(self.dest.resolve()):
            raise UnsafeMember(f"{target} would be written outside the extraction folder")
        self._checked_dirs.add(parent)


def _extract_zip(path: Path, job: _Extraction) -> None:
    archive_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > job.limits.max_entries:
            raise ArchiveTooLarge(
                f"the archive has {len(infos)} entries, "
                f"more than the limit of {job.limits.max_entries}"
            )
        members = [(info, _zip_member(info)) for info in infos]
        admitted = [(info, member, job.admit(member)) for info, member in members]
        declared = sum(
            member.size for _, member, where in admitted if where and member.kind == "file"
        )
        if declared > job.limits.max_total_bytes:
            raise ArchiveTooLarge(
                f"the archive declares {declared} bytes uncompressed; "
                f"the limit is {job.limits.max_total_bytes}"
            )
        check_ratio("the archive", declared, archive_size, job.limits)
        ensure_free_space(job.dest, declared, job.limits.min_free_disk_bytes)
        for info, member, relative in admitted:
            if relative is None:
                continue
            if member.kind == "dir":
                job.make_dir(relative)
                continue
            with archive.open(info) as source:
                job.write_file(relative, source)
            check_ratio("the archive", job.bytes_written, archive_size, job.limits)


def _extract_tar(path: Path, job: _Extraction) -> None:
    ensure_free_space(job.dest, path.stat().st_size, job.limits.min_free_disk_bytes)
    with path.open("rb") as raw:
        reader = _CountingReader(raw)

        def ratio_ok() -> None:
            check_ratio("the archive", job.bytes_written, reader.consumed, job.limits)

        with tarfile.open(fileobj=reader, mode="r|*") as archive:  # streaming: one pass
            for info in archive:
                relative = job.admit(_tar_member(info))
                if relative is None:
                    continue
                if info.isdir():
                    job.make_dir(relative)
                    continue
                source = archive.extractfile(info)
                assert source is not None  # a regular file, checked above
                job.write_file(relative, source, on_chunk=ratio_ok)


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits) -> ExtractReport:
    """Extract ``path`` into ``dest`` (absent or empty). On refusal ``dest`` is left empty
    (or absent, if this call created it) and an :class:`UnsafeArchive` says why."""
    path, dest = Path(path), Path(dest)
    fmt = detect_format(path)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidInput(f"extraction folder {dest} is not empty")
    job = _Extraction(dest, limits)
    try:
        (_extract_zip if fmt == "zip" else _extract_tar)(path, job)
    except BaseException as error:
        _discard(dest, remove_folder=created)
        if isinstance(error, _DAMAGED):
            raise UnsupportedArchive(
                f"{path.name} is damaged or not a valid archive: {error}"
            ) from None
        raise
    return ExtractReport(dest, fmt, job.files, job.bytes_written, tuple(job.skipped))


# What the zip/tar readers raise on a damaged (or unsupported) archive.
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, NotImplementedError)


def _discard(dest: Path, *, remove_folder: bool) -> None:
    if remove_folder:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)

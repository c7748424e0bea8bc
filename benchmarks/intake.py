"""Dataset intake throughput: what the safety checks cost, as ratios against a baseline
measured in the same run on the same files.

- extraction: ``extract_archive`` (checked, counted, O_EXCL writes) vs the standard
  library's unchecked ``ZipFile.extractall`` / ``TarFile.extractall``;
- ``file://`` download (crc32c, temp file + rename) vs ``shutil.copyfile``;
- ``describe_dataset`` (opens every image) in images per second.

Run: ``.venv/bin/python benchmarks/intake.py [--images 3000]``. Prints a table.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table
from training_core.archive import ArchiveLimits, extract_archive
from training_core.blobs import open_blob_store
from training_core.dataset import describe_dataset
from training_core.settings import load_settings


def png_bytes(size: int = 64) -> bytes:
    """Random pixels: a PNG that does not compress, as photos do not."""
    noise = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    return out.getvalue()


def build_archives(folder: Path, images: int) -> tuple[Path, Path]:
    """The same ImageFolder dataset (10 classes, train/val) as a zip and as a tar.gz."""
    entries = []
    for i in range(images):
        split = "val" if (i // 10) % 5 == 0 else "train"  # a fifth of every class
        entries.append((f"dataset/{split}/class{i % 10}/{i:06d}.png", png_bytes()))
    zip_path, tgz_path = folder / "dataset.zip", folder / "dataset.tgz"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    with tarfile.open(tgz_path, "w:gz") as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return zip_path, tgz_path


def timed(run: Callable[[Path], object], target: Path) -> float:
    started = time.perf_counter()
    run(target)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    target.with_suffix(".bin").unlink(missing_ok=True)
    return elapsed


def compare(
    repeats: int,
    baseline: Callable[[Path], object],
    checked: Callable[[Path], object],
    scratch: Path,
) -> tuple[float, float]:
    """Best times of both, runs interleaved so that a busy moment of the machine hits both."""
    base, safe = [], []
    for attempt in range(repeats):
        base.append(timed(baseline, scratch / f"base-{attempt}"))
        safe.append(timed(checked, scratch / f"safe-{attempt}"))
    return min(base), min(safe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings(min_free_disk_bytes=0)
    limits = ArchiveLimits.from_settings(settings)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zip_path, tgz_path = build_archives(work, args.images)
        rows = []

        def unchecked_zip(target: Path) -> None:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(target)

        def unchecked_tar(target: Path) -> None:
            with tarfile.open(tgz_path) as archive:
                archive.extractall(target, filter="fully_trusted")

        for label, path, baseline in (
            ("zip", zip_path, unchecked_zip),
            ("tar.gz", tgz_path, unchecked_tar),
        ):
            base, safe = compare(
                args.repeats,
                baseline,
                lambda target, p=path: extract_archive(p, target, limits),
                work,
            )
            rows.append((f"extract {label} ({args.images} files)", base, safe, "extractall"))

        bucket = work / "bucket"
        bucket.mkdir()
        store = open_blob_store(settings)
        blob = bucket / "big.bin"
        store.upload(zip_path, f"file://{blob}")
        base, safe = compare(
            args.repeats,
            lambda t: shutil.copyfile(blob, t.with_suffix(".bin")),
            lambda t: store.download(f"file://{blob}", t.with_suffix(".bin")),
            work,
        )
        size_mib = zip_path.stat().st_size / 2**20
        rows.append((f"file:// download ({size_mib:.0f} MiB)", base, safe, "copyfile"))

        extract_archive(zip_path, work / "described", limits)
        started = time.perf_counter()
        dataset = describe_dataset(work / "described")
        described = time.perf_counter() - started
        images = sum(split.total for split in dataset.splits.values())

    table = Table(title=f"Dataset intake (best of {args.repeats} runs)")
    for column in ("operation", "baseline", "baseline s", "checked s", "checked / baseline"):
        table.add_column(column, justify="right" if column != "operation" else "left")
    for name, base, safe, baseline_name in rows:
        table.add_row(name, baseline_name, f"{base:.3f}", f"{safe:.3f}", f"{safe / base:.2f}x")
    console = Console()
    console.print(table)
    rate = images / described
    console.print(f"describe_dataset: {images} images in {described:.2f} s ({rate:,.0f} images/s)")


if __name__ == "__main__":
    main()

"""Validation of an extracted dataset in the ImageFolder layout::

    <root>/                    (or <root>/<one wrapper folder>/)
      train/<class>/<image>    required
      val/<class>/<image>      required, unless a val_split is asked for
      test/<class>/<image>     optional

Classes are the sorted folder names of ``train/`` (as torchvision's ImageFolder infers them),
and their indices are used for every split, so a ``val/`` lacking a class keeps the
same numbering. The result lists every sample, so the trainer does not walk the tree again.

When only ``train/`` exists and ``val_split`` is given, a deterministic, per-class
validation split is carved out of ``train/`` as a listing: no file is copied or moved.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from training_core.archive import JUNK_NAMES
from training_core.errors import InvalidInput
from training_core.settings import DEFAULT_MAX_IMAGE_PIXELS

# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS);
# repeated here so that reading a dataset does not need torch.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
MAX_REPORTED_BAD_FILES = 20

Sample = tuple[str, int]  # (path relative to the dataset root, class index)


class InvalidDataset(InvalidInput):
    """The dataset does not have the expected layout or content; the message says what to fix."""


class OversizedImages(InvalidDataset):
    def __init__(self, oversized: list[tuple[str, tuple[int, int]]], total: int, limit: int) -> None:
        shown = ", ".join(f"{path} ({width}×{height})" for path, (width, height) in oversized)
        more = f" (and {total - len(oversized)} more)" if total > len(oversized) else ""
        super().__init__(
            f"{total} image(s) have more than {limit} pixels (MAX_IMAGE_PIXELS), too many to"
            f" decode safely: {shown}{more}; resize them"
        )
        self.oversized = oversized


class UnreadableImages(InvalidDataset):
    def __init__(self, bad_files: list[str], total: int) -> None:
        shown = ", ".join(bad_files)
        more = f" (and {total - len(bad_files)} more)" if total > len(bad_files) else ""
        super().__init__(f"{total} image file(s) cannot be decoded: {shown}{more}")
        self.bad_files = bad_files
        self.total = total


@dataclass(frozen=True, slots=True)
class SplitDescription:
    name: str
    directory: Path | None  # None when carved out of train/ by val_split
    samples: tuple[Sample, ...]
    counts: Mapping[str, int]  # images per class name

    @property
    def total(self) -> int:
        return len(self.samples)


@dataclass(frozen=True, slots=True)
class DatasetDescription:
    root: Path
    classes: tuple[str, ...]
    splits: Mapping[str, SplitDescription]  # "train", "val", optionally "test"
    min_size: tuple[int, int]  # smallest width and smallest height seen
    max_size: tuple[int, int]  # largest width and largest height seen
    val_from_train: bool
    largest_image_pixels: int = 0  # what decoding the biggest image costs, before any resize

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}


def describe_dataset(
    root: Path,
    *,
    expected_num_classes: int | None = None,
    val_split: float | None = None,
    seed: int = 0,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> DatasetDescription:
    """Check the layout and every image under ``root``; ``InvalidDataset`` says what is wrong."""
    if val_split is not None and not 0 < val_split < 1:
        raise InvalidInput(f"val_split must be between 0 and 1, got {val_split}")
    root = find_dataset_root(Path(root))
    classes = _class_folders(root / "train")
    if not classes:
        raise InvalidDataset(
            "train/ has no class folders: put each class's images in train/<class>/"
        )
    if expected_num_classes is not None and len(classes) != expected_num_classes:
        raise InvalidDataset(
            f"the project expects {expected_num_classes} classes but train/ has {len(classes)}: "
            f"{', '.join(classes)}"
        )
    index = {name: i for i, name in enumerate(classes)}
    samples = {split: _samples(root, split, index) for split in SPLITS if (root / split).is_dir()}
    if "val" not in samples and val_split is None:
        raise InvalidDataset(
            "val/ is missing: add val/<class>/ folders (or ask for a validation split)"
        )
    sizes = _image_sizes(
        root, [path for listing in samples.values() for path, _ in listing], max_image_pixels
    )
    splits = {
        split: SplitDescription(split, root / split, tuple(listing), _counts(listing, classes))
        for split, listing in samples.items()
    }
    carve = "val" not in samples  # val_split only applies when there is no val/ folder
    if carve:
        splits.update(_carve_validation(root, samples["train"], classes, val_split or 0.0, seed))
    widths, heights = zip(*sizes, strict=True)
    return DatasetDescription(
        root=root,
        classes=tuple(classes),
        splits=splits,
        min_size=(min(widths), min(heights)),
        max_size=(max(widths), max(heights)),
        val_from_train=carve,
        largest_image_pixels=max(width * height for width, height in sizes),
    )


def find_dataset_root(root: Path) -> Path:
    """``root`` itself, or the single folder wrapping the splits (as zipping a folder does)."""
    if not root.is_dir():
        raise InvalidDataset(f"dataset folder {root} does not exist")
    if (root / "train").is_dir():
        return root
    entries = _visible(root)
    folders = [entry for entry in entries if (root / entry).is_dir()]
    if len(folders) == 1 and (root / folders[0] / "train").is_dir():
        return root / folders[0]
    found = (
        ", ".join(f"{name}/" if (root / name).is_dir() else name for name in entries) or "nothing"
    )
    raise InvalidDataset(
        f"train/ is missing: expected train/ and val/ folders (optionally inside one top-level "
        f"folder), found {found}"
    )


def split_samples(
    samples: Iterable[Sample], fraction: float, seed: int
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """A stratified split: ``fraction`` of each class (at least one image, never a class's
    last) goes to validation; the same samples and seed always give the same split."""
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    val: set[Sample] = set()
    for index in sorted(by_class):
        members = sorted(by_class[index])
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        val.update(rng.sample(members, count))
    ordered = [s for index in sorted(by_class) for s in by_class[index]]
    return tuple(s for s in ordered if s not in val), tuple(s for s in ordered if s in val)


def _carve_validation(
    root: Path, train: list[Sample], classes: list[str], fraction: float, seed: int
) -> dict[str, SplitDescription]:
    kept, val = split_samples(train, fraction, seed)
    if not val:
        raise InvalidDataset("train/ has too few images to carve out a validation split")
    return {
        "train": SplitDescription("train", root / "train", kept, _counts(kept, classes)),
        "val": SplitDescription("val", None, val, _counts(val, classes)),
    }


def _visible(folder: Path) -> list[str]:
    """Entries that are part of the dataset: not hidden, not OS droppings (``__MACOSX``)."""
    return sorted(
        name for name in os.listdir(folder) if not name.startswith(".") and name not in JUNK_NAMES
    )


def _class_folders(split_dir: Path) -> list[str]:
    return [name for name in _visible(split_dir) if (split_dir / name).is_dir()]


def _samples(root: Path, split: str, index: Mapping[str, int]) -> list[Sample]:
    """(path, class index) for every image, in ImageFolder's order; each class folder
    must hold at least one image and be one of train/'s classes."""
    split_dir = root / split
    classes = _class_folders(split_dir)
    unknown = [name for name in classes if name not in index]
    if unknown:
        raise InvalidDataset(
            f"{split}/ has classes that train/ lacks: {', '.join(unknown)} "
            f"(train/ has {', '.join(index)})"
        )
    listing = []
    for name in classes:
        images = _images_in(split_dir / name)
        if not images:
            raise InvalidDataset(
                f"class folder {split}/{name}/ has no images ({', '.join(IMG_EXTENSIONS)})"
            )
        listing += [((Path(split) / name / image).as_posix(), index[name]) for image in images]
    if not listing:
        raise InvalidDataset(f"{split}/ has no class folders with images")
    return listing


def _images_in(class_dir: Path) -> list[str]:
    """Image files under a class folder (recursively, sorted like ImageFolder), relative to it."""
    found = []
    for folder, _, files in sorted(os.walk(class_dir)):
        relative = Path(folder).relative_to(class_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS):
                found.append((relative / name).as_posix())
    return found


def _counts(samples: Iterable[Sample], classes: list[str]) -> dict[str, int]:
    per_index = Counter(index for _, index in samples)
    return {name: per_index[i] for i, name in enumerate(classes) if per_index[i]}


def _image_sizes(root: Path, paths: list[str], max_pixels: int) -> list[tuple[int, int]]:
    """Each image's (width, height); ``OversizedImages`` lists those over ``max_pixels``,
    ``UnreadableImages`` those PIL cannot decode."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda path: _image_size(root / path, max_pixels), paths))
    found = list(zip(paths, results, strict=True))
    oversized = [(path, size) for path, size in found if size and size[0] * size[1] > max_pixels]
    if oversized:
        raise OversizedImages(oversized[:MAX_REPORTED_BAD_FILES], len(oversized), max_pixels)
    bad = [path for path, size in found if size is None]
    if bad:
        raise UnreadableImages(bad[:MAX_REPORTED_BAD_FILES], len(bad))
    return [size for size in results if size is not None]


def _image_size(path: Path, max_pixels: int) -> tuple[int, int] | None:
    """The size from the header; the rest is checked only for images within ``max_pixels``."""
    from PIL import Image  # the trainer's dependency; reading a dataset's layout does not need it

    try:
        with Image.open(path) as image:
            size = image.size
            if size[0] * size[1] <= max_pixels:
                image.verify()
    except Exception:  # noqa: BLE001 - any decoder failure means "not a usable image"
        return None
    return size

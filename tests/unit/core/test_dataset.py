"""Dataset validation on real image files in the ImageFolder layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from training_core.dataset import (
    IMG_EXTENSIONS,
    InvalidDataset,
    OversizedImages,
    UnreadableImages,
    describe_dataset,
)
from training_core.errors import InvalidInput


def image(path: Path, size: tuple[int, int] = (8, 8), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path, format=fmt)
    return path


def layout(root: Path, spec: dict[str, dict[str, int]], size: tuple[int, int] = (8, 8)) -> Path:
    """``{"train": {"cat": 3}}`` → root/train/cat/0.png … 2.png."""
    for split, classes in spec.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image(folder / f"{i}.png", size)
    return root


def test_a_valid_dataset_is_described(tmp_path: Path) -> None:
    root = layout(
        tmp_path, {"train": {"dog": 2, "cat": 1}, "val": {"cat": 1, "dog": 1}, "test": {"dog": 1}}
    )
    image(root / "train" / "cat" / "big.JPEG", (40, 30), "JPEG")
    image(root / "val" / "dog" / "nested" / "tall.png", (5, 50))
    (root / "train" / "cat" / "notes.txt").write_text("not an image: ignored")

    dataset = describe_dataset(root, expected_num_classes=2)

    assert dataset.root == root
    assert dataset.classes == ("cat", "dog") and dataset.num_classes == 2
    assert dataset.class_to_idx == {"cat": 0, "dog": 1}
    assert set(dataset.splits) == {"train", "val", "test"}
    train, val, test = dataset.splits["train"], dataset.splits["val"], dataset.splits["test"]
    assert train.directory == root / "train" and not dataset.val_from_train
    assert train.samples == (
        ("train/cat/0.png", 0),
        ("train/cat/big.JPEG", 0),
        ("train/dog/0.png", 1),
        ("train/dog/1.png", 1),
    )
    assert val.samples == (
        ("val/cat/0.png", 0),
        ("val/dog/0.png", 1),
        ("val/dog/nested/tall.png", 1),
    )
    assert test.samples == (("test/dog/0.png", 1),)
    assert (train.counts, val.counts, test.counts) == (
        {"cat": 2, "dog": 2},
        {"cat": 1, "dog": 2},
        {"dog": 1},
    )
    assert (train.total, val.total, test.total) == (4, 3, 1)
    assert dataset.min_size == (5, 8) and dataset.max_size == (40, 50)


def test_samples_and_classes_match_torchvision_image_folder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION_EXTENSIONS

    root = layout(tmp_path, {"train": {"b": 2, "a": 3, "c": 1}, "val": {"a": 1, "b": 1, "c": 1}})
    image(root / "train" / "a" / "sub" / "x.bmp", fmt="BMP")
    dataset = describe_dataset(root)
    folder = ImageFolder(str(root / "train"))

    assert set(IMG_EXTENSIONS) == set(TORCHVISION_EXTENSIONS)
    assert list(dataset.classes) == folder.classes
    assert [
        (str(root / path), index) for path, index in dataset.splits["train"].samples
    ] == folder.samples


def test_a_single_wrapper_folder_is_accepted(tmp_path: Path) -> None:
    layout(tmp_path / "my-dataset", {"train": {"a": 1}, "val": {"a": 1}})
    (tmp_path / ".DS_Store").write_text("junk")
    (tmp_path / "__MACOSX" / "my-dataset").mkdir(parents=True)
    dataset = describe_dataset(tmp_path)
    assert dataset.root == tmp_path / "my-dataset"
    assert dataset.splits["val"].samples == (("val/a/0.png", 0),)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda root: layout(root / "outer" / "inner", {"train": {"a": 1}, "val": {"a": 1}}),
            r"train/ is missing: expected train/ and val/ folders .* found outer/",
        ),
        (
            lambda root: layout(root, {"training": {"a": 1}, "val": {"a": 1}}),
            r"train/ is missing: .*found training/, val/",
        ),
        (
            lambda root: (
                layout(root / "one", {"train": {"a": 1}}),
                layout(root / "two", {"train": {"a": 1}}),
            ),
            r"train/ is missing: .*found one/, two/",
        ),
        (
            lambda root: layout(root, {"train": {"a": 1}}),
            r"val/ is missing: add val/<class>/ folders",
        ),
        (
            lambda root: (root / "train").mkdir() or layout(root, {"val": {"a": 1}}),
            r"train/ has no class folders",
        ),
        (
            lambda root: layout(
                root, {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1, "zebra": 1}}
            ),
            r"val/ has classes that train/ lacks: zebra \(train/ has cat, dog\)",
        ),
        (
            lambda root: layout(root, {"train": {"cat": 1}, "val": {"cat": 1}, "test": {"cow": 1}}),
            r"test/ has classes that train/ lacks: cow",
        ),
        (
            lambda root: (
                layout(root, {"train": {"cat": 1}, "val": {"cat": 1}}),
                (root / "train" / "dog").mkdir(),
            ),
            r"class folder train/dog/ has no images",
        ),
        (
            lambda root: (
                layout(root, {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1}}),
                (root / "val" / "dog").mkdir(),
                (root / "val" / "dog" / "readme.txt").write_text("x"),
            ),
            r"class folder val/dog/ has no images \(.jpg, .jpeg, .png",
        ),
        (
            lambda root: (layout(root, {"train": {"cat": 1}}), (root / "val").mkdir()),
            r"val/ has no class folders with images",
        ),
    ],
    ids=[
        "two wrapper levels",
        "misnamed split",
        "two top-level folders",
        "no val",
        "no classes",
        "unknown val class",
        "unknown test class",
        "empty class",
        "no images in class",
        "empty val",
    ],
)
def test_each_layout_error_has_its_own_message(tmp_path: Path, build, message: str) -> None:
    build(tmp_path)
    with pytest.raises(InvalidDataset, match=message):
        describe_dataset(tmp_path)


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataset, match="does not exist"):
        describe_dataset(tmp_path / "nowhere")


def test_class_count_is_checked_against_the_project(tmp_path: Path) -> None:
    root = layout(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "val": {"a": 1}})
    with pytest.raises(
        InvalidDataset, match="the project expects 2 classes but train/ has 3: a, b, c"
    ):
        describe_dataset(root, expected_num_classes=2)


def test_undecodable_images_are_listed_up_to_twenty_with_the_total(tmp_path: Path) -> None:
    root = layout(tmp_path, {"train": {"a": 2}, "val": {"a": 1}})
    for i in range(24):
        (root / "train" / "a" / f"broken{i:02d}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    truncated = image(root / "val" / "a" / "truncated.png", (64, 64))
    truncated.write_bytes(truncated.read_bytes()[:40])

    with pytest.raises(UnreadableImages) as caught:
        describe_dataset(root)

    error = caught.value
    assert error.total == 25 and len(error.bad_files) == 20
    assert error.bad_files[:2] == ["train/a/broken00.jpg", "train/a/broken01.jpg"]
    assert str(error).startswith("25 image file(s) cannot be decoded: train/a/broken00.jpg, ")
    assert str(error).endswith("(and 5 more)")
    assert isinstance(error, InvalidInput)


def test_validation_split_is_carved_from_train_deterministically(tmp_path: Path) -> None:
    root = layout(tmp_path, {"train": {"a": 10, "b": 5, "c": 1}})
    before = sorted(path for path in root.rglob("*"))

    first = describe_dataset(root, val_split=0.2, seed=7)
    again = describe_dataset(root, val_split=0.2, seed=7)
    other = describe_dataset(root, val_split=0.2, seed=8)

    assert sorted(path for path in root.rglob("*")) == before  # a listing: no file moved
    assert first == again and first.splits["val"].samples != other.splits["val"].samples
    train, val = first.splits["train"], first.splits["val"]
    assert first.val_from_train and val.directory is None
    assert val.counts == {"a": 2, "b": 1}  # per class, and a class's only image stays in train
    assert train.counts == {"a": 8, "b": 4, "c": 1}
    assert set(train.samples).isdisjoint(val.samples)
    assert len(set(train.samples) | set(val.samples)) == 16


def test_an_existing_val_folder_wins_over_val_split(tmp_path: Path) -> None:
    root = layout(tmp_path, {"train": {"a": 4}, "val": {"a": 1}})
    dataset = describe_dataset(root, val_split=0.5)
    assert not dataset.val_from_train and dataset.splits["val"].samples == (("val/a/0.png", 0),)


def test_too_few_images_to_split(tmp_path: Path) -> None:
    root = layout(tmp_path, {"train": {"a": 1, "b": 1}})
    with pytest.raises(InvalidDataset, match="too few images to carve out a validation split"):
        describe_dataset(root, val_split=0.2)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_val_split_must_be_a_fraction(tmp_path: Path, fraction: float) -> None:
    root = layout(tmp_path, {"train": {"a": 2}})
    with pytest.raises(InvalidInput, match="val_split must be between 0 and 1"):
        describe_dataset(root, val_split=fraction)


def test_images_over_the_pixel_limit_are_refused_by_name_and_size_before_decoding(
    tmp_path: Path,
) -> None:
    root = layout(tmp_path, {"train": {"a": 2}, "val": {"a": 1}})
    image(root / "train" / "a" / "wide.png", (30, 4))
    # Over the limit and truncated: only its header is read, so it is refused for its size.
    big = image(root / "val" / "a" / "big.png", (20, 20))
    big.write_bytes(big.read_bytes()[:-20])  # its header whole, its pixels cut short

    with pytest.raises(OversizedImages) as caught:
        describe_dataset(root, max_image_pixels=100)

    assert caught.value.oversized == [("train/a/wide.png", (30, 4)), ("val/a/big.png", (20, 20))]
    assert "2 image(s) have more than 100 pixels (MAX_IMAGE_PIXELS)" in str(caught.value)
    # Within the limit, the same file is decoded, and found broken.
    with pytest.raises(UnreadableImages) as broken:
        describe_dataset(root, max_image_pixels=400)
    assert broken.value.bad_files == ["val/a/big.png"]

"""``training-agent check-dataset``: a dataset checked as a run would check it, from a path,
a folder bucket or a GCS bucket."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from training_core.blobs import open_blob_store
from training_agent.cli import app
from training_core.runspec import EXIT_DO_NOT_RETRY
from training_core.settings import load_settings
from typer.testing import CliRunner


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = BytesIO()
    Image.new(mode, size, 0).save(out, format="PNG")
    return out.getvalue()


def dataset_zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    files = {
        "flowers/train/rose/1.png": png((10, 12)),
        "flowers/train/rose/2.png": png((30, 12)),
        "flowers/train/tulip/1.png": png((10, 40)),
        "flowers/val/rose/3.png": png((10, 12)),
        "flowers/val/tulip/2.png": png((10, 12)),
        "__MACOSX/flowers/._junk": b"junk",
        **(extra or {}),
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCRATCH_DIR", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["check-dataset", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_valid_archive_is_described(tmp_path: Path, scratch: Path) -> None:
    code, out, _ = run(str(dataset_zip(tmp_path / "d.zip")), "--num-classes", "2")
    assert code == 0, out
    assert "2 classes" in out and "Dataset OK" in out
    rows = [line.strip("│┃ ").replace("│", " ").split() for line in out.splitlines()]
    assert (
        ["rose", "2", "1"] in rows and ["tulip", "1", "1"] in rows and ["total", "3", "2"] in rows
    )
    assert "width 10-30 px, height 12-40 px" in out
    assert list(scratch.iterdir()) == []  # the extracted copy is gone


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"../escape.png": b"x"}, "path escapes the archive folder"),
        ({"flowers/val/lily/1.png": png((5, 5))}, "val/ has classes that train/ lacks: lily"),
        ({"flowers/train/rose/bad.png": b"not a png"}, "1 image file(s) cannot be decoded"),
        (  # a few KB of PNG that would decode to 144 Mpx
            {"flowers/train/rose/huge.png": png((12_000, 12_000), mode="1")},
            "1 image(s) have more than 89478485 pixels (MAX_IMAGE_PIXELS), too many to decode"
            " safely: train/rose/huge.png (12000×12000)",
        ),
    ],
)
def test_a_bad_dataset_is_refused_with_its_reason(
    tmp_path: Path, scratch: Path, extra: dict[str, bytes], message: str
) -> None:
    code, _, err = run(str(dataset_zip(tmp_path / "d.zip", extra)))
    assert code == EXIT_DO_NOT_RETRY
    assert "Dataset refused:" in err and message in err
    assert not (tmp_path / "escape.png").exists() and list(scratch.iterdir()) == []


def test_the_class_count_is_checked(tmp_path: Path, scratch: Path) -> None:
    code, _, err = run(str(dataset_zip(tmp_path / "d.zip")), "--num-classes", "3")
    assert code == EXIT_DO_NOT_RETRY and "expects 3 classes but train/ has 2" in err


def test_a_missing_dataset_is_reported(tmp_path: Path, scratch: Path) -> None:
    code, _, err = run(str(tmp_path / "absent.zip"))
    assert code == EXIT_DO_NOT_RETRY and "not found" in err


@pytest.mark.parametrize("scheme", ["file", "gs"])
def test_a_dataset_in_a_bucket_is_fetched_and_checked(
    request: pytest.FixtureRequest, tmp_path: Path, scratch: Path, scheme: str
) -> None:
    bucket = request.getfixturevalue("gcs_bucket_url") if scheme == "gs" else f"file://{tmp_path}/b"
    url = f"{bucket}/projects/p1/raw/dataset.zip"
    open_blob_store(load_settings()).upload(dataset_zip(tmp_path / "d.zip"), url)

    code, out, _ = run(url)
    assert code == 0 and "Dataset OK" in out

    code, _, err = run(f"{bucket}/projects/p1/raw/absent.zip")
    assert code == EXIT_DO_NOT_RETRY and "not found" in err

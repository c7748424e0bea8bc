"""A small real dataset that needs no download: scikit-learn's handwritten digits
(1,797 8×8 greyscale images, 10 classes) written as an ImageFolder zip with
``train/``, ``val/`` and ``test/`` splits. The demo and the tests train on it.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path


def write_digits_zip(path: Path, image_size: int = 32, *, limit: int | None = None) -> Path:
    """Write the digits as RGB PNGs of ``image_size`` px into the zip at ``path``.

    The split is stratified and fixed (every 20 images of a class: 14 train, 3 val, 3 test),
    so every run sees the same data. ``limit`` keeps only the first images (faster tests).
    The zip is written next to ``path`` and renamed into place: no half-written file.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    seen = [0] * 10
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
                split = _split_of(seen[label])
                seen[label] += 1
                grey = Image.fromarray((pixels * (255 / 16)).astype("uint8"), mode="L")
                image = grey.resize((image_size, image_size), Image.Resampling.BILINEAR).convert(
                    "RGB"
                )
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                archive.writestr(f"{split}/{label}/{index:04d}.png", buffer.getvalue())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _split_of(position: int) -> str:
    slot = position % 20
    return "train" if slot < 14 else "val" if slot < 17 else "test"

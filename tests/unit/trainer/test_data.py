from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from trainer.data import (
    CachedImages,
    DeviceTransform,
    PipelinePlan,
    Split,
    StreamedImages,
    decode_all,
    decoder_count,
    plan_pipeline,
    random_resized_crop_flip,
)
from training_core.errors import InvalidInput

CPU = torch.device("cpu")
MiB = 2**20
GiB = 2**30


def _images(folder: Path, count: int, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> Split:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"{index}.{fmt.lower()}"
        Image.fromarray(pixels).save(path, format=fmt)
        paths.append(path)
    return Split(tuple(paths), tuple(i % 3 for i in range(count)))


def test_the_plan_prefers_the_gpu_then_ram_then_streaming() -> None:
    needed = 1000 * 3 * 64 * 64  # 11.7 MiB
    assert plan_pipeline(
        1000, 64, ram_budget=100 * MiB, gpu_budget=50 * MiB, cpus=2
    ) == PipelinePlan(
        "cache", "cuda", "1000 images × 64² px = 12 MiB fit the GPU budget of 50 MiB", decoders=4
    )
    assert (
        plan_pipeline(1000, 64, ram_budget=100 * MiB, gpu_budget=needed - 1).cache_device == "cpu"
    )
    assert plan_pipeline(1000, 64, ram_budget=needed, gpu_budget=None).mode == "cache"
    streamed = plan_pipeline(1000, 64, ram_budget=needed - 1, gpu_budget=None)
    assert (streamed.mode, streamed.cache_device) == ("stream", None)
    assert "exceed the RAM budget" in streamed.reason


def test_decoding_is_bounded_by_memory_not_only_by_cores() -> None:
    """A 12,000 × 12,000 image takes about 1.1 GiB to decode: 16 cores, 2 GiB, one at a time."""
    huge = 12_000 * 12_000
    assert plan_pipeline(10, 64, ram_budget=2 * GiB, gpu_budget=None, largest_image_pixels=huge,
                         cpus=16).decoders == 1  # fmt: skip
    assert plan_pipeline(10, 64, ram_budget=64 * GiB, gpu_budget=None, largest_image_pixels=huge,
                         cpus=16).decoders == 32  # fmt: skip
    assert decoder_count(huge, ram_budget=0, most=8) == 1  # always makes progress
    streamed = plan_pipeline(
        10**6, 224, ram_budget=3 * GiB, gpu_budget=None, largest_image_pixels=huge, cpus=16
    )
    assert (streamed.mode, streamed.decoders) == ("stream", 2)


def test_decoding_resizes_every_image_like_the_reference_transform(tmp_path: Path) -> None:
    split = _images(tmp_path, 4, fmt="PNG")
    cache = decode_all(split.paths, 24, threads=2)
    assert cache.shape == (4, 3, 24, 24) and cache.dtype == torch.uint8
    reference = transforms.Compose([transforms.Resize((24, 24)), transforms.PILToTensor()])
    expected = reference(Image.open(split.paths[2]).convert("RGB"))
    # PIL resizes both; torchvision's Resize adds antialiasing, so allow rounding-level differences.
    assert (cache[2].int() - expected.int()).abs().float().mean() < 2


def test_an_undecodable_image_is_named(tmp_path: Path) -> None:
    split = _images(tmp_path, 2)
    split.paths[1].write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(InvalidInput, match="cannot decode image 1.jpeg"):
        decode_all(split.paths, 16)


def test_normalisation_matches_torchvision() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ours = DeviceTransform(CPU)(images, train=False)
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(ours, normalize(images.float() / 255), atol=1e-5)


def test_augmentation_crops_and_flips_within_the_image() -> None:
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 32).expand(64, 3, 32, 32).contiguous()  # brighter to the right
    out = random_resized_crop_flip(ramp)
    assert out.shape == ramp.shape
    assert out.min() >= 0 and out.max() <= 1  # resampled from the image, nothing invented
    left_to_right = out[:, 0, 16, -1] - out[:, 0, 16, 0]
    assert (left_to_right > 0).any() and (left_to_right < 0).any()  # some mirrored, some not
    assert not torch.equal(out, ramp)


def test_cache_and_stream_give_the_same_batches(tmp_path: Path) -> None:
    split = _images(tmp_path, 10)
    order = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    cached = list(CachedImages(split, 16, CPU, "cpu").batches(order, 4, skip=1))
    streamed = list(StreamedImages(split, 16, CPU, workers=1).batches(order, 4, skip=1))
    assert [len(labels) for _, labels in cached] == [4, 2]  # batch 0 skipped, as a resume does
    for (cached_x, cached_y), (streamed_x, streamed_y) in zip(cached, streamed, strict=True):
        assert torch.equal(cached_x, streamed_x)
        assert torch.equal(cached_y, streamed_y)
    assert cached[0][1].tolist() == [split.labels[i] for i in (5, 9, 2, 6)]

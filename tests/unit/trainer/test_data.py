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


@pytest.mark.parametrize(
    ("fmt", "size", "largest_difference"),
    [
        ("JPEG", (40, 30), 1),  # torchvision.io decodes it: the same pixels but for rounding
        ("PNG", (40, 30), 1),
        ("PNG", (120, 90), 1),
        ("JPEG", (120, 90), 0),  # twice the target: PIL at a reduced scale, as the cache does
    ],
)
def test_cache_and_stream_give_the_same_batches(
    tmp_path: Path, fmt: str, size: tuple[int, int], largest_difference: int
) -> None:
    split = _images(tmp_path, 10, size, fmt)
    order = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    cached = list(CachedImages(split, 16, CPU, "cpu").batches(order, 4, skip=1))
    for decoder, most in (("auto", largest_difference), ("pil", 0)):
        streamed = StreamedImages(split, 16, CPU, workers=1, decoder=decoder)
        batches = list(streamed.batches(order, 4, skip=1))
        assert [len(labels) for _, labels in batches] == [4, 2]  # batch 0 skipped, as on resume
        for (cached_x, cached_y), (streamed_x, streamed_y) in zip(cached, batches, strict=True):
            assert streamed_x.shape == cached_x.shape and streamed_x.dtype == torch.uint8
            assert (streamed_x.int() - cached_x.int()).abs().max() <= most, decoder
            assert torch.equal(cached_y, streamed_y)
    assert cached[0][1].tolist() == [split.labels[i] for i in (5, 9, 2, 6)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("decoder", ["auto", "torchvision", "pil"])
def test_a_corrupt_image_in_the_stream_is_named(tmp_path: Path, fmt: str, decoder: str) -> None:
    split = _images(tmp_path, 6, fmt=fmt)
    whole = split.paths[4].read_bytes()
    split.paths[4].write_bytes(whole[: len(whole) // 2])  # the header is fine, the data cut
    streamed = StreamedImages(split, 16, CPU, workers=1, decoder=decoder)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as raised:
        list(streamed.batches(torch.arange(6), 2))
    # The same message as the cache's, not wrapped in the worker's traceback.
    assert str(raised.value).startswith(f"cannot decode image 4.{fmt.lower()}: ")
    assert not any(noise in str(raised.value) for noise in ("Traceback", "worker", ".cpp"))


def test_jpegs_left_to_the_device_are_decoded_with_their_batch(tmp_path: Path) -> None:
    """The CUDA path (workers pass JPEG bytes on, the batch is decoded together), with the
    CPU standing in for the GPU: the same batches, PNGs mixed in, and a corrupt JPEG named."""
    (tmp_path / "jpeg").mkdir()
    (tmp_path / "png").mkdir()
    jpegs, pngs = _images(tmp_path / "jpeg", 6), _images(tmp_path / "png", 4, fmt="PNG")
    split = Split(jpegs.paths + pngs.paths, jpegs.labels + pngs.labels)
    order = torch.tensor([9, 0, 5, 7, 1, 2, 8, 3, 4, 6])

    def streamed() -> list[tuple[torch.Tensor, torch.Tensor]]:
        source = StreamedImages(split, 16, CPU, workers=1)
        source.loader.dataset.gpu_jpeg = True  # type: ignore[attr-defined]
        return list(source.batches(order, 4))

    cached = list(CachedImages(split, 16, CPU, "cpu").batches(order, 4))
    for (cached_x, cached_y), (streamed_x, streamed_y) in zip(cached, streamed(), strict=True):
        assert (streamed_x.int() - cached_x.int()).abs().max() <= 1
        assert torch.equal(cached_y, streamed_y)
    whole = split.paths[2].read_bytes()
    split.paths[2].write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidInput, match=r"^cannot decode image 2\.jpeg: "):
        streamed()

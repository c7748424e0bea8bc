"""The input pipeline: images in, normalised (and, for training, augmented) batches out.

Two ways to feed the device, chosen by memory:

* **cache** — when every image, decoded and resized, fits the memory budget: decode each
  image once (in parallel threads; PIL releases the GIL) into one uint8 tensor, on the GPU
  when it fits there. An epoch is then only tensor indexing: no decoding, no workers.
* **stream** — otherwise: a ``DataLoader`` with pinned memory, prefetching and persistent
  workers. Each image is decoded where it is fastest: on CUDA, the workers only read JPEGs
  and the GPU decodes each batch of them (nvJPEG) and resizes it; on a CPU, the workers
  decode with libjpeg-turbo or libpng through ``torchvision.io`` (faster than PIL), except
  JPEGs at least twice the target size, which PIL decodes at a reduced scale (libjpeg's
  scaled IDCT: several times faster than a full decode). Other formats go through PIL.

Both yield uint8 batches; normalisation and augmentation (random resized crop and
horizontal flip) run on the device on whole batches, as tensor operations.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.io
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode
from training_core.errors import InvalidInput

from trainer.distributed import Group

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAM_FRACTION = 0.5  # of available RAM the cache may take
# An image being decoded holds its full-size pixels as RGB(A) and a converted copy.
DECODE_BYTES_PER_PIXEL = 8
GPU_FRACTION = 0.3  # of free GPU memory: the rest is for the model and its activations
CROP_SCALE = (0.7, 1.0)  # light: a crop keeps most of the image (and the object in it)
CROP_RATIO = (3 / 4, 4 / 3)

Batch = tuple[torch.Tensor, torch.Tensor]
# How streamed images are decoded: ``auto`` picks per image (see above); ``pil`` and
# ``torchvision`` are one library for every image they can read (for comparisons).
Decoder = Literal["auto", "pil", "torchvision"]


@dataclass(frozen=True)
class Split:
    """One split of a dataset: image files and their class indices, in a fixed order."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class PipelinePlan:
    mode: Literal["cache", "stream"]
    cache_device: str | None
    reason: str
    decoders: int = 1  # images decoded at once (cache: threads; stream: DataLoader workers)


def plan_pipeline(
    num_images: int, image_size: int, *, ram_budget: int, gpu_budget: int | None,
    largest_image_pixels: int = 0, cpus: int | None = None,
) -> PipelinePlan:  # fmt: skip
    """Decide where the decoded images live (GPU cache, RAM cache, or streamed from disk) and
    how many images are decoded at once."""
    needed = num_images * 3 * image_size * image_size
    cpus = cpus or os.cpu_count() or 1
    size = f"{num_images} images × {image_size}² px = {_mib(needed)}"
    if gpu_budget is not None and needed <= gpu_budget:
        decoders = decoder_count(largest_image_pixels, ram_budget, min(32, cpus * 2))
        return PipelinePlan(
            "cache", "cuda", f"{size} fit the GPU budget of {_mib(gpu_budget)}", decoders
        )
    if needed <= ram_budget:
        decoders = decoder_count(largest_image_pixels, ram_budget - needed, min(32, cpus * 2))
        return PipelinePlan(
            "cache", "cpu", f"{size} fit the RAM budget of {_mib(ram_budget)}", decoders
        )
    decoders = decoder_count(largest_image_pixels, ram_budget, min(8, max(1, cpus - 1)))
    return PipelinePlan(
        "stream", None, f"{size} exceed the RAM budget of {_mib(ram_budget)}", decoders
    )


def decoder_count(largest_image_pixels: int, ram_budget: int, most: int) -> int:
    """Up to ``most`` images decoded at once (what the cores can use), but never more
    full-size decodes of the largest image than ``ram_budget`` holds."""
    per_image = max(1, largest_image_pixels * DECODE_BYTES_PER_PIXEL)
    return max(1, min(most, ram_budget // per_image))


def memory_budgets(device: torch.device) -> tuple[int, int | None]:
    """(RAM budget, GPU budget or None) in bytes for the decoded-image cache."""
    ram = int(available_ram() * RAM_FRACTION)
    if device.type != "cuda":
        return ram, None
    free, _total = torch.cuda.mem_get_info(device)
    return ram, int(free * GPU_FRACTION)


def available_ram() -> int:
    """Available memory, bounded by the container's cgroup limit where there is one."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def decode_resized(path: Path, size: int, data: bytes | None = None) -> np.ndarray:
    """One image (from ``path``, or its ``data`` already read) as a (size, size, 3) uint8
    array, decoded by PIL; a clear error for an unreadable file."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it can
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.array(rgb, dtype=np.uint8)  # writable: torch.from_numpy shares it
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise InvalidInput(f"cannot decode image {path.name}: {error}") from None


def image_format(data: bytes) -> Literal["jpeg", "png"] | None:
    """The formats ``torchvision.io`` decodes, by their magic bytes; None for the rest."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def pil_scales_down(data: bytes, size: int) -> bool:
    """Whether PIL would decode this JPEG at a reduced scale (1/2 to 1/8) for ``size``: both
    sides at least twice the target. Only the header is read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return min(image.size) >= 2 * size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return False  # the decoder that follows names the problem


def decode_streamed(path: Path, size: int, decoder: Decoder, gpu_jpeg: bool) -> torch.Tensor:
    """One image for a streamed batch: (3, size, size) uint8 — or, with ``gpu_jpeg``, a
    JPEG's encoded bytes as a 1-D uint8 tensor, for the GPU to decode with its batch."""
    if decoder == "pil":
        return torch.from_numpy(decode_resized(path, size)).permute(2, 0, 1)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidInput(f"cannot decode image {path.name}: {error}") from None
    kind = image_format(data)
    if kind == "jpeg" and gpu_jpeg:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if kind is None or (decoder == "auto" and kind == "jpeg" and pil_scales_down(data, size)):
        return torch.from_numpy(decode_resized(path, size, data)).permute(2, 0, 1)
    image = decode_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8), path.name)
    return resized(image, size)


def decode_bytes(data: torch.Tensor, name: str) -> torch.Tensor:
    """A JPEG or PNG's bytes decoded on the CPU by ``torchvision.io``: (3, H, W) uint8."""
    try:
        image = torchvision.io.decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise InvalidInput(f"cannot decode image {name}: {_decoder_message(error)}") from None
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


def resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear with antialiasing, as PIL's resize (on whichever device the image is)."""
    return TF.resize(image, [size, size], antialias=True)


def _decoder_message(error: RuntimeError) -> str:
    """torchvision's C++ errors start with the function and source line: keep the reason."""
    return re.sub(r"^[^,]*, \S+:\d+, ", "", str(error).strip())


def decode_all(paths: Sequence[Path], size: int, threads: int | None = None) -> torch.Tensor:
    """Every image decoded once into one (N, 3, size, size) uint8 tensor."""
    cache = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    threads = threads or min(32, (os.cpu_count() or 1) * 2)

    def fill(index: int) -> None:
        cache[index] = torch.from_numpy(decode_resized(paths[index], size)).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(fill, range(len(paths))):
            pass
    return cache


def decode_together(
    paths: Sequence[Path], size: int, group: Group, threads: int | None = None
) -> torch.Tensor:
    """Every image decoded once by the group: each rank decodes its contiguous part and
    broadcasts it, so each holds the whole split at 1/world_size of the decoding time. An
    image one rank cannot decode is the same error on every rank."""
    if not group.distributed:
        return decode_all(paths, size, threads)
    cache = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    bounds = [len(paths) * rank // group.world_size for rank in range(group.world_size + 1)]
    error = None
    try:
        mine = slice(bounds[group.rank], bounds[group.rank + 1])
        cache[mine] = decode_all(paths[mine], size, threads)
    except InvalidInput as failure:
        error = str(failure)
    (failed,) = group.agree(error is not None)
    if failed:
        raise InvalidInput(group.share_first(error))
    for rank in range(group.world_size):
        group.broadcast(cache[bounds[rank] : bounds[rank + 1]], src=rank)
    return cache


class BatchSource(Protocol):
    def batches(self, order: torch.Tensor, batch_size: int, skip: int = 0) -> Iterator[Batch]:
        """uint8 images and int64 labels on the device, in ``order``, from batch ``skip`` on."""


class CachedImages:
    """The decoded split in one tensor (on the GPU when it fits): batches are slices."""

    def __init__(
        self, split: Split, size: int, device: torch.device, cache_device: str,
        threads: int | None = None, group: Group | None = None,
    ) -> None:  # fmt: skip
        images = decode_together(split.paths, size, group or Group(), threads)
        labels = torch.tensor(split.labels, dtype=torch.int64)
        self.device = device
        if cache_device == "cuda":
            self.images, self.labels = images.to(device), labels.to(device)
        else:
            pin = device.type == "cuda"
            self.images = images.pin_memory() if pin else images
            self.labels = labels.pin_memory() if pin else labels

    def batches(self, order: torch.Tensor, batch_size: int, skip: int = 0) -> Iterator[Batch]:
        order = order.to(self.images.device)
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size]
            yield (
                self.images[index].to(self.device, non_blocking=True),
                self.labels[index].to(self.device, non_blocking=True),
            )


_Item = tuple[torch.Tensor, int, str]  # image (or JPEG bytes), index, a decode error or ""


class _Streamed(torch.utils.data.Dataset[_Item]):
    def __init__(self, split: Split, size: int, decoder: Decoder, gpu_jpeg: bool) -> None:
        self.split, self.size, self.decoder, self.gpu_jpeg = split, size, decoder, gpu_jpeg

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> _Item:
        path = self.split.paths[index]
        try:
            return decode_streamed(path, self.size, self.decoder, self.gpu_jpeg), index, ""
        except InvalidInput as error:
            # Returned, not raised: the DataLoader would wrap it in the worker's traceback.
            return torch.empty(0, dtype=torch.uint8), index, str(error)


def _collate(
    items: list[_Item],
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, list[str]]:
    images, indices, errors = zip(*items, strict=True)
    decoded = all(image.dim() == 3 for image in images)
    batch = torch.stack(images) if decoded else list(images)  # JPEG bytes stay a list
    return batch, torch.tensor(indices), [error for error in errors if error]


class _OrderedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of indices in an order set before each pass (workers persist across epochs)."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.batch_size = 1

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)


class StreamedImages:
    """Read (and, but for JPEGs bound for the GPU, decoded) on the fly by ``DataLoader``
    workers, for datasets larger than memory."""

    def __init__(
        self, split: Split, size: int, device: torch.device, workers: int,
        decoder: Decoder = "auto",
    ) -> None:  # fmt: skip
        self.split, self.size, self.device = split, size, device
        self.labels = torch.tensor(split.labels, dtype=torch.int64)
        self.sampler = _OrderedBatches()
        gpu_jpeg = device.type == "cuda" and decoder != "pil"
        self.loader = torch.utils.data.DataLoader(
            _Streamed(split, size, decoder, gpu_jpeg),
            batch_sampler=self.sampler,
            collate_fn=_collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=workers > 0,
        )

    def batches(self, order: torch.Tensor, batch_size: int, skip: int = 0) -> Iterator[Batch]:
        self.sampler.order = order[skip * batch_size :].tolist()
        self.sampler.batch_size = batch_size
        for images, indices, errors in self.loader:
            if errors:
                raise InvalidInput(errors[0])
            if isinstance(images, list):
                images = self._decode_on_gpu(images, indices)
            yield (
                images.to(self.device, non_blocking=True),
                self.labels[indices].to(self.device, non_blocking=True),
            )

    def _decode_on_gpu(self, images: list[torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
        """The batch's JPEGs decoded together by nvJPEG, then resized on the GPU; the
        other images came decoded."""
        jpegs = [i for i, image in enumerate(images) if image.dim() == 1]
        encoded = [images[i] for i in jpegs]
        try:
            decoded = torchvision.io.decode_jpeg(
                encoded, mode=ImageReadMode.RGB, device=self.device
            )
        except RuntimeError:
            # One nvJPEG refused (corrupt, or a kind it lacks): the CPU decodes this batch,
            # and names the image it cannot decode either.
            names = [self.split.paths[int(indices[i])].name for i in jpegs]
            decoded = [decode_bytes(data, name) for data, name in zip(encoded, names, strict=True)]
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = resized(image.to(self.device, non_blocking=True), self.size)
        return torch.stack([image.to(self.device, non_blocking=True) for image in images])


def open_split(
    split: Split, size: int, device: torch.device, plan: PipelinePlan, group: Group | None = None
) -> BatchSource:
    if plan.mode == "cache":
        assert plan.cache_device is not None
        return CachedImages(split, size, device, plan.cache_device, plan.decoders, group)
    return StreamedImages(split, size, device, plan.decoders)


class DeviceTransform:
    """Normalisation (and train-time augmentation) of uint8 batches on their device."""

    def __init__(self, device: torch.device, channels_last: bool = False) -> None:
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add.
        self.scale = 1 / (255 * std)
        self.shift = -mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = torch.addcmul(self.shift, images.float(), self.scale)
        if train:
            x = random_resized_crop_flip(x)
        return x.contiguous(memory_format=self.memory_format)


def random_resized_crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Per image: a random crop (scale, aspect ratio) resized back, mirrored half the time.

    One affine grid for the whole batch instead of a crop per image.
    """
    n = x.shape[0]
    area = torch.empty(n, device=x.device).uniform_(*CROP_SCALE)
    log_ratio = torch.empty(n, device=x.device).uniform_(*(math.log(r) for r in CROP_RATIO))
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (torch.rand(n, device=x.device) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, device=x.device) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"

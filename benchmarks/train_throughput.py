"""Training throughput: our input pipeline and loop against the seed's, and against the
device's synthetic ceiling — same model, same data, same run.

* **seed** — what the first version did: ``ImageFolder`` + PIL ``Resize``/``ToTensor``/
  ``Normalize`` per sample, batch 32, fp32, Adam, no workers, ``loss.item()`` every step.
* **ours** — the trainer's pipeline and loop (:mod:`trainer.data`, :mod:`trainer.engine`):
  decoded-image cache, batched on-device augmentation, channels_last, fused Adam; on CUDA
  also bf16 autocast and ``torch.compile`` for resnet50.
* **ceiling** — random tensors already on the device through the same model and step as
  ours: what the device can do with no input pipeline at all.

The dataset is a generated JPEG ImageFolder of photo-like images (gradients, shapes, noise).
Start-up (extract + validate + decode cache) is reported on its own line.

    python benchmarks/train_throughput.py                       # CPU defaults: short
    python benchmarks/train_throughput.py --images 6000 --steps 50 --model resnet50   # a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter
from rich.console import Console
from rich.table import Table
from torchvision import transforms
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, PipelinePlan, Split, open_split
from trainer.engine import EpochPosition, TrainConfig, Trainer, cpu_count, train_one_epoch
from trainer.models import create_model
from training_core.archive import ArchiveLimits, extract_archive
from training_core.dataset import describe_dataset
from training_core.settings import load_settings

CLASSES = 10


@dataclass(frozen=True)
class Measure:
    name: str
    images_per_second: float
    detail: str


# -- a photo-like JPEG ImageFolder -------------------------------------------------------
def write_dataset(root: Path, images: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``images`` JPEGs of ``size`` in train/ and val/ (90/10), zipped; returns the zip."""
    rng = np.random.default_rng(seed)
    width, height = size
    folder = root / "photos"
    for index in range(images):
        label = index % CLASSES
        split = "val" if (index // CLASSES) % 10 == 9 else "train"
        target = folder / split / f"class_{label}" / f"{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, label, width, height).save(target, format="JPEG", quality=90)
    archive = root / "photos.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        for path in sorted(folder.rglob("*.jpg")):
            out.write(path, path.relative_to(folder).as_posix())
    return archive


def _photo(rng: np.random.Generator, label: int, width: int, height: int) -> Image.Image:
    """A sky-to-ground gradient, a class-coloured shape among distractors, sensor noise."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(10, min(width, height) // 4)
        draw.rectangle(
            (x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    hue = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 29 + 160) % 256])
    x, y, r = (
        width // 2 + rng.integers(-50, 50),
        height // 2 + rng.integers(-50, 50),
        min(width, height) // 4,
    )
    draw.ellipse((x - r, y - r // (1 + label % 3), x + r, y + r), fill=tuple(int(c) for c in hue))
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16)
    noisy = noisy + rng.normal(0, 8, noisy.shape).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


# -- the three contenders ----------------------------------------------------------------
def _timed(
    run_steps: Callable[[int], None], device: torch.device, warmup: int, steps: int
) -> float:
    run_steps(warmup)
    _sync(device)
    started = time.perf_counter()
    run_steps(steps)
    _sync(device)
    return time.perf_counter() - started


def seed_pipeline(
    root: Path, model_name: str, size: int, device: torch.device, warmup: int, steps: int
) -> Measure:
    transform = transforms.Compose([
        transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    dataset = torchvision.datasets.ImageFolder(root / "train", transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=0)
    model = create_model(model_name, CLASSES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    batches = _forever(loader)

    def run_steps(count: int) -> None:
        for _ in range(count):
            images, labels = next(batches)
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            loss.item()  # the seed logged the running loss every step

    seconds = _timed(run_steps, device, warmup, steps)
    return Measure(
        "seed pipeline", steps * 32 / seconds, "ImageFolder + PIL per sample, batch 32, fp32"
    )


def our_trainer(
    split: Split, model_name: str, size: int, device: torch.device, batch: int, compile_model: bool,
    warmup: int, steps: int, plan: PipelinePlan,
) -> tuple[Measure, Trainer]:  # fmt: skip
    source = open_split(split, size, device, plan)
    config = TrainConfig(
        epochs=1,
        learning_rate=1e-3,
        batch_size=batch,
        seed=0,
        compile="on" if compile_model else "off",
    )
    trainer = Trainer(
        create_model(model_name, CLASSES),
        source,
        len(split),
        source,
        len(split),
        CLASSES,
        config,
        device,
    )
    epoch = iter(range(1, 10**9))

    def run_steps(count: int) -> None:
        left = count
        while left:
            take = min(left, len(split) // batch)
            order = torch.randperm(
                len(split), generator=torch.Generator().manual_seed(next(epoch))
            )[: take * batch]
            train_one_epoch(
                trainer.step_model, trainer.optimizer, source, order, batch, trainer.transform,
                EpochPosition(), lambda: False, trainer.amp,
            )  # fmt: skip
            left -= take

    seconds = _timed(run_steps, device, warmup, steps)
    precision = "bf16" if trainer.amp else "fp32"
    detail = f"{plan.mode} ({plan.cache_device}), batch {batch}, {precision}, channels_last" + (
        ", compiled" if trainer.compiled else ""
    )
    return Measure("ours", steps * batch / seconds, detail), trainer


def ceiling(
    trainer: Trainer, size: int, batch: int, device: torch.device, warmup: int, steps: int
) -> Measure:
    images = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    model, optimizer = trainer.step_model, trainer.optimizer
    model.train()

    def run_steps(count: int) -> None:
        for _ in range(count):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.amp):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    seconds = _timed(run_steps, device, warmup, steps)
    return Measure(
        "synthetic ceiling",
        steps * batch / seconds,
        "random tensors on the device, same model and step as ours",
    )


# -- the run -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument(
        "--images", type=int, help="dataset size (default: 6000 on CUDA, 600 on CPU)"
    )
    parser.add_argument("--photo-size", default="640x480", help="generated JPEG size, WxH")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--batch-size", type=int, help="ours and the ceiling (default: 512 on CUDA, 32 on CPU)"
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps per contender (default: 50 on CUDA, 6 on CPU)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first (default: 10 on CUDA, 2 on CPU)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat and keep the median (noisy machines)"
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: on for resnet50 on CUDA",
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    images = args.images or (6000 if cuda else 600)
    batch = args.batch_size or (512 if cuda else 32)
    steps = args.steps or (50 if cuda else 6)
    warmup = args.warmup or (10 if cuda else 2)
    compile_model = args.compile == "on" or (
        args.compile == "auto" and cuda and args.model == "resnet50"
    )
    width, height = (int(v) for v in args.photo_size.split("x"))
    console = Console()
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", cpu_count())))
    _describe_device(console, device)

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        root = Path(tmp)
        console.print(f"Writing {images} photo-like {width}×{height} JPEGs …")
        archive = write_dataset(root, images, (width, height))
        split, startup = _start_up(archive, root / "extracted", args.image_size)
        plan = PipelinePlan("cache", "cuda" if cuda else "cpu", "benchmark")
        rounds: list[list[Measure]] = []
        for _ in range(args.rounds):
            seed = seed_pipeline(
                root / "extracted", args.model, args.image_size, device, warmup, max(steps, 1)
            )
            ours, trainer = our_trainer(
                split,
                args.model,
                args.image_size,
                device,
                batch,
                compile_model,
                warmup,
                steps,
                plan,
            )
            top = ceiling(trainer, args.image_size, batch, device, warmup, steps)
            rounds.append([seed, ours, top])
        console.print(_table(rounds, args.model, args.image_size, device, startup, len(split)))


def _start_up(archive: Path, dest: Path, size: int) -> tuple[Split, dict[str, float]]:
    started = time.perf_counter()
    extract_archive(archive, dest, ArchiveLimits.from_settings(load_settings()))
    extracted = time.perf_counter()
    dataset = describe_dataset(dest)
    described = time.perf_counter()
    samples = dataset.splits["train"].samples
    split = Split(tuple(dataset.root / p for p, _ in samples), tuple(c for _, c in samples))
    from trainer.data import decode_all

    decode_all(split.paths, size)  # the cache's cost (the contenders build their own)
    decoded = time.perf_counter()
    return split, {
        "extract": extracted - started, "validate": described - extracted, "decode cache": decoded - described,
    }  # fmt: skip


def _table(
    rounds: list[list[Measure]],
    model: str,
    size: int,
    device: torch.device,
    startup: dict[str, float],
    n: int,
) -> Table:
    names = [m.name for m in rounds[0]]
    median = {
        name: statistics.median(r[i].images_per_second for r in rounds)
        for i, name in enumerate(names)
    }
    seed, top = median["seed pipeline"], median["synthetic ceiling"]
    table = Table(
        title=f"{model} at {size} px on {_device_name(device)} (median of {len(rounds)} round(s))"
    )
    for column in ("pipeline", "images/s", "× seed", "% of ceiling", "how"):
        table.add_column(
            column, justify="right" if column in ("images/s", "× seed", "% of ceiling") else "left"
        )
    for index, name in enumerate(names):
        value = median[name]
        table.add_row(
            name,
            f"{value:,.1f}",
            f"{value / seed:.2f}×",
            f"{100 * value / top:.0f}%",
            rounds[0][index].detail,
        )
    startup_text = ", ".join(f"{k} {v:.1f} s" for k, v in startup.items())
    table.caption = (
        f"start-up for {n} training images: {startup_text} (total {sum(startup.values()):.1f} s)"
    )
    return table


def _describe_device(console: Console, device: torch.device) -> None:
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    console.print(f"torch {torch.__version__} on {_device_name(device)}{threads}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_count()} cores)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


if __name__ == "__main__":
    sys.exit(main())

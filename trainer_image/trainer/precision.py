"""Which precision a run trains in: bf16 autocast where the device has native bf16 and it
pays for this model at this batch and image size, fp32 otherwise; ``PRECISION`` overrides.

On CUDA, bf16 wherever the GPU supports it. On a CPU, native bf16 (AMX or AVX-512 BF16)
halves a convolution network's step time for some architectures and gains nothing for
others (depthwise-heavy ones, small images), so a short probe of the run's own model
decides. A resumed run keeps the precision it started with (its checkpoint holds it).

Below 32 px a CPU trains in fp32 whatever is asked: there the networks' last stride-2
convolution sees a 1×1 map, and oneDNN's bf16 weight gradient for that shape comes out
NaN about every other step (torch 2.14; reproduced with ``convolution_backward`` alone).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

PrecisionSetting = Literal["auto", "bf16", "fp32"]
Precision = Literal["bf16", "fp32"]
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo: native bf16 matrix math
# bf16 only where clearly faster: a smaller gain is within a probe's noise on a busy machine
# (and would make the choice flip from run to run).
MIN_SPEEDUP = 1.2
PROBE_SECONDS = 6.0  # the probe's budget, about: a long run's first seconds
PROBE_ROUNDS = (2, 4)  # timed steps per precision: at least (one can hit a busy moment), at most
CPU_BF16_MIN_IMAGE_SIZE = 32  # see above: smaller images give NaN gradients in bf16


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    reason: str

    def __str__(self) -> str:
        return f"{self.precision}: {self.reason}"


@dataclass(frozen=True)
class ProbeTimings:
    """Seconds per forward and backward step, same batch, in each precision."""

    fp32: float
    bf16: float


# -- the decision (pure) -----------------------------------------------------------------
def cpu_has_bf16(flags: Iterable[str]) -> bool:
    return any(flag in CPU_BF16_FLAGS for flag in flags)


def needs_probe(
    setting: PrecisionSetting, device_type: str, bf16_native: bool, image_size: int
) -> bool:
    return (
        setting == "auto" and device_type == "cpu" and bf16_native
        and image_size >= CPU_BF16_MIN_IMAGE_SIZE
    )  # fmt: skip


def choose_precision(
    setting: PrecisionSetting, device_type: str, bf16_native: bool, image_size: int,
    timings: ProbeTimings | None = None,
) -> PrecisionChoice:  # fmt: skip
    """``timings`` are needed only where :func:`needs_probe` says so."""
    if setting == "fp32":
        return PrecisionChoice("fp32", "PRECISION=fp32")
    if device_type == "cuda":
        if not bf16_native:
            return PrecisionChoice("fp32", "this GPU has no bf16")
        return PrecisionChoice("bf16", "PRECISION=bf16" if setting == "bf16" else "the GPU has it")
    if image_size < CPU_BF16_MIN_IMAGE_SIZE:
        return PrecisionChoice(
            "fp32", f"bf16 on a CPU gives NaN gradients below {CPU_BF16_MIN_IMAGE_SIZE} px"
        )
    if setting == "bf16":
        # Autocast emulates bf16 on any CPU: slower, but what was asked.
        native = "" if bf16_native else ", emulated on this CPU (slow)"
        return PrecisionChoice("bf16", f"PRECISION=bf16{native}")
    if not bf16_native:
        return PrecisionChoice("fp32", "this CPU has no AMX or AVX-512 BF16")
    if timings is None:
        raise ValueError("auto precision on a bf16 CPU needs probe timings")
    speedup = timings.fp32 / timings.bf16
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice("bf16", f"{speedup:.1f}× fp32 in a probe")
    return PrecisionChoice("fp32", f"bf16 was {speedup:.2f}× fp32 in a probe")


def resumed_precision(started: Precision, device_type: str, bf16_native: bool) -> PrecisionChoice:
    """A resumed run trains on in the precision it started with (the same numerics), unless
    this GPU cannot (autocast refuses bf16 there)."""
    if started == "bf16" and device_type == "cuda" and not bf16_native:
        return PrecisionChoice("fp32", "the run started in bf16, this GPU has none")
    return PrecisionChoice(started, "as the run started")


# -- the device and the probe (I/O) ------------------------------------------------------
def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16(cpu_flags())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def decide_precision(
    setting: PrecisionSetting, model: nn.Module, device: torch.device, batch_size: int,
    image_size: int, num_classes: int,
) -> PrecisionChoice:  # fmt: skip
    native = bf16_native(device)
    timings = None
    if needs_probe(setting, device.type, native, image_size):
        timings = probe(model, device, batch_size, image_size, num_classes)
    return choose_precision(setting, device.type, native, image_size, timings)


def probe(
    model: nn.Module, device: torch.device, batch_size: int, image_size: int, num_classes: int
) -> ProbeTimings:
    """Time forward and backward steps of a copy of ``model`` on random images of the run's
    size, in fp32 and bf16, interleaved. The batch is the run's, or the largest whose steps
    fit ``PROBE_SECONDS`` (bf16's gain grows a little with the batch: a smaller one errs
    towards fp32)."""
    # A copy: the run's weights and batch-norm statistics stay untouched; and the run's
    # random state too (dropout draws from it), so a seeded run trains as without the probe.
    with torch.random.fork_rng(devices=[]):
        probed = copy.deepcopy(model).train()
        started = time.perf_counter()

        def step(batch: int, amp: bool) -> float:
            return _step(probed, device, batch, image_size, num_classes, amp)

        step(2, amp=False)  # first-call set-up
        per_image = step(2, amp=False) / 2
        # A warm-up and the fewest timed steps per precision fit the budget (at fp32's speed).
        fewest, most = PROBE_ROUNDS
        batch = max(2, min(batch_size, int(PROBE_SECONDS / (2 + 2 * fewest) / per_image)))
        timings: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(1 + most):  # round 0 warms up each precision's kernels
            last = timings[False][-1:] + timings[True][-1:]
            if round_ > fewest and time.perf_counter() - started + sum(last) > PROBE_SECONDS:
                break  # another round only where the budget has room for it
            for amp in (False, True):  # interleaved: a neighbour's load hits both alike
                timings[amp].append(step(batch, amp))
        return ProbeTimings(fp32=min(timings[False][1:]), bf16=min(timings[True][1:]))


def _step(
    model: nn.Module, device: torch.device, batch: int, size: int, num_classes: int, amp: bool
) -> float:
    images = torch.randn(batch, 3, size, size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer.models import create_model
from trainer.precision import (
    PrecisionChoice,
    ProbeTimings,
    bf16_native,
    choose_precision,
    cpu_flags,
    cpu_has_bf16,
    decide_precision,
    needs_probe,
    resumed_precision,
)

CPU = torch.device("cpu")


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16(cpu_flags(cpuinfo))
    assert cpu_has_bf16({"amx_bf16"})
    assert not cpu_has_bf16({"avx2", "avx512f"})  # AVX-512 alone emulates bf16: slower
    assert cpu_flags(tmp_path / "missing") == set()


def test_a_cpu_probes_and_takes_bf16_only_where_clearly_faster() -> None:
    assert needs_probe("auto", "cpu", True, 224)
    faster = choose_precision("auto", "cpu", True, 224, ProbeTimings(fp32=2.0, bf16=1.0))
    assert faster == PrecisionChoice("bf16", "2.0× fp32 in a probe")
    assert str(faster) == "bf16: 2.0× fp32 in a probe"  # as the run's log shows it
    marginal = choose_precision("auto", "cpu", True, 224, ProbeTimings(fp32=1.1, bf16=1.0))
    assert marginal == PrecisionChoice("fp32", "bf16 was 1.10× fp32 in a probe")
    slower = choose_precision("auto", "cpu", True, 224, ProbeTimings(fp32=1.0, bf16=1.03))
    assert slower.precision == "fp32"


def test_without_native_bf16_or_with_small_images_a_cpu_trains_in_fp32_unprobed() -> None:
    assert not needs_probe("auto", "cpu", False, 224)
    assert choose_precision("auto", "cpu", False, 224) == PrecisionChoice(
        "fp32", "this CPU has no AMX or AVX-512 BF16"
    )
    assert not needs_probe("auto", "cpu", True, 16)
    for setting in ("auto", "bf16"):  # even when asked: bf16 gradients are NaN there
        tiny = choose_precision(setting, "cpu", True, 16)
        assert tiny.precision == "fp32" and "NaN" in tiny.reason


def test_the_setting_overrides_the_probe() -> None:
    assert not needs_probe("fp32", "cpu", True, 224) and not needs_probe("bf16", "cpu", True, 224)
    assert choose_precision("fp32", "cpu", True, 224) == PrecisionChoice("fp32", "PRECISION=fp32")
    assert choose_precision("bf16", "cpu", True, 224) == PrecisionChoice("bf16", "PRECISION=bf16")
    emulated = choose_precision("bf16", "cpu", False, 224)
    assert emulated.precision == "bf16" and "emulated" in emulated.reason
    assert choose_precision("fp32", "cuda", True, 224).precision == "fp32"


def test_cuda_takes_bf16_where_the_gpu_has_it_without_a_probe() -> None:
    assert not needs_probe("auto", "cuda", True, 224)
    assert choose_precision("auto", "cuda", True, 16) == PrecisionChoice("bf16", "the GPU has it")
    assert choose_precision("auto", "cuda", False, 224).precision == "fp32"
    assert choose_precision("bf16", "cuda", False, 224).precision == "fp32"  # autocast refuses


def test_a_resumed_run_keeps_its_precision_where_the_device_allows() -> None:
    assert resumed_precision("bf16", "cpu", True) == PrecisionChoice("bf16", "as the run started")
    assert resumed_precision("bf16", "cpu", False).precision == "bf16"  # emulated: same numerics
    assert resumed_precision("fp32", "cuda", True).precision == "fp32"
    assert resumed_precision("bf16", "cuda", False).precision == "fp32"


@pytest.mark.skipif(not bf16_native(CPU), reason="the probe runs on CPUs with native bf16")
def test_the_probe_leaves_the_model_and_the_random_state_as_they_were() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 3).to(memory_format=torch.channels_last)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.get_rng_state()

    choice = decide_precision("auto", model, CPU, batch_size=8, image_size=32, num_classes=3)

    assert choice.reason.endswith("fp32 in a probe")
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run trains as without it
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name  # batch-norm statistics too
    assert all(p.grad is None for p in model.parameters())

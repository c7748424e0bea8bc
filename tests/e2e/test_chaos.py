"""A short, seeded chaos run (benchmarks/chaos.py) on the one-machine stack: the real API,
trainer processes, Postgres and fake-gcs-server, each killed or cut off while runs train, and
a cancel among them; afterwards every invariant holds and nothing is left behind."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from benchmarks.chaos import FAULT_KINDS, FaultLimits, print_report, run_chaos

pytestmark = pytest.mark.slow

SEED = 7


def processes_of(folder: Path) -> list[str]:
    """Live processes that work in ``folder`` or name it (a trainer adopted by init after its
    API was killed, a database server that daemonized)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        with suppress(psutil.Error):
            command = " ".join(process.info["cmdline"] or [])
            if process.info["status"] != psutil.STATUS_ZOMBIE and (
                str(folder) in command or Path(process.cwd()).is_relative_to(folder)
            ):
                found.append(f"{process.pid}: {command}")
    return found


@pytest.mark.timeout(420)
def test_a_seeded_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    workdir = tmp_path / "chaos"

    report = run_chaos(
        SEED,
        runs=4,
        duration=80,
        workdir=workdir,
        settle=120,
        epochs=(3, 5),
        models=("mobilenet_v2",),
        limits=FaultLimits(
            api_kill=2, trainer_kill=1, trainer_term=2, store_outage=2, bucket_outage=2, cancel=1,
            outage_seconds=(2.0, 5.0), gap_seconds=(1.0, 3.0),
        ),  # fmt: skip
    )
    print_report(report, Console(width=140))  # shown when the test fails

    assert not report.violations, "\n".join(
        f"{v.invariant}: {v.subject}: {v.detail}" for v in report.violations
    )
    # Not vacuous: faults of every kind happened while runs trained, and every run ended.
    assert all(report.injected[kind] >= 1 for kind in FAULT_KINDS), report.injected
    assert sum(report.phases.values()) == 4
    # Nothing is left: no process of the run, no file in its folder.
    assert processes_of(tmp_path) == []
    assert list(workdir.iterdir()) == []

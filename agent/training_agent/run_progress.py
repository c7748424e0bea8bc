"""Following a run on the terminal: a progress bar fed by ``/agents/training/status`` answers,
until the run reaches a terminal phase. ``make demo`` and ``training-agent runs watch`` draw
the same bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from training_core.domain import TERMINAL_PHASES

Status = dict[str, Any]  # one /agents/training/status answer
TERMINAL_PHASE_NAMES = frozenset(phase.value for phase in TERMINAL_PHASES)


@dataclass(frozen=True)
class BarState:
    description: str  # the run's phase
    completed: int  # epochs done
    total: int
    detail: str
    finished: bool


def bar_state(status: Status, total_epochs: int | None = None) -> BarState:
    """What the bar shows for one status answer; ``total_epochs`` until the run says."""
    run = status.get("run") or {}
    progress = status.get("progress") or {}
    phase = run.get("phase", "Queued")
    return BarState(
        description=phase,
        completed=progress.get("epoch") or 0,
        total=progress.get("total_epochs") or run.get("epochs") or total_epochs or 1,
        detail=progress_detail(progress),
        finished=phase in TERMINAL_PHASE_NAMES,
    )


def progress_detail(progress: Mapping[str, Any]) -> str:
    parts = []
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.3f}")
    if progress.get("val_accuracy") is not None:
        parts.append(f"val acc {progress['val_accuracy']:.3f}")
    if progress.get("eta_seconds") is not None:
        parts.append(f"ETA {progress['eta_seconds']:.0f}s")
    return "  ".join(parts)


def follow_run(
    poll: Callable[[], Status | None],
    *,
    console: Console,
    total_epochs: int | None = None,
    timeout: float | None = None,
    interval: float = 0.5,
) -> Status:
    """Call ``poll`` and redraw the bar until the run ends; the last answer is returned.

    ``poll`` may answer None (a transient failure it chose to ride out): the bar stays as it
    was. ``TimeoutError`` after ``timeout`` seconds (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("Queued", total=total_epochs or 1, detail="")
        while True:
            status = poll()
            if status is not None:
                state = bar_state(status, total_epochs)
                bar.update(
                    task,
                    completed=state.completed,
                    total=state.total,
                    description=state.description,
                    detail=state.detail,
                )
                if state.finished:
                    return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the run did not finish in {timeout:.0f} s")
            time.sleep(interval)

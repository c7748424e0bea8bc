"""What a trainer process's end means, as pure decisions (the trainer's exit codes are
documented in the README, "Exit codes")."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import StrEnum

from training_core.lifecycle import EndSteps
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_OK, EXIT_RETRY

from training_api.launchers.local.process import TrainerProcess


class ExitAction(StrEnum):
    RECORDED = "recorded"  # the trainer wrote its outcome (0 or 65); check nothing is left active
    RETRY = "retry"  # interrupted: queue again, resume from the checkpoint
    FAIL = "fail"  # crashed or out of retries: the launcher records the failure
    IGNORE = "ignore"  # cancelled on purpose: the cancel request records it


def exit_action(
    returncode: int | None, *, cancelled: bool, retries: int, retry_limit: int
) -> ExitAction:
    """What to do when a trainer process ends (``returncode`` None: it vanished unseen)."""
    if cancelled:
        return ExitAction.IGNORE
    if returncode in (EXIT_OK, EXIT_DO_NOT_RETRY):
        return ExitAction.RECORDED
    # SIGTERM before the trainer's handler is in place (it imports torch first) ends it by
    # the signal itself: the same interruption as the exit code its handler gives.
    if returncode in (EXIT_RETRY, None, -signal.SIGTERM):
        return ExitAction.RETRY if retries < retry_limit else ExitAction.FAIL
    return ExitAction.FAIL


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the trainer process disappeared"
    if returncode < 0:
        return f"the trainer process was killed by {signal.Signals(-returncode).name}"
    return f"the trainer process exited with code {returncode}"


@dataclass
class TrainerExit:
    """A trainer's end, kept until the store has taken all of it (it may be down a while)."""

    process: TrainerProcess
    code: int | None
    action: ExitAction | None = None  # decided once: a retry counted twice is a retry lost
    recorded: EndSteps = field(default_factory=EndSteps)

"""SIGTERM (node preemption, cancel, ``kubectl delete pod``) and SIGINT ask the trainer to
stop: the flag is checked after every batch and between steps, so the current batch ends,
a checkpoint is written, and the program exits with ``EXIT_RETRY``."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """A stop was asked between steps, before training began."""


class StopFlag:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def __call__(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def raise_if_set(self) -> None:
        if self():
            raise StopRequested(self.reason)

    def install(self) -> StopFlag:
        """Route SIGTERM and SIGINT here (main thread only, as Python requires)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log.warning("%s received: stopping after the current batch", name)
        self.request(name)

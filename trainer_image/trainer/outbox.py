"""Store writes through an outage: a store that goes away mid-run delays the run's log
lines and progress, it does not end the run.

One background thread performs the writes in the order they were given, each retried
with a growing, jittered delay for as long as the store is unavailable. Training never
waits for it, except at :meth:`Outbox.flush`, which the run's final writes call first so
that the log reads in order. Progress updates coalesce (only the newest one is worth
sending), and log lines beyond a bound are dropped with a warning rather than held in
memory for ever. The writes a run cannot go on without (its start, its outcome) wait
for the store in :func:`retry_through_outage`, for as long as ``STORE_RETRY_SECONDS``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from training_core.errors import StoreUnavailable

log = logging.getLogger("trainer")

MAX_PENDING = 1000  # writes held during an outage: a few per epoch, so hours of training
FIRST_DELAY, MAX_DELAY = 0.5, 10.0
T = TypeVar("T")


def backoff(tries: int) -> float:
    """Seconds to wait after the ``tries``-th failure: doubling, capped, jittered."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)


def retry_through_outage(
    call: Callable[[], T], seconds: float, stopping: Callable[[], bool] = lambda: False
) -> T:
    """``call``, retried while the store is unavailable, for up to ``seconds``; a stop request
    (SIGTERM) ends the wait early. What finally escapes is ``StoreUnavailable``."""
    deadline = time.monotonic() + seconds
    tries = 0
    while True:
        try:
            return call()
        except StoreUnavailable as error:
            tries += 1
            delay = backoff(tries)
            if stopping() or time.monotonic() + delay > deadline:
                raise
            if tries == 1:
                log.warning("the store is unavailable (%s): retrying for up to %.0f s", error, seconds)
            time.sleep(delay)


@dataclass
class _Write:
    # ``retry`` is False on the first try: a retried insert may check whether the failed
    # attempt reached the store after all (its answer lost on the way back).
    perform: Callable[[bool], None]
    key: str | None  # writes with the same key supersede each other while pending
    tries: int = 0


class Outbox:
    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        self._on_error = on_error  # a write refused for good (not an outage): e.g. run ended
        self._pending: deque[_Write] = deque()
        self._busy = False
        self._closed = False
        self._dropped = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="store-outbox", daemon=True)
        self._thread.start()

    def put(self, perform: Callable[[bool], None], key: str | None = None) -> None:
        with self._changed:
            if key is not None:
                in_flight = self._pending[0] if self._busy and self._pending else None
                for write in self._pending:
                    if write.key == key and write is not in_flight:
                        write.perform = perform  # still waiting: send the newest instead
                        return
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(_Write(perform, key))
            self._changed.notify_all()

    def flush(self, timeout: float) -> None:
        """Wait until every write is done; ``StoreUnavailable`` if the store stays away."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"{len(self._pending)} writes still waiting for the store after {timeout:.0f} s"
                    )
                self._changed.wait(left)
            if self._dropped:
                log.warning("%d log lines were dropped during a long store outage", self._dropped)
                self._dropped = 0

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=5)

    def _drain(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return  # closed and done
                write = self._pending[0]
                self._busy = True
            done = self._attempt(write)
            with self._changed:
                if done and self._pending and self._pending[0] is write:
                    self._pending.popleft()
                self._busy = False
                self._changed.notify_all()
                if not done and self._closed:
                    return  # the program is exiting: what is left goes unsent
            if not done:
                self._back_off(write.tries)

    def _attempt(self, write: _Write) -> bool:
        """Perform one write; ``False``: the store is unavailable, try it again later."""
        try:
            write.perform(write.tries > 0)
        except StoreUnavailable as error:
            write.tries += 1
            if write.tries == 1:
                log.warning("the store is unavailable (%s): retrying in the background", error)
            return False
        except Exception as error:  # noqa: BLE001 - reported to the tracker, never retried
            self._on_error(error)
        else:
            if write.tries:
                log.info("the store is back after %d retries", write.tries)
        return True

    def _back_off(self, tries: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._closed, timeout=backoff(tries))

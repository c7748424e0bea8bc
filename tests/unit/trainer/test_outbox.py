"""The outbox keeps a run's store writes in order through an outage, sends each once, and
says when the store stays away longer than the caller can wait."""

from __future__ import annotations

import threading

import pytest
from trainer import outbox
from trainer.outbox import Outbox, retry_through_outage
from training_core.errors import InvalidState, StoreUnavailable


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(outbox, "MAX_DELAY", 0.02)


class FlakyStore:
    """Refuses writes while ``down``; records what it accepted and whether it was a retry."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.accepted: list[tuple[str, bool]] = []

    def write(self, value: str):
        def perform(retry: bool) -> None:
            if self.down.is_set():
                raise StoreUnavailable("database unreachable")
            self.accepted.append((value, retry))

        return perform


def test_writes_wait_out_an_outage_in_order() -> None:
    store, refused = FlakyStore(), []
    box = Outbox(on_error=refused.append)
    store.down.set()
    for value in ("a", "b", "c"):
        box.put(store.write(value))
    with pytest.raises(StoreUnavailable, match="3 writes still waiting"):
        box.flush(timeout=0.2)
    store.down.clear()
    box.flush(timeout=5)
    assert store.accepted == [("a", True), ("b", False), ("c", False)]  # "a" met the outage
    assert refused == []
    box.close()


def test_pending_progress_is_superseded_by_the_newest() -> None:
    store = FlakyStore()
    box = Outbox(on_error=lambda error: None)
    store.down.set()
    box.put(store.write("log"))
    for epoch in range(1, 6):
        box.put(store.write(f"progress {epoch}"), key="progress")
    store.down.clear()
    box.flush(timeout=5)
    assert [value for value, _ in store.accepted] == ["log", "progress 5"]
    box.close()


def test_a_refused_write_is_reported_not_retried() -> None:
    refused: list[Exception] = []
    box = Outbox(on_error=refused.append)
    calls = []

    def ended(retry: bool) -> None:
        calls.append(retry)
        raise InvalidState("run", "r", ["Running"], "Cancelled")

    box.put(ended)
    box.flush(timeout=5)
    assert calls == [False] and isinstance(refused[0], InvalidState)
    box.close()


def test_a_long_outage_drops_the_oldest_beyond_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "MAX_PENDING", 3)
    store = FlakyStore()
    store.down.set()
    box = Outbox(on_error=lambda error: None)
    for value in "abcdef":
        box.put(store.write(value))
    store.down.clear()
    box.flush(timeout=5)
    accepted = [value for value, _ in store.accepted]
    assert accepted[-2:] == ["e", "f"] and len(accepted) <= 4  # the one in flight, then the newest
    box.close()


def test_retry_through_outage_returns_once_the_store_is_back() -> None:
    tries = []

    def call() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise StoreUnavailable("down")
        return "done"

    assert retry_through_outage(call, seconds=5) == "done" and len(tries) == 3


def test_retry_through_outage_gives_up_after_its_time_or_on_a_stop() -> None:
    def down() -> None:
        raise StoreUnavailable("down")

    with pytest.raises(StoreUnavailable):
        retry_through_outage(down, seconds=0.1)
    tries = []
    with pytest.raises(StoreUnavailable):
        retry_through_outage(lambda: tries.append(1) or down(), seconds=60, stopping=lambda: True)
    assert len(tries) == 1

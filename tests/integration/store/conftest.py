"""The store contract runs once per adapter, both over the same real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from training_core.store.base import Store

ADAPTER_FIXTURES = {"postgres": "pg_store", "supabase": "supabase_store"}


@pytest.fixture(params=sorted(ADAPTER_FIXTURES))
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(ADAPTER_FIXTURES[request.param])


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A direct connection to the test's database: what is really in the tables."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn

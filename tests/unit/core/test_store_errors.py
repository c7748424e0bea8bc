"""How a Postgres error reads, whichever adapter met it (both share this table)."""

from __future__ import annotations

import pytest

from training_core.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from training_core.store.common import error_for_sqlstate


def test_a_second_active_run_reads_as_a_conflict_in_words() -> None:
    error = error_for_sqlstate(
        "23505",
        'duplicate key value violates unique constraint "training_runs_one_active"',
        "Key (project_id)=(2b1c…) already exists.",
    )

    assert isinstance(error, Conflict)
    assert str(error) == "the project already has an active run"


def test_another_duplicate_keeps_the_database_detail() -> None:
    error = error_for_sqlstate("23505", "duplicate key", "Key (id)=(7) already exists.")

    assert isinstance(error, Conflict) and str(error) == "Key (id)=(7) already exists."


def test_a_missing_parent_names_the_record() -> None:
    detail = 'Key (project_id)=(6f0e0f3c-0000-4000-8000-000000000000) is not present in table "projects".'

    error = error_for_sqlstate("23503", "insert or update violates foreign key", detail)

    assert isinstance(error, NotFound)
    assert str(error) == "project 6f0e0f3c-0000-4000-8000-000000000000 not found"


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        ("22P02", InvalidInput, "refused the values"),  # invalid text representation
        ("23514", InvalidInput, "refused the values"),  # check violation
        ("57014", StoreUnavailable, "timed out"),  # statement timeout
        ("57P01", StoreUnavailable, "57P01"),  # administrator shutdown
        ("08006", StoreUnavailable, "08006"),  # connection failure
        ("42P01", StoreUnavailable, "42P01"),  # relation missing: schema not migrated
        (None, StoreUnavailable, "database error: "),
    ],
)
def test_other_errors_are_typed_by_their_class(code: str | None, kind: type, words: str) -> None:
    error = error_for_sqlstate(code, "the message")

    assert isinstance(error, kind)
    assert words in str(error)

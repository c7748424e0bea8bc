"""Apply ``supabase/migrations/*.sql`` to a Postgres database, in file-name order.

Every migration is written to be re-runnable ("if not exists"), and an advisory lock keeps
two processes (say, two API replicas starting together) from applying them at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

_LOCK_KEY = 0x7472_6169_6E  # "train"


def migrations_dir() -> Path:
    """``MIGRATIONS_DIR`` if set, else the repository's ``supabase/migrations``."""
    configured = os.environ.get("MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "supabase" / "migrations"


def migration_files(directory: Path | None = None) -> list[Path]:
    files = sorted((directory or migrations_dir()).glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations found in {directory or migrations_dir()}")
    return files


def apply_migrations(database_url: str, directory: Path | None = None) -> list[str]:
    """Apply every migration in one transaction; returns the file names applied."""
    files = migration_files(directory)
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        for path in files:
            conn.execute(path.read_text())  # type: ignore[arg-type]  # trusted, shipped SQL
    return [path.name for path in files]

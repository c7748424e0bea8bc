"""A trainer as a local process: its environment (the Job's contract), its process group,
its log file and the pid file that lets a restarted API find it again."""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pydantic import SecretStr
from training_core.runspec import RunSpec
from training_core.settings import Settings

SAFE_RUN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Settings the trainer must not see: the API's own secrets.
PRIVATE_SETTINGS = frozenset({"api_tokens"})
LOG_FILE, PID_FILE = "trainer.log", "pid"


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, as a Job's ConfigMap and Secret carry them."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name in PRIVATE_SETTINGS or value is None:
            continue
        env[name.upper()] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_env_value(item) for item in value)
    return str(value)


def trainer_env(settings: Settings, spec: RunSpec) -> dict[str, str]:
    """This process's environment (less the API's secrets), the settings and the run's spec."""
    inherited = {k: v for k, v in os.environ.items() if k.lower() not in PRIVATE_SETTINGS}
    return {**inherited, **settings_env(settings), **spec.to_env(), "PYTHONUNBUFFERED": "1"}


def alive(pid: int, created: float | None) -> bool:
    """The process exists and is the one we started (a reused pid has another start time)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            created is None or abs(process.create_time() - created) < 0.05
        )
    except psutil.Error:
        return False


@dataclass
class TrainerProcess:
    spec: RunSpec
    pid: int
    process: subprocess.Popen[bytes] | None = None  # None: adopted after a restart
    created: float | None = None
    kill_at: float | None = None  # set by cancel: SIGKILL if still alive then

    @classmethod
    def spawn(
        cls, command: list[str], env: dict[str, str], spec: RunSpec, run_dir: Path
    ) -> TrainerProcess:
        """Start the trainer in its own process group (cancel reaches its workers), its output
        in ``<run_dir>/trainer.log``, its pid and start time in ``<run_dir>/pid``."""
        run_dir.mkdir(exist_ok=True, mode=0o700)
        with (run_dir / LOG_FILE).open("ab") as output:
            process = subprocess.Popen(  # noqa: S603 - a fixed command, no shell
                command,
                env=env,
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        created = psutil.Process(process.pid).create_time()
        (run_dir / PID_FILE).write_text(f"{process.pid} {created}\n")
        return cls(spec=spec, pid=process.pid, process=process, created=created)

    @classmethod
    def adopt(cls, spec: RunSpec, run_dir: Path) -> TrainerProcess | None:
        """The trainer a previous API process started for this run, if it is still alive."""
        try:
            pid, created = (run_dir / PID_FILE).read_text().split()
            found = cls(spec=spec, pid=int(pid), created=float(created))
        except (OSError, ValueError):
            return None
        return found if alive(found.pid, found.created) else None

    def returncode(self) -> tuple[bool, int | None]:
        """``(ended, code)``; an adopted process is not ours to wait for, so its code is unknown."""
        if self.process is not None:
            code = self.process.poll()
            return code is not None, code
        return not alive(self.pid, self.created), None

    def signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.pid, signum)

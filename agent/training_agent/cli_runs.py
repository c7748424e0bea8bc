"""``training-agent runs``: start, follow, inspect and cancel a project's training run over
the HTTP API, as the platform does.

Exit codes: 0 done (``watch``: the run Succeeded), 1 the API refused or did not answer
(``watch``: the run Failed or was Cancelled), 2 a usage error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer

from training_agent.api_client import ApiRefused, ApiUnreachable, TrainingApi
from training_agent.localstack import local_home
from training_agent.run_progress import TERMINAL_PHASE_NAMES, Status, follow_run, progress_detail

DEFAULT_URL = "http://127.0.0.1:8000"  # where `training-agent serve --local` listens
RIDE_OUT_SECONDS = 60.0  # how long `watch` waits out an API that is briefly away

runs_app = typer.Typer(
    help="Start, follow and cancel training runs over the HTTP API.", no_args_is_help=True
)


def _project_id(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a project id (a UUID)") from None


ProjectId = Annotated[str, typer.Argument(help="The project's id.", callback=_project_id)]
Url = Annotated[str, typer.Option("--url", envvar="TRAINING_AGENT_URL", help="The API's address.")]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="TRAINING_AGENT_TOKEN",
        show_default=False,
        help="Bearer token (a file is safer: other users can see command lines).",
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(help="File holding the token. Default: the local stack's <home>/api-token."),
]


@runs_app.command("start")
def start(
    project_id: ProjectId,
    url: Url = DEFAULT_URL,
    token: Token = None,
    token_file: TokenFile = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then follow it (`runs watch`).")] = False,
) -> None:
    """Start training a project (its active run is returned if it has one)."""
    with _api(url, token, token_file) as api:
        answer = api.start(project_id)
        typer.echo(f"{answer['message']} (run {answer['run_id']})")
        if answer.get("model_url"):
            typer.echo(f"  model  {answer['model_url']}")
        if watch:
            raise typer.Exit(_watch(api, project_id, timeout=None))
        typer.echo(f"  follow training-agent runs watch {project_id}")


@runs_app.command("status")
def status(
    project_id: ProjectId,
    url: Url = DEFAULT_URL,
    token: Token = None,
    token_file: TokenFile = None,
    logs: Annotated[int, typer.Option(min=0, help="Newest agent_logs lines to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer, as is.")] = False,
) -> None:
    """A project's status, its latest run's phase and progress, and its newest log lines."""
    with _api(url, token, token_file) as api:
        answer = api.status(project_id, logs=logs)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    for line in status_lines(answer):
        typer.echo(line)


@runs_app.command("cancel")
def cancel(
    project_id: ProjectId, url: Url = DEFAULT_URL, token: Token = None, token_file: TokenFile = None
) -> None:
    """Cancel a project's active run."""
    with _api(url, token, token_file) as api:
        answer = api.cancel(project_id)
    typer.echo(f"{answer['message']}; the project is {answer['project_status']}")


@runs_app.command("watch")
def watch(
    project_id: ProjectId,
    url: Url = DEFAULT_URL,
    token: Token = None,
    token_file: TokenFile = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Give up after this many seconds (exit 1).")
    ] = None,
) -> None:
    """Follow a project's latest run until it ends: exit 0 if it Succeeded, 1 if not."""
    with _api(url, token, token_file) as api:
        raise typer.Exit(_watch(api, project_id, timeout))


# -- decisions -------------------------------------------------------------------------------
def status_lines(answer: Status) -> list[str]:
    """``runs status`` for people: the project, its latest run, newest log lines last."""
    run = answer.get("run")
    lines = [f"project  {answer['project_id']}  {answer['project_status']}"]
    if run is None:
        return [*lines, "run      none yet"]
    progress = answer.get("progress") or {}
    total = progress.get("total_epochs") or run.get("epochs")
    epochs = f"epoch {progress.get('epoch') or 0}/{total}"
    detail = progress_detail(progress) if run["phase"] not in TERMINAL_PHASE_NAMES else ""
    lines.append(f"run      {run['name']}  {run['phase']}  {epochs}  {detail}".rstrip())
    lines += outcome_lines(answer)
    for entry in reversed(answer.get("logs") or []):
        lines.append(f"  {entry.get('created_at', '')}  {entry.get('message', '')}")
    return lines


def outcome_lines(answer: Status) -> list[str]:
    run = answer.get("run") or {}
    lines = []
    if answer.get("model_url"):
        lines.append(f"model    {answer['model_url']}")
    accuracy = (answer.get("progress") or {}).get("val_accuracy")
    if run.get("phase") == "Succeeded" and accuracy is not None:
        lines.append(f"val acc  {accuracy:.3f}")
    if run.get("error"):
        lines.append(f"error    {run['error']}")
    return lines


def riding_out(
    fetch: Callable[[], Status],
    patience: float = RIDE_OUT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], Status | None]:
    """``fetch``, answering None while the API is briefly away (not answering, 429, 503) for
    up to ``patience`` seconds in a row; past that, or on any other refusal, its error."""
    away_since: float | None = None

    def poll() -> Status | None:
        nonlocal away_since
        try:
            answer = fetch()
        except (ApiUnreachable, ApiRefused) as error:
            if isinstance(error, ApiRefused) and not error.transient:
                raise
            away_since = clock() if away_since is None else away_since
            if clock() - away_since > patience:
                raise
            return None
        away_since = None
        return answer

    return poll


# -- edges -----------------------------------------------------------------------------------
def read_token(token: str | None, token_file: Path | None, default_file: Path) -> str | None:
    """The token given, else the named file's, else the local stack's file if there is one."""
    if token:
        return token
    path = token_file or default_file
    if token_file is None and not path.is_file():
        return None  # an API run with --insecure needs none; any other answers 401
    try:
        return path.read_text().strip() or None
    except OSError as error:
        problem = f"cannot read {path}: {error.strerror}"
        raise typer.BadParameter(problem, param_hint="--token-file") from None


@contextmanager
def _api(url: str, token: str | None, token_file: Path | None) -> Iterator[TrainingApi]:
    """A client; a refusal or a silent API ends the command with exit code 1 and one line."""
    api = TrainingApi(url, read_token(token, token_file, local_home() / "api-token"))
    try:
        yield api
    except ApiRefused as error:
        typer.secho(f"{error.code}: {error.message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    except ApiUnreachable as error:
        typer.secho(f"{error} (is `training-agent serve` running?)", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    finally:
        api.close()


def _watch(api: TrainingApi, project_id: str, timeout: float | None) -> int:
    from rich.console import Console

    if api.status(project_id, logs=0).get("run") is None:
        hint = f"the project has no run yet: training-agent runs start {project_id}"
        typer.secho(hint, err=True, fg=typer.colors.RED)
        return 1
    console = Console()
    poll = riding_out(lambda: api.status(project_id, logs=0))
    try:
        final = follow_run(poll, console=console, timeout=timeout)
    except TimeoutError as error:
        typer.secho(str(error), err=True, fg=typer.colors.RED)
        return 1
    phase = final["run"]["phase"]
    console.print(f"[bold {'green' if phase == 'Succeeded' else 'red'}]{phase}[/]")
    for line in outcome_lines(final):
        console.print(f"  {line}", markup=False, highlight=False)
    return 0 if phase == "Succeeded" else 1

"""``training-agent projects``: register a project and its dataset as the platform does, and
list projects, through the store the API uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training_core.runspec import EXIT_DO_NOT_RETRY, SUPPORTED_MODELS

if TYPE_CHECKING:
    from training_core.domain import Project
    from training_agent.registration import Registered
    from training_core.runspec import TrainingMetadata
    from training_core.settings import Settings
    from training_core.store import Store

# The trainer's architectures, as a choice the command line checks and lists in --help.
Model = StrEnum("Model", {name: name for name in SUPPORTED_MODELS})

projects_app = typer.Typer(
    help="Projects and their datasets, registered as the platform does.", no_args_is_help=True
)

LocalOption = Annotated[
    bool,
    typer.Option(
        "--local/--no-local",
        help="Use the local stack under TRAINING_AGENT_HOME (default ./.local), starting its "
        "database if it is not running. --no-local: the store and bucket the environment sets.",
    ),
]
DATASET_HELP = (
    "ImageFolder zip/tar (train/, val/, optional test/): a local path, checked and copied into "
    "the bucket's raw/, or a gs:// URL (file:// with a folder bucket)."
)
PRETRAINED_HELP = "Start from ImageNet weights (read from the trainer's torch hub cache)."


@projects_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="The project's name.")],
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)],
    model: Annotated[Model | None, typer.Option(help="Default: DEFAULT_MODEL.")] = None,
    epochs: Annotated[int | None, typer.Option(help="At most MAX_EPOCHS.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="At most MAX_BATCH_SIZE.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained/--no-pretrained", help=PRETRAINED_HELP)
    ] = False,
    local: LocalOption = True,
) -> None:
    """Register a project, ready to train, and its dataset; prints the project's id.

    Options left out are the API's defaults (DEFAULT_EPOCHS, BATCH_SIZE, IMAGE_SIZE, …)."""
    from training_core.runspec import TrainingMetadata

    if not name.strip():
        raise typer.BadParameter("must not be empty", param_hint="--name")
    chosen = TrainingMetadata(
        model=model.value if model else None,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        image_size=image_size,
        pretrained=pretrained,
    )
    metadata = _metadata_or_usage_error(chosen)  # before anything starts
    with opened_store(local) as (settings, store):
        registered = _register_or_exit(name, dataset, metadata, settings, store)
    _announce(registered)
    typer.echo(registered.project.id)  # alone on stdout: ID=$(training-agent projects create …)


@projects_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for programs.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 50,
    local: LocalOption = True,
) -> None:
    """The newest projects: id, name, status, created."""
    with opened_store(local) as (_, store):
        projects = store.list_projects(limit)
    if as_json:
        typer.echo(json.dumps([project.model_dump(mode="json") for project in projects], indent=2))
    else:
        _print_table(projects)


@contextmanager
def opened_store(local: bool) -> Iterator[tuple[Settings, Store]]:
    """The settings and store the API uses: with ``local``, those of ``serve --local`` (the
    environment still wins), its database started if needed and stopped again after."""
    from training_agent.cli import settings_or_exit
    from training_agent.localstack import use_local_stack
    from training_core.store import open_store

    stack = use_local_stack() if local else None
    try:
        settings = settings_or_exit()
        store = open_store(settings)
        try:
            yield settings, store
        finally:
            store.close()
    finally:
        if stack is not None:
            stack.stop()  # only if this process started it


def _metadata_or_usage_error(chosen: TrainingMetadata) -> dict[str, Any]:
    from training_agent.cli import settings_or_exit
    from training_agent.registration import InvalidOption, training_metadata

    try:
        return training_metadata(chosen, settings_or_exit())
    except InvalidOption as error:
        option = f"--{error.option.replace('_', '-')}"
        raise typer.BadParameter(error.problem, param_hint=option) from None


def _register_or_exit(
    name: str, dataset: str, metadata: dict[str, Any], settings: Settings, store: Store
) -> Registered:
    from training_core.blobs import open_blob_store
    from training_core.errors import InvalidInput
    from training_agent.registration import register_project

    blobs = open_blob_store(settings)
    try:
        return register_project(
            name, dataset, metadata, settings=settings, store=store, blobs=blobs
        )
    except InvalidInput as error:
        typer.secho(f"Not registered: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_DO_NOT_RETRY) from None


def _announce(registered: Registered) -> None:
    project, dataset = registered.project, registered.dataset
    classes = f", {len(registered.classes)} classes" if registered.classes else ""
    typer.echo(
        f"Project {project.name} registered ({project.status}): {dataset.gcs_url}{classes}",
        err=True,
    )


def _print_table(projects: list[Project]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "status", "created", box=None, pad_edge=False)
    for project in projects:
        created = project.created_at.astimezone() if project.created_at else None
        when = created.strftime("%Y-%m-%d %H:%M:%S") if created else ""
        table.add_row(str(project.id), project.name, project.status, when)
    Console().print(table)

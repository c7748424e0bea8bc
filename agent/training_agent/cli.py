"""``training-agent``: one command line for every component."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from typing import Any

import typer

from training_agent.cli_projects import projects_app
from training_agent.cli_runs import runs_app
from training_core.errors import AgentError
from training_core.logs import setup_logging
from training_core.runspec import bounds_of, default_of
from training_core.settings import Settings, SettingsError, get_settings

app = typer.Typer(
    help="Training Agent: turn a project's image dataset into a trained PyTorch model.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(projects_app, name="projects")
app.add_typer(runs_app, name="runs")


def settings_or_exit() -> Settings:
    """Load settings; a bad one ends the program with one clear line (exit code 2)."""
    try:
        settings = get_settings()
    except SettingsError as error:
        typer.secho(str(error), err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, settings.log_format)
    return settings


@db_app.command("migrate")
def db_migrate() -> None:
    """Create the agent's tables (if absent) in DATABASE_URL."""
    from training_core.migrations import apply_migrations

    settings = settings_or_exit()
    if settings.database_url is None:
        typer.secho("DATABASE_URL is not set", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    try:
        applied = apply_migrations(settings.database_url.get_secret_value())
    except Exception as error:  # noqa: BLE001 - reported to the user, not swallowed
        typer.secho(f"migration failed: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    for name in applied:
        typer.echo(f"applied {name}")


def _bounded(name: str, **options: Any) -> Any:
    """An option for a run parameter: RunSpec's default and bounds."""
    bounds = bounds_of(name)
    return typer.Option(default_of(name), min=bounds.low, max=bounds.high, **options)


@app.command("train")
def train(
    dataset: str = typer.Option(..., help="ImageFolder zip/tar (train/, val/, optional test/): a path, gs:// or file:// URL"),
    model: str = typer.Option(default_of("model"), help="resnet18, resnet34, resnet50, mobilenet_v2, efficientnet_b0, …"),
    epochs: int = _bounded("epochs"),
    image_size: int = _bounded("image_size", help="Input size in pixels"),
    batch_size: int = _bounded("batch_size"),
    learning_rate: float = _bounded("learning_rate"),
    pretrained: bool = typer.Option(False, help="Start from ImageNet weights (from the local torch hub cache)"),
    seed: int | None = _bounded("seed", help="Make the run reproducible"),
    output: str = typer.Option("model-output", help="Folder for model.pth, its metrics and charts"),
    nproc: int = typer.Option(1, min=1, max=64, help="Training processes (gloo on a CPU)"),
) -> None:
    """Train a model on this machine, without the API or a database (the same trainer as a Job)."""
    from pathlib import Path

    from trainer.local import train_locally

    settings = settings_or_exit()
    code = train_locally(
        settings, dataset=dataset, output=Path(output), model=model, epochs=epochs,
        image_size=image_size, batch_size=batch_size, learning_rate=learning_rate,
        pretrained=pretrained, seed=seed, processes=nproc,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command("check-dataset")
def check_dataset(
    source: str = typer.Argument(..., help="ImageFolder zip/tar or folder: path or blob URL"),
    num_classes: int | None = typer.Option(None, min=1, help="Classes the project expects"),
    val_split: float | None = typer.Option(None, help="Carve val/ from train/ (0-1) if absent"),
) -> None:
    """Check a dataset as a training run would: safe extraction, layout, every image."""
    import tempfile

    from training_agent.dataset_report import print_description
    from training_core.errors import InvalidInput
    from training_core.intake import intake_dataset
    from training_core.runspec import EXIT_DO_NOT_RETRY

    settings = settings_or_exit()
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.scratch_dir, prefix="check-") as workdir:
        try:
            dataset = intake_dataset(
                source, Path(workdir), settings, expected_num_classes=num_classes, val_split=val_split
            )
        except InvalidInput as error:
            typer.secho(f"Dataset refused: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_DO_NOT_RETRY) from None
        print_description(dataset)


@app.command()
def demo(
    epochs: int = typer.Option(5, min=1, max=50, help="Epochs to train."),
    model: str = typer.Option("resnet18", help="Architecture to fine-tune."),
    image_size: int = typer.Option(32, min=16, max=224, help="Input size in pixels."),
    home: Path | None = typer.Option(None, help="State folder (default: TRAINING_AGENT_HOME or ./.local)."),
) -> None:
    """Train a real model end to end on this machine, over the HTTP API."""
    from training_agent.demo import run_demo

    setup_logging("WARNING")
    result = run_demo(home=home, model=model, epochs=epochs, image_size=image_size)
    raise typer.Exit(0 if result.phase == "Succeeded" else 1)


def page_url(host: str, port: int) -> str:
    """The web page's address as a browser on this machine opens it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui/"


@app.command()
def serve(
    local: bool = typer.Option(
        False, "--local", help="On this machine: embedded Postgres, folder bucket, trainer processes."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in a container)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    insecure: bool = typer.Option(
        False, "--insecure", help="Accept requests without a token when API_TOKENS is empty."
    ),
) -> None:
    """Serve the HTTP API (start, status and cancel training runs)."""
    from training_api import server
    from training_agent.localstack import use_local_stack

    stack = use_local_stack() if local else None
    if stack is not None:
        typer.echo(f"Local stack ready; the API token is in {stack.token_file}", err=True)
        # uvicorn re-raises SIGTERM once it has shut down; as an exception it lets the
        # database this process started be stopped on the way out.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    settings = settings_or_exit()
    if stack is not None:
        typer.echo(f"Watch runs at {page_url(host, port)} (it asks for that token)", err=True)
    try:
        server.run(settings, host=host, port=port, insecure=insecure)
    except SettingsError as error:
        typer.secho(str(error), err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    finally:
        if stack is not None:
            stack.stop()


@app.command()
def operator() -> None:
    """Run the Kubernetes operator: TrainingRuns become GPU Jobs (liveness on /healthz)."""
    from pydantic import ValidationError

    from training_operator.config import OperatorConfig
    from training_operator.handlers import run

    settings_or_exit()
    try:
        config = OperatorConfig()
    except ValidationError as error:
        names = ", ".join("OPERATOR_" + str(e["loc"][0]).upper() for e in error.errors())
        typer.secho(f"Invalid operator settings: {names}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    run(config)


def main() -> None:
    try:
        app()
    except AgentError as error:
        typer.secho(str(error), err=True, fg=typer.colors.RED)
        sys.exit(1)


"""``training-agent train``: a one-off training on this machine, without the API or a
database. The same workflow as a Job's run; progress goes to the console and the model,
its metrics and charts (and, while it trains, its checkpoints) to an output folder.

The run's identity is derived from its inputs, so the same command run again resumes an
interrupted training (with as many processes as then asked), and does nothing once the model
is there. ``processes`` above one trains with that many processes (gloo on a CPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from uuid import NAMESPACE_URL, uuid5

from rich.console import Console
from training_core.blobs import open_blob_store
from training_core.runspec import Resources, RunSpec
from training_core.settings import Settings

from trainer.interrupt import StopFlag
from trainer.main import CONSOLE_ENV, lead_group
from trainer.tracking import ConsoleTracker
from trainer.workflow import TrainingWorkflow


def train_locally(
    settings: Settings,
    *,
    dataset: str,
    output: Path,
    model: str = "resnet18",
    epochs: int = 10,
    image_size: int = 224,
    batch_size: int = 32,
    learning_rate: float = 0.001,
    pretrained: bool = False,
    seed: int | None = None,
    processes: int = 1,
    console: Console | None = None,
) -> int:
    """Train and write ``<output>/model.pth``; returns the trainer's exit code."""
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    dataset = dataset if "://" in dataset else str(Path(dataset).resolve())
    identity = f"{dataset}|{model}|{epochs}|{image_size}|{batch_size}|{learning_rate}|{pretrained}|{seed}|{output}"
    run_id = uuid5(NAMESPACE_URL, identity)
    spec = RunSpec(
        run_id=run_id, run_name=f"local-{str(run_id)[:8]}", project_id=uuid5(NAMESPACE_URL, str(output)),
        dataset_url=dataset, model=model, model_url=f"file://{output}/model.pth", epochs=epochs,
        learning_rate=learning_rate, batch_size=batch_size, image_size=image_size,
        pretrained=pretrained, seed=seed, resources=Resources(gpu_count=0, processes=processes),
    )  # fmt: skip
    if spec.resources.world_size > 1:  # each process finds the run in its environment
        os.environ.update({**spec.to_env(), CONSOLE_ENV: output.name})
        return lead_group(spec, settings)
    tracker = ConsoleTracker(console or Console(), name=output.name)
    stop = StopFlag().install()
    workflow = TrainingWorkflow(
        spec, settings, open_blob_store(settings), tracker, stop, local_paths=True
    )
    return workflow.run()

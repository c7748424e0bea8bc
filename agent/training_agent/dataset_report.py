"""A dataset description as a person reads it (the ``check-dataset`` command)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from training_core.dataset import DatasetDescription


def print_description(dataset: DatasetDescription, console: Console | None = None) -> None:
    console = console or Console()
    splits = list(dataset.splits)
    table = Table(title=f"{dataset.num_classes} classes, images per split")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    for name in dataset.classes:
        table.add_row(name, *(str(dataset.splits[s].counts.get(name, 0)) for s in splits))
    table.add_row("total", *(str(dataset.splits[s].total) for s in splits), style="bold")
    console.print(table)
    (min_w, min_h), (max_w, max_h) = dataset.min_size, dataset.max_size
    console.print(f"Image sizes: width {min_w}-{max_w} px, height {min_h}-{max_h} px")
    if dataset.val_from_train:
        console.print("val: carved out of train/ (no val/ folder)")
    console.print("Dataset OK", style="green")

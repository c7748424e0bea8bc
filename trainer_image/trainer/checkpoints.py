"""Checkpoints in the bucket, next to the model they will become:
``<model_url>.checkpoints/<run_id>/step-<epochs>-<batches>.pt`` plus ``latest.json``,
a small pointer naming the newest complete checkpoint.

A checkpoint is written as a new object first and the pointer moved after it, so a crash
at any moment leaves the pointer naming a whole checkpoint. They are kept per run (a new
run never resumes another's) and deleted once the run has ended (succeeded or failed):
only an interrupted run has something to resume.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import torch
from training_core.blobs import BlobStore, delete_folder
from training_core.errors import BlobNotFound
from training_core.runspec import checkpoints_prefix

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, blobs: BlobStore, model_url: str, run_id: UUID | str, scratch: Path) -> None:
        self.blobs = blobs
        self.prefix = checkpoints_prefix(model_url, run_id)
        self.pointer = f"{self.prefix}/latest.json"
        self.scratch = scratch
        self._saved: str | None = None  # the newest object this process wrote and pointed at

    def save(self, state: dict[str, Any]) -> str:
        """Write ``state`` as a new object, then point ``latest.json`` at it.

        A position already saved by this process is not written again: nothing trained since
        (a stop asked during an epoch's end, just after its checkpoint), and on a Spot node's
        notice that second upload would spend seconds the pod does not have."""
        name = f"step-{state['epochs_done']:04d}-{state['position']['batches']:06d}.pt"
        url = f"{self.prefix}/{name}"
        if url == self._saved:
            return url
        local = self.scratch / name
        torch.save(state, local)
        try:
            self.blobs.upload(
                local, url, create_only=False, content_type="application/octet-stream"
            )
            self.blobs.verify_upload(local, url)
        finally:
            local.unlink(missing_ok=True)
        previous = self._latest_url()
        pointer = {
            "url": url, "epochs_done": state["epochs_done"], "position": state["position"], "seed": state["seed"],
        }  # fmt: skip
        self.blobs.write_bytes(
            self.pointer, json.dumps(pointer).encode(), content_type="application/json"
        )
        self._saved = url
        if previous and previous != url:
            self.blobs.delete(previous)
        return url

    def load_latest(self) -> dict[str, Any] | None:
        """The newest complete checkpoint, or ``None`` when this run has none."""
        url = self._latest_url()
        if url is None:
            return None
        local = self.scratch / "resume.pt"
        try:
            self.blobs.download(url, local)
            # weights_only: a checkpoint is data from a bucket; it must not be able to run code.
            return torch.load(local, map_location="cpu", weights_only=True)
        finally:
            local.unlink(missing_ok=True)

    def clear(self) -> None:
        self._saved = None
        delete_folder(self.blobs, self.prefix, empty_parents=1)  # and <model>.checkpoints/

    def latest_pointer(self) -> dict[str, Any] | None:
        try:
            pointer = json.loads(self.blobs.read_bytes(self.pointer))
        except BlobNotFound:
            return None
        return pointer if isinstance(pointer, dict) else None

    def _latest_url(self) -> str | None:
        pointer = self.latest_pointer()
        if pointer is None:
            return None
        url = pointer.get("url", "")
        if not url.startswith(f"{self.prefix}/"):  # a pointer may only name this run's objects
            log.warning("ignoring checkpoint pointer %s: it names %r", self.pointer, url)
            return None
        return url

"""The trainer: the program a training Job runs (``python -m trainer``).

It reads its run from the environment (:class:`training_core.runspec.RunSpec`), trains
the model and records the outcome. Its exit codes are in the README, "Exit codes".

Importing the package imports no torch: ``python -m trainer`` routes SIGTERM to its stop
flag first, so a pod stopped while torch loads still exits to be retried, not killed.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LoadedModel": "trainer.artifact",
    "load_model": "trainer.artifact",
    "create_model": "trainer.models",
    "get_supported_models": "trainer.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

"""The trainer: the program a training Job runs (``python -m trainer``).

It reads its run from the environment (:class:`training_core.runspec.RunSpec`), trains
the model and records the outcome. See :mod:`trainer.main` for the exit codes.
"""

from trainer.artifact import LoadedModel, load_model
from trainer.models import create_model, get_supported_models

__all__ = ["LoadedModel", "create_model", "get_supported_models", "load_model"]

"""The model factory: torchvision classifiers with their last layer sized to the dataset.

Weights come from a local file only — the torch hub cache (which the trainer image bakes
in) or a state_dict file the caller downloaded — never from the network at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn
from training_core.errors import InvalidInput
from training_core.runspec import MIN_CLASSES, SUPPORTED_MODELS

# ``"imagenet"``: torchvision's default ImageNet weights from the local hub cache;
# a ``Path``: a state_dict file (plain, or a model artifact of ours); ``None``: from scratch.
Weights = Literal["imagenet"] | Path | None


def get_supported_models() -> list[str]:
    return list(SUPPORTED_MODELS)


def create_model(name: str, num_classes: int, weights: Weights = None) -> nn.Module:
    """Build ``name`` with a fresh ``num_classes``-way last layer, on the CPU."""
    check_model_name(name)
    if num_classes < MIN_CLASSES:
        raise InvalidInput(f"a classifier needs at least {MIN_CLASSES} classes, got {num_classes}")
    model = torchvision.models.get_model(name, weights=None)
    state = None
    if weights == "imagenet":
        state = _load_state(cached_imagenet_weights(name))
    elif isinstance(weights, Path):
        state = _load_state(weights)
    if state is not None:
        _load_backbone(model, state, source=str(weights))
    _replace_head(model, num_classes)
    return model


def check_model_name(name: str) -> None:
    if name not in SUPPORTED_MODELS:
        raise InvalidInput(f"unsupported model '{name}'; supported: {', '.join(SUPPORTED_MODELS)}")


def cached_imagenet_weights(name: str) -> Path:
    """The hub-cache file of ``name``'s default ImageNet weights; a clear error if absent."""
    enum = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not path.is_file():
        raise InvalidInput(
            f"pretrained ImageNet weights for {name} are not available offline (looked for "
            f"{path}). Bake them into the trainer image (TORCH_HOME), give a weights URL "
            "(gs:// or file:// state_dict), or train from scratch with pretrained: false."
        )
    return path


def head(model: nn.Module) -> nn.Linear:
    """The last fully connected layer: the one that names the classes."""
    return _last_linear(model)[1]


def _replace_head(model: nn.Module, num_classes: int) -> None:
    name, old = _last_linear(model)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes))


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1]


def _load_state(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        # weights_only: a weights file is data; it must not be able to run code.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file reads the same to a user
        raise InvalidInput(f"cannot read weights file {path.name}: {error}") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # a model artifact of ours
    if not isinstance(loaded, Mapping):
        raise InvalidInput(f"weights file {path.name} holds no state_dict")
    return loaded


def _load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every layer but the head (replaced next, so its shape may differ)."""
    head_prefix = _last_linear(model)[0] + "."
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(head_prefix)}
    missing = [k for k in expected if k not in state]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or mismatched:
        raise InvalidInput(
            f"weights {Path(source).name} do not fit {type(model).__name__}: "
            f"{len(missing)} layers missing, {len(mismatched)} of another shape "
            f"(first: {(missing + mismatched)[0]})"
        )
    model.load_state_dict({k: state[k] for k in expected}, strict=False)

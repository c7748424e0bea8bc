"""The TrainingRun CustomResourceDefinition, loaded from ``crd.yaml`` beside this module."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from training_core.runspec import CRD_VERSION

CRD_PATH = Path(__file__).with_name("crd.yaml")


@cache
def _text() -> str:
    return CRD_PATH.read_text()


def crd() -> dict[str, Any]:
    """The CRD object (a fresh copy each call)."""
    return yaml.safe_load(_text())


def spec_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served version."""
    for version in crd()["spec"]["versions"]:
        if version["name"] == CRD_VERSION:
            return version["schema"]["openAPIV3Schema"]
    raise LookupError(f"crd.yaml serves no {CRD_VERSION}")

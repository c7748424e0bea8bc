"""Helm for the chart tests: lint and install (into a Kubernetes API mock) from Python 3.11.

helm-sdkpy bundles Helm as a library but needs Python >= 3.12, so it lives in a venv of its
own (``make helm-venv``) and runs helm_driver.py in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "training-agent"
DRIVER = Path(__file__).with_name("helm_driver.py")
HELM_PYTHON = Path(os.environ.get("HELM_SDK_PYTHON", REPO / ".venv" / "helm-sdk" / "bin" / "python"))

# Helm's lint severities.
LINT_WARNING = 2


class HelmError(Exception):
    """Helm refused the chart or its values; the message is Helm's own."""


def _run(request: dict[str, Any]) -> Any:
    if not HELM_PYTHON.is_file():
        raise RuntimeError(
            f"{HELM_PYTHON} is missing: run `make helm-venv` (Python >= 3.12 with helm-sdkpy), "
            "or point HELM_SDK_PYTHON at such an interpreter"
        )
    env = {**os.environ, "HELM_DRIVER": "memory", "HOME": request.pop("home")}
    done = subprocess.run(
        [str(HELM_PYTHON), str(DRIVER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm driver crashed ({done.returncode}): {done.stderr[-3000:]}")
    answer = json.loads(done.stdout)
    if "error" in answer:
        raise HelmError(answer["error"])
    return answer["result"]


def lint(chart: Path, workdir: Path) -> dict[str, Any]:
    return _run({"action": "lint", "chart": str(chart), "namespace": "default", "home": str(workdir)})


def install_release(
    values: dict[str, Any], kubeconfig: Path, namespace: str, release: str = "agent"
) -> dict[str, Any]:
    """Install the chart; returns Helm's release record (manifest, notes, status)."""
    return _run(
        {
            "action": "install",
            "chart": str(CHART),
            "release": release,
            "namespace": namespace,
            "values": values,
            "kubeconfig": str(kubeconfig),
            "home": str(kubeconfig.parent),
        }
    )


def install(
    values: dict[str, Any], kubeconfig: Path, namespace: str, release: str = "agent"
) -> list[dict[str, Any]]:
    """Install the chart; returns the rendered manifest's objects (CRDs excluded)."""
    manifest = install_release(values, kubeconfig, namespace, release)["manifest"]
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def chart_with_values(values: dict[str, Any], workdir: Path) -> Path:
    """A copy of the chart whose values.yaml is the defaults overlaid with ``values``
    (helm-sdkpy's lint takes no values of its own)."""
    copy = workdir / CHART.name
    shutil.copytree(CHART, copy)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    (copy / "values.yaml").write_text(yaml.safe_dump(deep_merge(defaults, values)))
    return copy


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged



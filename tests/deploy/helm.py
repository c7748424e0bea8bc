"""The real `helm` CLI for the chart tests: lint, template and install (built by
tools/go_tools.py into the tool cache; `make tools` builds it before the tests)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tools.go_tools import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "training-agent"
# What `helm template` is told of the cluster, as an install would learn it from the server.
TEMPLATE_KUBE_VERSION = "1.35.0"


class HelmError(Exception):
    """Helm refused the chart or its values; the message is Helm's own."""


def helm(*args: str, workdir: Path, kubeconfig: Path | None = None) -> str:
    """Run helm with its state (config, cache, release records) kept under ``workdir``."""
    env = {
        "HOME": str(workdir),
        "HELM_CONFIG_HOME": str(workdir / "helm-config"),
        "HELM_CACHE_HOME": str(workdir / "helm-cache"),
        "HELM_DATA_HOME": str(workdir / "helm-data"),
        "PATH": "/usr/bin:/bin",
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run(
        [str(binary("helm", "helm")), *args], capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )
    if done.returncode != 0:
        raise HelmError("\n".join(part.strip() for part in (done.stdout, done.stderr) if part.strip()))
    return done.stdout


def values_file(values: dict[str, Any], workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "values.json"
    path.write_text(json.dumps(values))
    return path


def lint(values: dict[str, Any], workdir: Path) -> str:
    """`helm lint --strict`: warnings fail it too; returns Helm's report."""
    return helm("lint", str(CHART), "--strict", "-f", str(values_file(values, workdir)), workdir=workdir)


def template(values: dict[str, Any], workdir: Path, namespace: str, release: str = "agent",
             api_versions: tuple[str, ...] = (), kube_version: str = TEMPLATE_KUBE_VERSION) -> list[dict[str, Any]]:
    """`helm template`: the objects an install of these values would create (CRDs excluded)."""
    args = ["template", release, str(CHART), "-n", namespace, "-f", str(values_file(values, workdir)),
            "--kube-version", kube_version]
    for api_version in api_versions:
        args += ["--api-versions", api_version]
    return _objects(helm(*args, workdir=workdir))


def install_release(
    values: dict[str, Any], kubeconfig: Path, namespace: str, release: str = "agent"
) -> dict[str, Any]:
    """`helm install`; returns Helm's release record (manifest, notes, status)."""
    workdir = kubeconfig.parent
    answer = helm(
        "install", release, str(CHART), "-n", namespace, "-f", str(values_file(values, workdir)),
        "-o", "json", workdir=workdir, kubeconfig=kubeconfig,
    )
    return json.loads(answer)


def install(
    values: dict[str, Any], kubeconfig: Path, namespace: str, release: str = "agent"
) -> list[dict[str, Any]]:
    """Install the chart; returns the rendered manifest's objects (CRDs excluded)."""
    return _objects(install_release(values, kubeconfig, namespace, release)["manifest"])


def uninstall(kubeconfig: Path, namespace: str, release: str = "agent") -> str:
    return helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s",
                workdir=kubeconfig.parent, kubeconfig=kubeconfig)


def _objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged

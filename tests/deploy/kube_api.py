"""A Kubernetes API server for the chart and RBAC tests: kmock's emulator in its own thread.

It serves every kind the chart installs (apps, RBAC, networking, policy, CRDs, and the
Prometheus Operator's ServiceMonitor when asked); Helm needs nothing more of it than to
store what it sends, so plain kmock does, unlike the operator's test cluster
(tests/fixtures/kube.py), which adds uids, versions and tables for kopf and kubectl.

kmock serves what its resources declare; two corrections make Helm and the official client
work with it (see TESTING.md): core ``/api/v1`` discovery names its group version ``v1``
(kmock says ``/v1``, and Helm then cannot map ConfigMap & co.), and ``/version`` reports the
Kubernetes version the chart is checked against.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import yaml
from kmock import ResourceInfo, resource

KUBERNETES_VERSION = (1, 32)
VERBS = frozenset({"create", "delete", "get", "list", "patch", "update", "watch"})

# (group, version, plural, kind, namespaced): every kind the chart creates, and TrainingRuns.
RESOURCES = [
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("", "v1", "secrets", "Secret", True),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "services", "Service", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("networking.k8s.io", "v1", "ingresses", "Ingress", True),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("training.automl.dev", "v1alpha1", "trainingruns", "TrainingRun", True),
]
SERVICE_MONITOR = ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True)


@dataclass
class KubeAPI:
    """A running API server: its URL, what it was asked and what it now stores."""

    url: str
    emulator: kmock.KubernetesEmulator
    loop: asyncio.AbstractEventLoop

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                    "contexts": [
                        {
                            "name": "test",
                            "context": {"cluster": "test", "user": "test", "namespace": namespace},
                        }
                    ],
                    "current-context": "test",
                }
            )
        )
        return path

    def objects(self) -> list[dict[str, Any]]:
        """Every object stored now, as the server would return it."""
        return [obj.raw for obj in self.emulator.objects.values() if not obj.deleted]

    def request_count(self) -> int:
        return len(list(self.emulator))

    def calls(self, since: int = 0) -> set[tuple[str, str, str]]:
        """(api group, resource, RBAC verb) of every request to a resource (from ``since``)."""
        return {
            (request.resource.group, _plural(request), _rbac_verb(request))
            for request in list(self.emulator)[since:]
            if request.resource is not None and request.resource.plural  # not discovery
        }


def _plural(request: Any) -> str:
    plural = request.resource.plural
    return f"{plural}/{request.subresource}" if request.subresource else plural


def _rbac_verb(request: Any) -> str:
    """The RBAC verb of an HTTP request, as the API server's authorizer names it."""
    method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
    if method == "GET":
        if str(request.params.get("watch", "")).lower() in ("1", "true"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]


def _core_discovery(resources: list[tuple[str, str, str, str, bool]]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "kind": kind,
                "namespaced": namespaced,
                "verbs": sorted(VERBS),
            }
            for group, _, plural, kind, namespaced in resources
            if group == ""
        ],
    }


@contextmanager
def running_kube_api(
    *, service_monitor_crd: bool = True, kubernetes_version: tuple[int, int] = KUBERNETES_VERSION
) -> Iterator[KubeAPI]:
    """Serve the API on 127.0.0.1 from a thread with its own event loop, until the block ends."""
    resources = RESOURCES + ([SERVICE_MONITOR] if service_monitor_crd else [])
    started: dict[str, Any] = {}
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            await _serve()
        except BaseException as error:  # reported to the waiting test, not lost in the thread
            started["error"] = error
            ready.set()
            raise

    async def _serve() -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for group, version, plural, kind, namespaced in resources:
                emulator.resources[resource(group, version, plural)] = ResourceInfo(
                    kind=kind, namespaced=namespaced, verbs=set(VERBS)
                )
            emulator["get /api/v1"] << _core_discovery(resources)
            major, minor = kubernetes_version
            emulator["get /version"] << {
                "major": str(major),
                "minor": str(minor),
                "gitVersion": f"v{major}.{minor}.0",
                "platform": "linux/amd64",
            }
            started.update(url=str(server.url).rstrip("/"), emulator=emulator)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the Kubernetes API mock did not start within 30 s")
    if "error" in started:
        raise RuntimeError(f"the Kubernetes API mock failed to start: {started['error']!r}")
    try:
        yield KubeAPI(url=started["url"], emulator=started["emulator"], loop=loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()

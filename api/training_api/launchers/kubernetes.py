"""``KubernetesLauncher``: a run becomes a TrainingRun custom resource.

The operator turns the resource into a GPU Job and reports back into its status and the
store. The resource is named after the run (``run_name(project, attempt)``), so a start
retried after a timeout finds the object the first try made instead of making a second.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from training_core.domain import Run
from training_api.launchers.base import Launcher, LauncherUnavailable
from training_core.runspec import CRD_GROUP, CRD_KIND, CRD_PLURAL, CRD_VERSION, RunSpec

log = logging.getLogger(__name__)


def training_run_resource(spec: RunSpec, namespace: str) -> dict[str, Any]:
    """The TrainingRun object for a run (pure: tested without an API server)."""
    return {
        "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}",
        "kind": CRD_KIND,
        "metadata": {
            "name": spec.run_name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "training-agent",
                **spec.labels(),
            },
        },
        "spec": spec.to_resource_spec(),
    }


def default_api_client() -> client.ApiClient:
    """In a pod: the service account; elsewhere: the current kubeconfig context."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config()


class KubernetesLauncher(Launcher):
    def __init__(
        self,
        namespace: str,
        api_client: client.ApiClient | None = None,
        *,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._namespace = namespace
        self._api_client = api_client or default_api_client()
        self._api = client.CustomObjectsApi(self._api_client)
        self._timeout = timeout_seconds

    def _call(self, method: str, **kwargs: Any) -> Any:
        """One API call, with our namespace and timeout; transport failures become typed."""
        try:
            return getattr(self._api, method)(
                CRD_GROUP,
                CRD_VERSION,
                self._namespace,
                CRD_PLURAL,
                _request_timeout=self._timeout,
                **kwargs,
            )
        except (HTTPError, OSError) as error:
            raise LauncherUnavailable(f"Kubernetes API unreachable: {error}") from None

    def start(self, spec: RunSpec) -> None:
        body = training_run_resource(spec, self._namespace)
        try:
            # Strict: a field the CRD does not know is refused, not silently pruned.
            self._call("create_namespaced_custom_object", body=body, field_validation="Strict")
        except ApiException as error:
            if error.status != 409:
                raise LauncherUnavailable(_describe("create", spec.run_name, error)) from None
            existing = self.get(spec.run_name)
            if existing is None or existing.get("spec", {}).get("runId") != str(spec.run_id):
                raise LauncherUnavailable(
                    f"TrainingRun {spec.run_name} exists but belongs to another run"
                ) from None
            log.info("TrainingRun %s already exists; using it", spec.run_name)
            return
        log.info("created TrainingRun %s/%s", self._namespace, spec.run_name)

    def cancel(self, run: Run) -> None:
        """Delete the TrainingRun: the operator marks the run cancelled, the Job goes with it."""
        try:
            self._call("delete_namespaced_custom_object", name=run.name)
        except ApiException as error:
            if error.status != 404:
                raise LauncherUnavailable(_describe("delete", run.name, error)) from None
        log.info("deleted TrainingRun %s/%s", self._namespace, run.name)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("get_namespaced_custom_object", name=name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise LauncherUnavailable(_describe("read", name, error)) from None

    def describe(self, run: Run) -> dict[str, Any] | None:
        found = self.get(run.name)
        return None if found is None else {"name": run.name, "status": found.get("status", {})}

    def ping(self) -> None:
        """The API answers and lets us list TrainingRuns (CRD installed, RBAC granted)."""
        try:
            self._call("list_namespaced_custom_object", limit=1)
        except ApiException as error:
            raise LauncherUnavailable(_describe("list", CRD_PLURAL, error)) from None

    def close(self) -> None:
        self._api_client.close()


def _describe(action: str, name: str, error: ApiException) -> str:
    return f"Kubernetes refused to {action} TrainingRun {name}: {error.status} {error.reason}"

"""Thin Kubernetes access for the handlers: configuration, Jobs, Services, pods, TrainingRuns.

Only create, get, list, patch and delete are used (no replace, no server-side apply), so the
operator needs few permissions and runs against any conforming API server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from training_core.runspec import CRD_GROUP, CRD_PLURAL, CRD_VERSION

from training_operator.job_status import pods_of
from training_operator.manifests import LABEL_RUN

MERGE_PATCH = "application/merge-patch+json"
USER_AGENT = "training-agent-operator"


def load_configuration() -> client.Configuration:
    """In-cluster credentials in a pod; otherwise ``$KUBECONFIG`` (read now, not at import)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return configuration


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own watches and patches."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or ("Bearer" if token else None),
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Kube:
    """The few calls the operator makes, returning plain dicts."""

    def __init__(self, configuration: client.Configuration, pool_size: int = 16) -> None:
        configuration.connection_pool_maxsize = pool_size
        self.api = client.ApiClient(configuration)
        self.api.user_agent = USER_AGENT
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    # -- Jobs --------------------------------------------------------------------------
    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create the Job; ``None`` when it exists already (a repeated or resumed handler)."""
        return self._create(self.batch.create_namespaced_job, manifest)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(lambda: self.batch.read_namespaced_job(name, namespace))

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        return self._get(
            lambda: self.batch.patch_namespaced_job(
                name, namespace, patch, _content_type=MERGE_PATCH
            )
        )

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and (in the background) its pods."""
        self._get(
            lambda: self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background"
            )
        )

    # -- Services (a run on several nodes) ----------------------------------------------------
    def create_service(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create the Service; ``None`` when it exists already."""
        return self._create(self.core.create_namespaced_service, manifest)

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(lambda: self.core.read_namespaced_service(name, namespace))

    def delete_service(self, namespace: str, name: str) -> None:
        self._get(lambda: self.core.delete_namespaced_service(name, namespace))

    # -- pods --------------------------------------------------------------------------
    def run_pods(self, namespace: str, run_name: str) -> list[dict[str, Any]]:
        listing = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_RUN}={run_name}")
        # Filtered here as well: a selector is a server-side optimisation, not a guarantee.
        return pods_of(run_name, self._plain(listing).get("items") or [])

    # -- TrainingRuns ----------------------------------------------------------------------
    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(
            lambda: self.custom.get_namespaced_custom_object(
                CRD_GROUP, CRD_VERSION, namespace, CRD_PLURAL, name
            )
        )

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._get(
            lambda: self.custom.patch_namespaced_custom_object_status(
                CRD_GROUP,
                CRD_VERSION,
                namespace,
                CRD_PLURAL,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
            )
        )

    # -- Events ------------------------------------------------------------------------
    def post_event(self, target: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """An Event on ``target`` (``kubectl describe`` lists it)."""
        meta = target["metadata"]
        now = datetime.now(UTC)
        self.core.create_namespaced_event(
            meta["namespace"],
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{meta['name']}.{uuid4().hex[:16]}",
                    "namespace": meta["namespace"],
                },
                "involvedObject": {
                    "apiVersion": target.get("apiVersion"),
                    "kind": target.get("kind"),
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                },
                "type": kind,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": USER_AGENT},
                "reportingComponent": USER_AGENT,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )

    # -- plumbing ----------------------------------------------------------------------
    def _create(self, call: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The created object, or ``None`` when one of its name exists (HTTP 409)."""
        try:
            return self._plain(call(manifest["metadata"]["namespace"], manifest))
        except ApiException as error:
            if error.status == 409:
                return None
            raise

    def _get(self, call: Any) -> dict[str, Any] | None:
        """The object as a dict, or ``None`` when it is gone."""
        try:
            return self._plain(call())
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _plain(self, result: Any) -> dict[str, Any]:
        return result if isinstance(result, dict) else self.api.sanitize_for_serialization(result)

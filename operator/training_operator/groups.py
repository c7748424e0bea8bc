"""Runs of several training processes: the Kubernetes shapes they take (pure, like
:mod:`training_operator.manifests`, which composes them).

* One node, several GPUs: one pod; the trainer starts one process per GPU itself (torchrun),
  and those processes share batches and NCCL buffers through ``/dev/shm``, so its size limit
  grows with them.
* Several nodes: an Indexed Job, one pod per node. The Job controller names each pod's host
  ``<job>-<index>`` and gives it its index (``JOB_COMPLETION_INDEX``, the trainer's node
  rank); the pod template's ``subdomain`` is a headless Service selecting the run's pods, so
  cluster DNS resolves ``<job>-0.<service>``: node 0, where the trainer's rendezvous listens.
  Job and Service carry the run's name.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from training_core.runspec import EXIT_RETRY, Resources

RENDEZVOUS_PORT = "rendezvous"
# The Job controller's annotation (and label) holding an Indexed Job pod's index.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def is_group(resources: Resources) -> bool:
    return resources.nodes > 1


def shm_size(per_process: str, resources: Resources) -> str:
    """``/dev/shm`` for the pod's processes: ``per_process`` (e.g. ``2Gi``) times their number."""
    number, unit = _QUANTITY.match(per_process).groups()  # type: ignore[union-attr]
    return f"{Decimal(number) * resources.processes_per_node}{unit}"


def master_address(run_name: str) -> str:
    """Node 0's DNS name inside the run's namespace: ``<hostname>.<subdomain>``."""
    return f"{run_name}-0.{run_name}"


def indexed_job(job: Mapping[str, Any], nodes: int, port: int) -> dict[str, Any]:
    """The one-pod Job ``job`` as a group of ``nodes`` pods that train together."""
    group = copy.deepcopy(dict(job))
    name = group["metadata"]["name"]
    spec = group["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    spec["completionMode"] = "Indexed"
    spec["completions"] = spec["parallelism"] = nodes
    # A worker that dies takes its group down, and the group is made again from the last
    # checkpoint: each of its pods may count as a failure, so the limit is per node.
    spec["backoffLimit"] *= nodes
    spec["podFailurePolicy"]["rules"].append(
        # The peers of a worker that died (preempted, crashed) exit 75: only the worker itself
        # counts, so a preempted node (its pod is a DisruptionTarget) costs the group nothing.
        {
            "action": "Ignore",
            "onExitCodes": {
                "containerName": container["name"],
                "operator": "In",
                "values": [EXIT_RETRY],
            },
        }
    )
    pod["subdomain"] = name
    container["env"] += [
        {"name": "TRAINING_MASTER_ADDR", "value": master_address(name)},
        {"name": "TRAINING_MASTER_PORT", "value": str(port)},
    ]
    container["ports"] = [{"name": RENDEZVOUS_PORT, "containerPort": port, "protocol": "TCP"}]
    return group


def headless_service(
    metadata: Mapping[str, Any], selector: Mapping[str, str], port: int
) -> dict[str, Any]:
    """The Service that gives each pod of a group its DNS name (no virtual IP, no proxying)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(metadata),
        "spec": {
            "clusterIP": "None",
            "selector": dict(selector),
            # The peers meet while they start, before any of them is ready.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": RENDEZVOUS_PORT, "port": port, "targetPort": port, "protocol": "TCP"}
            ],
        },
    }


def completion_index(pod: Mapping[str, Any]) -> str | None:
    """The node a pod trains as (``None`` for the pod of a run on one node)."""
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX)

"""Every owner reference the operator writes is one its Role lets it write.

Under the OwnerReferencesPermissionEnforcement admission plugin, an owner reference with
blockOwnerDeletion is admitted only if the writer may update the owner's ``finalizers``
subresource; without it the Job create is refused with 403 on such clusters.
"""

from __future__ import annotations

import uuid
from typing import Any

from training_api.launchers.kubernetes import training_run_resource
from training_core.runspec import CRD_GROUP, CRD_KIND, CRD_PLURAL, RunSpec
from training_operator.config import OperatorConfig
from training_operator.manifests import job_manifest
from training_operator.permissions import allowed

PLURALS = {(CRD_GROUP, CRD_KIND): CRD_PLURAL}


def needed_grants(owner: dict[str, Any]) -> set[tuple[str, str, str]]:
    """What admission checks for one owner reference (group, resource, verb)."""
    if not owner.get("blockOwnerDeletion"):
        return set()
    group = owner["apiVersion"].rpartition("/")[0]
    return {(group, f"{PLURALS[(group, owner['kind'])]}/finalizers", "update")}


def test_the_jobs_owner_reference_is_permitted() -> None:
    project_id = uuid.uuid4()
    spec = RunSpec(
        run_id=uuid.uuid4(), run_name="train-1", project_id=project_id,
        dataset_url="gs://acme-datasets/raw/dataset.zip", model_url="gs://acme-datasets/models/m.pth",
    )
    run = training_run_resource(spec, "training")
    run["metadata"]["uid"] = str(uuid.uuid4())
    owners = job_manifest(run, OperatorConfig())["metadata"]["ownerReferences"]
    assert owners and all(owner["blockOwnerDeletion"] for owner in owners)
    needed = set().union(*(needed_grants(owner) for owner in owners))
    assert needed == {(CRD_GROUP, f"{CRD_PLURAL}/finalizers", "update")}
    assert {grant for grant in needed if not allowed(*grant)} == set()

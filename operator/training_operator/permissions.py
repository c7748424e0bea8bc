"""The RBAC rules the operator needs: every call it makes, what the API server's admission
checks on those calls, and nothing more.

The Helm chart's operator Role is tested against this list, and the operator's tests check
that every request it made is covered by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from training_core.runspec import CRD_GROUP, CRD_PLURAL


@dataclass(frozen=True)
class Rule:
    api_group: str
    resource: str
    verbs: frozenset[str]

    def allows(self, api_group: str, resource: str, verb: str) -> bool:
        return (api_group, resource) == (self.api_group, self.resource) and verb in self.verbs


CALL_PERMISSIONS: tuple[Rule, ...] = (
    # kopf lists and watches runs; handler progress and finalizers are patched on them.
    Rule(CRD_GROUP, CRD_PLURAL, frozenset({"get", "list", "watch", "patch"})),
    Rule(CRD_GROUP, f"{CRD_PLURAL}/status", frozenset({"patch"})),
    # One Job per run; suspend patches it, deletion removes it.
    Rule("batch", "jobs", frozenset({"create", "get", "list", "watch", "patch", "delete"})),
    # A run on several nodes: the headless Service its pods find each other through (a
    # restarted handler gets the one it made; deletion removes it).
    Rule("", "services", frozenset({"create", "get", "delete"})),
    # Pods tell running, preempted and unschedulable apart.
    Rule("", "pods", frozenset({"list", "watch"})),
    Rule("", "events", frozenset({"create"})),
)

# Checked by admission rather than called: a Job whose owner reference to its run sets
# blockOwnerDeletion (so a foreground delete of the run waits for the Job) is admitted only
# if its creator may update the run's finalizers (OwnerReferencesPermissionEnforcement).
ADMISSION_PERMISSIONS: tuple[Rule, ...] = (
    Rule(CRD_GROUP, f"{CRD_PLURAL}/finalizers", frozenset({"update"})),
)

REQUIRED_PERMISSIONS = CALL_PERMISSIONS + ADMISSION_PERMISSIONS


def allowed(api_group: str, resource: str, verb: str) -> bool:
    return any(rule.allows(api_group, resource, verb) for rule in REQUIRED_PERMISSIONS)


def as_rbac_rules() -> list[dict[str, list[str]]]:
    """The rules as a Role's ``rules`` list (verbs sorted)."""
    return [
        {"apiGroups": [rule.api_group], "resources": [rule.resource], "verbs": sorted(rule.verbs)}
        for rule in REQUIRED_PERMISSIONS
    ]

"""The operator's settings refuse bad values; its RBAC rules read as a Role."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from training_operator.config import OperatorConfig
from training_operator.permissions import allowed, as_rbac_rules


def test_namespaces_come_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_NAMESPACES", "training, research")
    assert OperatorConfig().namespaces == ["training", "research"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OPERATOR_NAMESPACES", "Bad_Namespace"),
        ("OPERATOR_SCRATCH_SIZE", "a lot"),
        ("OPERATOR_SECRET_NAME", "no/slashes"),
        ("OPERATOR_PENDING_TIMEOUT_SECONDS", "0"),
        ("OPERATOR_IMAGE_PULL_POLICY", "Sometimes"),
        ("OPERATOR_MASTER_PORT", "70000"),
    ],
)
def test_bad_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as error:
        OperatorConfig()
    assert name.removeprefix("OPERATOR_").lower() in str(error.value)


def test_rules_read_as_a_role() -> None:
    rules = as_rbac_rules()
    assert {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "delete", "get", "list", "patch", "watch"],
    } in rules
    assert allowed("", "events", "create") and not allowed("", "secrets", "get")
    assert allowed("", "services", "create") and not allowed("", "services", "list")
    assert not allowed("training.automl.dev", "trainingruns", "delete")

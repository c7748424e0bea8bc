"""The rules a real API server applies to a CRD's schema before it accepts the CRD
("Specifying a structural schema" in the Kubernetes docs, and the apiextensions validation of
the x-kubernetes-* extensions). Each problem is one line naming the schema path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
NOT_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable")


def problems(crd: dict[str, Any]) -> list[str]:
    found = []
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        found += list(_node(schema, f"{version['name']}:", root=True))
    return found


def _node(schema: dict[str, Any], path: str, root: bool = False) -> Iterator[str]:
    untyped_ok = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if not schema.get("type") and not untyped_ok:
        yield f"{path or '/'}: every node needs a type"
    if "properties" in schema and "additionalProperties" in schema:
        yield f"{path}: additionalProperties and properties are mutually exclusive"
    if schema.get("x-kubernetes-preserve-unknown-fields") is False:
        yield f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent"
    yield from _junctors(schema, path)
    yield from _list_type(schema, path)
    yield from _validations(schema, path)
    for name, child in schema.get("properties", {}).items():
        if root and name == "metadata":
            yield from _metadata(child, f"{path}/metadata")
        else:
            yield from _node(child, f"{path}/{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _node(schema["additionalProperties"], f"{path}/*")
    if "items" in schema:
        yield from _node(schema["items"], f"{path}[]")


def _metadata(schema: dict[str, Any], path: str) -> Iterator[str]:
    if schema.get("type") != "object":
        yield f"{path}: metadata must be of type object"
    extra = set(schema) - {"type", "properties", "description"}
    if extra:
        yield f"{path}: only metadata.name and metadata.generateName may be restricted, not {sorted(extra)}"
    unexpected = set(schema.get("properties", {})) - {"name", "generateName"}
    if unexpected:
        yield f"{path}: only metadata.name and metadata.generateName may be restricted, not {sorted(unexpected)}"


def _junctors(schema: dict[str, Any], path: str) -> Iterator[str]:
    for junctor in JUNCTORS:
        branches = schema.get(junctor, [])
        for branch in branches if isinstance(branches, list) else [branches]:
            for key in NOT_IN_JUNCTORS:
                if key in branch:
                    yield f"{path}/{junctor}: {key} is not allowed inside {junctor}"
            for name in branch.get("properties", {}):
                if name not in schema.get("properties", {}):
                    yield f"{path}/{junctor}: {name} must also be specified outside {junctor}"


def _list_type(schema: dict[str, Any], path: str) -> Iterator[str]:
    list_type = schema.get("x-kubernetes-list-type")
    keys = schema.get("x-kubernetes-list-map-keys")
    if list_type is None and keys is None:
        return
    if schema.get("type") != "array":
        yield f"{path}: x-kubernetes-list-type is only for arrays"
    if list_type not in ("atomic", "set", "map"):
        yield f"{path}: x-kubernetes-list-type must be atomic, set or map"
    if (list_type == "map") != bool(keys):
        yield f"{path}: x-kubernetes-list-map-keys goes with x-kubernetes-list-type map, and only with it"
    if list_type == "map":
        items = schema.get("items", {})
        for key in keys or []:
            field = items.get("properties", {}).get(key)
            if field is None or field.get("type") not in ("string", "integer", "number", "boolean"):
                yield f"{path}: map key {key} must be a scalar property of the items"
            elif key not in items.get("required", []) and "default" not in field:
                yield f"{path}: map key {key} must be required or have a default"


def _validations(schema: dict[str, Any], path: str) -> Iterator[str]:
    for rule in schema.get("x-kubernetes-validations", []):
        if not isinstance(rule.get("rule"), str) or not rule["rule"].strip():
            yield f"{path}: every x-kubernetes-validations entry needs a rule"

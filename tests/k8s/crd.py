"""A KubeRay CRD's OpenAPI v3 schema as a strict JSON Schema validator.

A CRD schema lets unknown fields through unless an object says otherwise; kubectl's strict
field validation refuses them. `strict` does the same to a schema: every object schema
that lists `properties` and says nothing of `additionalProperties` or
`x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`.

The CRD files are test data copied into tests/k8s/crds (its README says from where). A
missing one fails the test under CI=true, where it must be there, and skips it with the
path and where to get it anywhere else.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

CRDS = Path(__file__).resolve().parent / "crds"
RAYSERVICE_CRD = CRDS / "ray.io_rayservices.yaml"
RAYJOB_CRD = CRDS / "ray.io_rayjobs.yaml"

# Keywords whose value is one schema, or a list or map of schemas.
ONE_SCHEMA = ("items", "additionalProperties", "not")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_MAPS = ("properties", "patternProperties")
# KubeRay's CRDs, whence a missing file comes.
KUBERAY_CRDS = "ray-project/kuberay, tag v1.7.0, ray-operator/config/crd/bases/"


def in_ci() -> bool:
    """Whether this run is a CI job, where every test file must be present."""
    return os.environ.get("CI", "").lower() in {"true", "1"}


def require(crd: Path) -> Path:
    """`crd`, when the file is there; otherwise a failure under CI and a skip elsewhere."""
    if crd.is_file():
        return crd
    message = f"no CRD at {crd}: copy it from {KUBERAY_CRDS} (see {CRDS / 'README.md'})"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` that refuses fields it does not declare, at every depth."""
    closed = copy.deepcopy(schema)
    _close(closed)
    return closed


def _close(schema: dict[str, Any]) -> None:
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for keyword in ONE_SCHEMA:
        if isinstance(schema.get(keyword), dict):
            _close(schema[keyword])
    for keyword in SCHEMA_LISTS:
        for each in schema.get(keyword, ()):
            _close(each)
    for keyword in SCHEMA_MAPS:
        for each in schema.get(keyword, {}).values():
            _close(each)


@cache
def openapi_schema(crd: Path, version: str) -> dict[str, Any]:
    """The `openAPIV3Schema` of one served version of a CRD file."""
    text = require(crd).read_text()
    document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (served,) = [each for each in document["spec"]["versions"] if each["name"] == version]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def validator(crd: Path, version: str, *, strict_fields: bool = True) -> Draft4Validator:
    """A validator for objects of `crd` at `version` (OpenAPI v3.0 schemas are draft 4's
    dialect; the `x-kubernetes-*` extensions are ignored as unknown keywords)."""
    schema = openapi_schema(crd, version)
    return Draft4Validator(strict(schema) if strict_fields else schema)


def schema_errors(crd: Path, document: dict[str, Any], *, strict_fields: bool = True) -> list[str]:
    """Where and why `document` breaks `crd`'s v1 schema, one line each."""
    found = validator(crd, "v1", strict_fields=strict_fields).iter_errors(document)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in found]


def node_groups(cluster_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node group of a RayCluster spec by name, the head as `head`."""
    return {"head": cluster_spec["headGroupSpec"]} | {
        group["groupName"]: group for group in cluster_spec["workerGroupSpecs"]
    }

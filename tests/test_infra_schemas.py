"""The KubeRay manifests in infra/kuberay validate against KubeRay's own CRD schemas, unknown fields rejected."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft4Validator

from corpus import shared_dir

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "infra" / "kuberay").glob("*.yaml"))
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The API server checks metadata against ObjectMeta, which a CRD leaves as a bare object.
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# OpenAPI keywords with nothing to check here; x-kubernetes-* go as well once read. Their CEL rules
# (x-kubernetes-validations) would need a CEL engine: they guard managedBy, deletionStrategy and
# gcsFaultToleranceOptions, which no manifest of ours sets.
DROPPED = {"nullable", "format", "default", "description", "example", "externalDocs"}


def strict_json_schema(node: dict) -> dict:
    """A CRD's OpenAPI v3 schema as JSON Schema (draft 4) that also rejects unknown fields.

    The API server prunes or, under `kubectl --validate=strict`, rejects fields a structural
    schema does not declare; JSON Schema would let them through, so objects with `properties`
    get `additionalProperties: false` unless they say otherwise or preserve unknown fields.
    """
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [strict_json_schema(sub) for sub in value]
        elif key not in DROPPED and not key.startswith("x-kubernetes-"):
            out[key] = value

    if node.get("x-kubernetes-int-or-string"):
        # Its anyOf [{integer}, {string}] says the same; one type error reads better than an anyOf failure.
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if node.get("format") in INT_RANGES:
        low, high = INT_RANGES[node["format"]]
        out["minimum"] = max(out.get("minimum", low), low)
        out["maximum"] = min(out.get("maximum", high), high)
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def _crds() -> dict[str, dict]:
    """KubeRay's CRDs by kind."""
    crds = {}
    for path in sorted((shared_dir() / "schemas" / "kuberay").glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds[doc["spec"]["names"]["kind"]] = doc
    return crds


@cache
def crd_validator(kind: str, api_version: str) -> Draft4Validator:
    """The validator for `kind` at the served version `api_version` names (group/version)."""
    crd = _crds().get(kind)
    assert crd is not None, f"no KubeRay CRD for kind {kind!r} (have {sorted(_crds())})"
    group, _, version = api_version.partition("/")
    assert group == crd["spec"]["group"], f"{kind} belongs to group {crd['spec']['group']!r}, not {group!r}"
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind} {api_version}: KubeRay serves only {sorted(served)}"
    schema = strict_json_schema(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    schema["properties"]["apiVersion"] = {"enum": [api_version]}
    schema["properties"]["kind"] = {"enum": [kind]}
    return Draft4Validator(schema)


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def schema_errors(doc: dict, validator: Draft4Validator) -> list[str]:
    """Every problem as 'path.of.field: what is wrong', sorted by path."""
    problems = []
    for error in validator.iter_errors(doc):
        if error.validator == "additionalProperties" and error.validator_value is False:
            known = error.schema.get("properties", {})
            for name in sorted(set(error.instance) - set(known)):
                problems.append(f"{_path([*error.absolute_path, name])}: unknown field")
        else:
            problems.append(f"{_path(error.absolute_path)}: {error.message}")
    return sorted(problems)


def manifest_errors(doc: dict) -> list[str]:
    return schema_errors(doc, crd_validator(str(doc.get("kind")), str(doc.get("apiVersion"))))


def _manifest(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((REPO / "infra" / "kuberay" / name).read_text()) if d]
    return doc


def _spec_validator(kind: str, api_version: str) -> Draft4Validator:
    return Draft4Validator(crd_validator(kind, api_version).schema["properties"]["spec"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_its_crd(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        errors = manifest_errors(doc)
        assert not errors, f"{path.name} ({doc.get('kind')} {doc.get('apiVersion')}):\n  " + "\n  ".join(errors)


def test_embedded_specs_validate_as_the_objects_kuberay_makes_of_them():
    # The RayCronJob controller creates a RayJob from jobTemplate, and a RayJob creates a RayCluster
    # from rayClusterSpec: each must also pass the schema of the object it becomes.
    rayjob, cronjob = _manifest("rayjob.yaml"), _manifest("raycronjob.yaml")
    embedded = [
        ("rayjob.yaml spec.rayClusterSpec", rayjob["spec"]["rayClusterSpec"], "RayCluster", rayjob["apiVersion"]),
        ("raycronjob.yaml spec.jobTemplate", cronjob["spec"]["jobTemplate"], "RayJob", cronjob["apiVersion"]),
        ("raycronjob.yaml spec.jobTemplate.rayClusterSpec", cronjob["spec"]["jobTemplate"]["rayClusterSpec"], "RayCluster",
         cronjob["apiVersion"]),
    ]  # fmt: skip
    for where, spec, kind, api_version in embedded:
        errors = schema_errors(spec, _spec_validator(kind, api_version))
        assert not errors, f"{where} as a {kind} spec:\n  " + "\n  ".join(errors)


def _broken(name: str, path: str, value=None, *, rename: str | None = None) -> dict:
    """A copy of infra/kuberay/`name` with the field at dotted `path` (list indices as numbers) set or renamed."""
    doc = _manifest(name)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    if rename:
        node[rename] = node.pop(last)
    else:
        node[last] = value
    return doc


HEAD_CONTAINER = "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0"


@pytest.mark.parametrize(
    ("name", "path", "misspelt", "expected"),
    [
        ("raycluster.yaml", "spec.workerGroupSpecs.0.rayStartParams", "rayStartParam", "spec.workerGroupSpecs[0].rayStartParam: unknown field"),
        ("rayjob.yaml", f"{HEAD_CONTAINER}.image", "imag", "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].imag: unknown field"),
        ("raycronjob.yaml", "spec.schedule", "shedule", "spec: 'schedule' is a required property"),
    ],
    ids=["kuberay-field", "pod-field", "required-field"],
)  # fmt: skip
def test_a_misspelt_field_fails_with_its_path(name: str, path: str, misspelt: str, expected: str):
    errors = manifest_errors(_broken(name, path, rename=misspelt))
    assert any(e.startswith(expected) for e in errors), f"expected {expected!r}, got {errors}"


@pytest.mark.parametrize(
    ("name", "path", "value", "expected"),
    [
        ("raycluster.yaml", "spec.workerGroupSpecs.0.replicas", "two", "spec.workerGroupSpecs[0].replicas: 'two' is not of type 'integer'"),
        ("rayjob.yaml", "spec.backoffLimit", 2**31, "spec.backoffLimit: 2147483648 is greater than the maximum"),
        ("rayjob.yaml", f"{HEAD_CONTAINER}.resources.limits.memory", "8 GiB",
         "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources.limits.memory: '8 GiB' does not match"),
        ("raycronjob.yaml", "spec.jobTemplate.shutdownAfterJobFinishes", "yes",
         "spec.jobTemplate.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'"),
        ("raycronjob.yaml", "metadata.name", "Batch_Parse", "metadata.name: 'Batch_Parse' does not match"),
    ],
    ids=["string-for-integer", "int32-overflow", "bad-quantity", "string-for-boolean", "bad-name"],
)  # fmt: skip
def test_a_wrong_value_fails_with_its_path(name: str, path: str, value, expected: str):
    errors = manifest_errors(_broken(name, path, value))
    assert any(e.startswith(expected) for e in errors), f"expected {expected!r}, got {errors}"


def test_version_is_one_kuberay_serves():
    doc = _manifest("rayjob.yaml")
    with pytest.raises(AssertionError, match=r"RayJob ray\.io/v2: KubeRay serves only \['v1', 'v1alpha1'\]"):
        manifest_errors({**doc, "apiVersion": "ray.io/v2"})
    with pytest.raises(AssertionError, match="no KubeRay CRD for kind 'RayJobs'"):
        manifest_errors({**doc, "kind": "RayJobs"})


def test_openapi_specifics_convert_as_kubernetes_reads_them():
    schema = strict_json_schema({
        "type": "object",
        "properties": {
            "port": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
            "count": {"type": "integer", "format": "int32"},
            "since": {"type": "string", "format": "date-time", "nullable": True},
            "config": {"type": "object", "properties": {"known": {"type": "string"}}, "x-kubernetes-preserve-unknown-fields": True},
            "anything": {"x-kubernetes-preserve-unknown-fields": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    })  # fmt: skip
    validator = Draft4Validator(schema)

    def ok(doc: dict) -> bool:
        return not schema_errors(doc, validator)

    assert ok({"port": 8265}) and ok({"port": "dashboard"}) and not ok({"port": 1.5}) and not ok({"port": True})
    assert ok({"count": 2**31 - 1}) and not ok({"count": 2**31}) and not ok({"count": "1"})
    assert ok({"since": None}) and ok({"since": "2025-01-01T00:00:00Z"}) and not ok({"since": 3})
    assert ok({"config": {"known": "a", "extra": [1, {"b": 2}]}}) and not ok({"config": {"known": 1}})
    assert ok({"anything": [1, "two", {"three": 3}]}) and ok({"anything": None})
    assert ok({"labels": {"any-key": "v"}}) and not ok({"labels": {"k": 1}})
    assert schema_errors({"prot": 1}, validator) == ["prot: unknown field"]

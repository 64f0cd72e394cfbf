"""Render every kustomization under deploy/kubernetes and validate the objects offline (no cluster).

    python scripts/validate_k8s.py [--kubectl kubectl] [ROOT]

Each kustomization (a folder with ``kustomization.yaml``) is rendered with ``kubectl kustomize``. Every object is
checked field by field against the Kubernetes OpenAPI types as the official ``kubernetes`` Python client carries
them (``openapi_types`` / ``attribute_map`` of ``V1Deployment``, ``V2HorizontalPodAutoscaler``, ...): unknown fields,
wrong JSON types (a string where an integer belongs, a map where a list belongs) and missing required fields are
errors. InferenceService and PyTorchJob are checked the same way against the field tables vendored from KServe's
and the Kubeflow training operator's generated SDK models (deploy/kubernetes/schemas/crd-types.json). Exits 1 and
prints every error with its path (``Deployment/rescom-api: spec.template.spec.containers[0].portz: unknown
field``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import models as k8s_models

REPO = Path(__file__).resolve().parents[1]
K8S_ROOT = REPO / "deploy" / "kubernetes"
CRD_TYPES = K8S_ROOT / "schemas" / "crd-types.json"
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
LIST_TYPE = re.compile(r"^[lL]ist\[(.+)\]$")  # list[X] (openapi-generator) or List[X] (kubernetes >= 33)
DICT_TYPE = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
SCALARS = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}


def kustomizations(root: Path = K8S_ROOT) -> list[Path]:
    """Every folder under ``root`` holding a kustomization.yaml, sorted."""
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def render(folder: Path, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """``kubectl kustomize folder`` as a list of objects; raises RuntimeError with kubectl's message."""
    proc = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def crd_types() -> dict[str, Any]:
    """The vendored custom-resource field tables (see deploy/kubernetes/schemas/generate_crd_types.py)."""
    return json.loads(CRD_TYPES.read_text())


@cache
def type_table(name: str) -> tuple[dict[str, str], frozenset[str]] | None:
    """``({json key: type}, required json keys)`` of a model type, or None when no such type is known."""
    crd = crd_types()["types"].get(name)
    if crd is not None:
        return crd["fields"], frozenset(crd["required"])
    cls = getattr(k8s_models, name, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        return None
    fields = {cls.attribute_map[f]: t for f, t in cls.openapi_types.items()}
    if hasattr(cls, "model_fields"):  # kubernetes >= 35: pydantic models
        required = {cls.attribute_map[f] for f, info in cls.model_fields.items() if info.is_required()}
    else:  # older openapi-generator models: setters refuse None for required fields
        required = {cls.attribute_map[f] for f in REQUIRED.findall(inspect.getsource(cls))}
    return fields, frozenset(required)


def root_type(obj: dict[str, Any]) -> str | None:
    """The model type of a top-level object from its apiVersion and kind (``apps/v1`` Deployment -> V1Deployment)."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    crd = crd_types()["roots"].get(f"{api_version} {kind}")
    if crd is not None:
        return crd
    version = api_version.rsplit("/", 1)[-1]
    name = version[:1].upper() + version[1:] + kind
    return name if type_table(name) is not None else None


def check(value: Any, type_name: str, path: str, errors: list[str]) -> None:
    """Append to ``errors`` what is wrong with ``value`` as a ``type_name`` (a client type string) at ``path``."""
    if type_name == "object":
        return  # IntOrString, free-form JSON
    if type_name in SCALARS:
        ok = isinstance(value, SCALARS[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        if not ok:
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if m := LIST_TYPE.match(type_name):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(item, m.group(1), f"{path}[{i}]", errors)
        return
    if m := DICT_TYPE.match(type_name):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for key, item in value.items():
            check(item, m.group(1) or m.group(2), f"{path}.{key}", errors)
        return
    check_model(value, type_name, path, errors)


def check_model(value: Any, type_name: str, path: str, errors: list[str]) -> None:
    """Fields of an object of model type ``type_name``: known, typed, required ones present."""
    table = type_table(type_name)
    if table is None:
        errors.append(f"{path}: no schema for type {type_name}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_name}), got {type(value).__name__} {value!r}")
        return
    fields, required = table
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: unknown field (not in {type_name})")
        elif item is not None:
            check(item, fields[key], f"{path}.{key}", errors)
    for key in sorted(required - value.keys()):
        errors.append(f"{path}.{key}: required field missing ({type_name})")


def validate(obj: dict[str, Any]) -> list[str]:
    """Every schema error of one rendered object, each prefixed with ``Kind/name``."""
    name = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
    type_name = root_type(obj)
    if type_name is None:
        return [f"{name}: no schema for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r}"]
    errors: list[str] = []
    for key, item in obj.items():
        if key == "status":
            continue
        fields, _ = type_table(type_name)  # type: ignore[misc]
        if key not in fields:
            errors.append(f"{key}: unknown field (not in {type_name})")
        elif item is not None:
            check(item, fields[key], key, errors)
    return [f"{name}: {e}" for e in errors]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=str(K8S_ROOT), help="folder to search for kustomizations")
    p.add_argument("--kubectl", default="kubectl", help="kubectl binary (default: kubectl on PATH)")
    args = p.parse_args()
    failed = 0
    for folder in kustomizations(Path(args.root)):
        rel = folder.relative_to(Path(args.root))
        try:
            objects = render(folder, args.kubectl)
        except RuntimeError as err:
            print(f"FAIL {rel}: {err}")
            failed += 1
            continue
        errors = [e for obj in objects for e in validate(obj)]
        kinds = ", ".join(sorted({o["kind"] for o in objects}))
        print(f"{'ok  ' if not errors else 'FAIL'} {rel}: {len(objects)} objects ({kinds})")
        for e in errors:
            print(f"     {e}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

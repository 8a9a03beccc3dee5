"""The Kubernetes manifests as `kubectl apply -k` would send them.

Rendered by kustomize (``kustomize build`` or ``kubectl kustomize``) when it is
installed; otherwise by :func:`own_render`, which does what kustomize does for
the features these kustomizations use (resources, namespace, images, labels,
strategic-merge patches, secretGenerator from env files, and the rewriting of
references to a generated Secret's hashed name). A test holds the two to the
same output wherever kustomize is present.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .compose import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
Doc = dict[str, Any]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# Lists a strategic-merge patch merges item by item, by this key (others it replaces).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
}


class RenderFailed(Exception):
    """The kustomization does not build; the message says why."""


def kustomize_command() -> list[str] | None:
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def render(folder: Path) -> list[Doc]:
    """The documents the kustomization in ``folder`` builds."""
    command = kustomize_command()
    if command is None:
        return own_render(folder)
    return kustomize_render(command, folder)


def kustomize_render(command: list[str], folder: Path) -> list[Doc]:
    result = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise RenderFailed(result.stderr)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# -- the repository's own renderer -------------------------------------------


def own_render(folder: Path) -> list[Doc]:
    path = folder / "kustomization.yaml"
    if not path.exists():
        raise RenderFailed(f"{folder}: no kustomization.yaml")
    spec: Doc = yaml.safe_load(path.read_text())
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            docs.extend(own_render(target))
        elif target.exists():
            docs.extend(copy.deepcopy(d) for d in yaml.safe_load_all(target.read_text()) if d)
        else:
            raise RenderFailed(f"{folder}: resource {entry} does not exist")
    renames: dict[str, str] = {}
    for generator in spec.get("secretGenerator", []):
        secret = generate_secret(folder, generator)
        renames[generator["name"]] = secret["metadata"]["name"]
        docs.append(secret)
    for patch in spec.get("patches", []):
        for change in yaml.safe_load_all((folder / patch["path"]).read_text()):
            apply_patch(docs, change)
    for label in spec.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    for doc in docs:
        if "namespace" in spec and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = spec["namespace"]
        for pod in pod_specs(doc):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                container["image"] = new_image(container["image"], spec.get("images", []))
                for source in container.get("envFrom", []):
                    ref = source.get("secretRef")
                    if ref and ref["name"] in renames:
                        ref["name"] = renames[ref["name"]]
    return docs


def pod_specs(doc: Doc) -> list[Doc]:
    if doc["kind"] not in POD_TEMPLATE_KINDS:
        return []
    return [doc["spec"]["template"]["spec"]]


def new_image(image: str, images: list[Doc]) -> str:
    name, tag = image, None
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
    for rule in images:
        if rule["name"] == name:
            name, tag = rule.get("newName", name), rule.get("newTag", tag)
            break
    return f"{name}:{tag}" if tag else name


def generate_secret(folder: Path, generator: Doc) -> Doc:
    data: dict[str, str] = {}
    for env_file in generator.get("envs", []):
        path = folder / env_file
        if not path.exists():
            raise RenderFailed(f"{folder}: secretGenerator {generator['name']}: {env_file} missing")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = base64.b64encode(value.encode()).decode()
    secret_type = generator.get("type", "Opaque")
    encoded = json.dumps(
        {"data": data, "kind": "Secret", "name": generator["name"], "type": secret_type},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    suffix = digest.translate(str.maketrans("013ae", "ghkmt"))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{generator['name']}-{suffix}"},
        "type": secret_type,
        "data": data,
    }


def apply_patch(docs: list[Doc], change: Doc) -> None:
    for doc in docs:
        if doc["kind"] == change["kind"] and doc["metadata"]["name"] == change["metadata"]["name"]:
            merge(doc, change)
            return
    raise RenderFailed(f"patch names no resource: {change['kind']} {change['metadata']['name']}")


def merge(into: Doc, change: Doc) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(into.get(key), list):
            by = MERGE_KEYS[key]
            for item in value:
                same = [old for old in into[key] if old.get(by) == item.get(by)]
                if same:
                    merge(same[0], item)
                else:
                    into[key].append(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(value)

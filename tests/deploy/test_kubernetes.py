"""The Kubernetes manifests as they are rendered and applied: no secret ships
with them, production does not build without the operator's, every pod runs
read-only and unprivileged, only the DICOM port and the API are open from
outside, and the workers follow every node queue."""

from __future__ import annotations

import base64
import secrets
import shutil
from pathlib import Path

import pytest
import yaml

from .compose import webhook_secret
from .kustomize import (
    KUBERNETES,
    Doc,
    RenderFailed,
    kustomize_command,
    kustomize_render,
    own_render,
    render,
)

PRODUCTION = Path("overlays") / "production"
SECRETS_FILE = "qrfarm-secrets.env"
# What a default secret looked like, in any form it might come back.
DEFAULT_SECRETS = ("change-me", "changeme", "password", "secret123")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of deploy/kubernetes, where the operator's secrets file may be written."""
    copied = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copied, ignore=shutil.ignore_patterns(SECRETS_FILE))
    return copied


def operator_secrets(tree: Path) -> dict[str, str]:
    values = {
        "QRFARM_DATABASE_URL": (
            f"postgresql+psycopg://qrfarm:{secrets.token_urlsafe(16)}@db.example:5432/qrfarm"
        ),
        "QRFARM_BROKER_URL": f"redis://:{secrets.token_urlsafe(16)}@redis.example:6379/0",
        "QRFARM_WEBHOOK_SECRET": webhook_secret(),
    }
    text = "".join(f"{key}={value}\n" for key, value in values.items())
    (tree / PRODUCTION / SECRETS_FILE).write_text(text)
    return values


def rendered(tree: Path) -> dict[str, list[Doc]]:
    """Every kustomization of the tree, rendered (production with the operator's secrets)."""
    operator_secrets(tree)
    return {
        str(path.parent.relative_to(tree)): render(path.parent)
        for path in sorted(tree.rglob("kustomization.yaml"))
    }


def pods(docs: list[Doc]) -> dict[str, Doc]:
    """Each workload's pod template, by workload name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    }


def test_no_rendered_output_holds_a_default_secret(tree: Path) -> None:
    outputs = rendered(tree)
    assert set(outputs) == {"base", str(PRODUCTION)}
    for name, docs in outputs.items():
        text = yaml.safe_dump_all(docs).lower()
        for default in DEFAULT_SECRETS:
            assert default not in text, (name, default)
        for doc in docs:
            if doc["kind"] == "ConfigMap":
                # Secrets are not configuration: no password in a URL, no key.
                for key, value in doc["data"].items():
                    assert "@" not in value and "SECRET" not in key, (name, key)
    # The base ships no Secret at all; its pods need the one an overlay provides.
    assert [d for d in outputs["base"] if d["kind"] == "Secret"] == []


def test_production_does_not_render_without_the_operators_secrets(tree: Path) -> None:
    with pytest.raises(RenderFailed) as failed:
        render(tree / PRODUCTION)
    assert SECRETS_FILE in str(failed.value)
    # The repository does not hold the file (it is ignored, and absent).
    assert not (KUBERNETES / PRODUCTION / SECRETS_FILE).exists()
    assert f"{SECRETS_FILE}" in (KUBERNETES.parents[1] / ".gitignore").read_text()


def test_production_pods_take_the_secret_built_from_the_operators_file(tree: Path) -> None:
    values = operator_secrets(tree)
    docs = render(tree / PRODUCTION)
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == values
    assert secret["metadata"]["name"].startswith("qrfarm-")  # hashed: pods roll on a change
    for name, pod in pods(docs).items():
        for container in pod["spec"]["containers"]:
            refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
            assert refs == [secret["metadata"]["name"]], name


def writable_paths(pod: Doc, config: dict[str, str]) -> list[str]:
    """What each qrfarm role writes: its data folder, and the storage root when mounted."""
    paths = [config["QRFARM_DATA_DIR"], "/tmp"]
    for container in pod["spec"]["containers"]:
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if config["QRFARM_STORAGE_ROOT"] in mounts:
            paths.append(config["QRFARM_STORAGE_ROOT"])
    return paths


def test_every_pod_runs_read_only_non_root_and_without_privileges(tree: Path) -> None:
    for overlay, docs in rendered(tree).items():
        [config] = [d["data"] for d in docs if d["kind"] == "ConfigMap"]
        workloads = pods(docs)
        assert set(workloads) >= {
            "qrfarm-api",
            "qrfarm-scp",
            "qrfarm-worker",
            "qrfarm-scheduler",
            "qrfarm-hl7",
            "qrfarm-migrate",
        }
        for name, pod in workloads.items():
            where = (overlay, name)
            spec = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["runAsUser"] != 0, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec.get("automountServiceAccountToken") is False, where
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for container in spec["containers"] + spec.get("initContainers", []):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert not context.get("privileged"), where
                # What must be writable is a volume: scratch space an emptyDir.
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert "emptyDir" in volumes[mounts["/tmp"]], where
                for path in writable_paths(pod, config):
                    assert any(path == m or path.startswith(m + "/") for m in mounts), (
                        where,
                        path,
                    )


def selects(policy: Doc, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression  # what this check understands
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def port_number(port: int | str, pod: Doc) -> int:
    if isinstance(port, int):
        return port
    for container in pod["spec"]["containers"]:
        for declared in container.get("ports", []):
            if declared.get("name") == port:
                return int(declared["containerPort"])
    raise AssertionError(f"no container port named {port}")


def ingress(docs: list[Doc], pod: Doc) -> tuple[set[int], set[int], bool]:
    """The ports open to anyone, the ports open to pods of the cluster, and
    whether any policy selects the pod for ingress at all."""
    anyone: set[int] = set()
    cluster: set[int] = set()
    selected = False
    labels = pod["metadata"]["labels"]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        if not selects(policy, labels) or "Ingress" not in policy["spec"]["policyTypes"]:
            continue
        selected = True
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            assert ports, f"{policy['metadata']['name']}: a rule open on every port"
            numbers = {port_number(p["port"], pod) for p in ports}
            sources = rule.get("from")
            if not sources or any("ipBlock" in s for s in sources):
                anyone |= numbers
            else:
                for source in sources:
                    # Pods of this cluster only: a namespace or pod selector.
                    assert set(source) <= {"namespaceSelector", "podSelector"}, source
                cluster |= numbers
    return anyone, cluster, selected


def test_network_policies_select_every_pod_and_open_only_dicom_and_the_api(
    tree: Path,
) -> None:
    for overlay, docs in rendered(tree).items():
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        assert policies, overlay
        # A default deny: any pod, present or added later, is closed unless opened.
        assert any(
            p["spec"]["podSelector"] == {}
            and p["spec"]["policyTypes"] == ["Ingress"]
            and not p["spec"].get("ingress")
            for p in policies
        ), overlay
        open_to_anyone = {}
        for name, pod in pods(docs).items():
            anyone, _, selected = ingress(docs, pod)
            assert selected, (overlay, name)
            open_to_anyone[name] = anyone
        assert open_to_anyone == {
            "qrfarm-scp": {11113},
            "qrfarm-api": {8080},
            "qrfarm-worker": set(),
            "qrfarm-scheduler": set(),
            "qrfarm-hl7": set(),
            "qrfarm-migrate": set(),
        }, overlay
        # Prometheus scrapes the metrics ports from inside the cluster (the
        # API's own, without a token, where the autoscaler's query is read).
        for name in ("qrfarm-scp", "qrfarm-worker", "qrfarm-api"):
            pod = pods(docs)[name]
            port = int(pod["metadata"]["annotations"]["prometheus.io/port"])
            assert port in ingress(docs, pod)[1], (overlay, name)
        [api] = pods(docs)["qrfarm-api"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in api["env"]}
        assert env["QRFARM_API_METRICS_PORT"] == "9100", overlay


def scaled_object(docs: list[Doc]) -> Doc:
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    return scaled


def test_workers_scale_on_every_node_queue_not_one(tree: Path) -> None:
    for overlay, docs in rendered(tree).items():
        scaled = scaled_object(docs)
        assert scaled["spec"]["scaleTargetRef"]["name"] == "qrfarm-worker"
        [trigger] = scaled["spec"]["triggers"]
        # KEDA's Redis scaler follows one named list; node queues are made at run time.
        assert trigger["type"] == "prometheus", overlay
        query = trigger["metadata"]["query"]
        assert "qrfarm_queue_depth" in query and "qrfarm.node." not in query, query
        assert "queue=" not in query.replace(" ", ""), query  # no one queue singled out
        # Every API replica reports the same farm-wide numbers: counted once.
        assert query.count("max(") >= 1, query


def without_hashes(docs: list[Doc]) -> list[str]:
    """The documents as text, a generated Secret's hashed name replaced (the
    own renderer hashes the content its own way, as a suffix all the same)."""
    for doc in docs:
        if doc["kind"] == "Secret":  # kustomize wraps long base64 lines
            doc["data"] = {k: "".join(v.split()) for k, v in doc["data"].items()}
    texts = [yaml.safe_dump(doc) for doc in docs]
    for doc in docs:
        if doc["kind"] == "Secret":
            texts = [text.replace(doc["metadata"]["name"], "qrfarm-HASH") for text in texts]
    return sorted(texts)


def test_the_own_renderer_builds_what_kustomize_builds(tree: Path) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    operator_secrets(tree)
    for folder in (tree / "base", tree / PRODUCTION):
        ours = own_render(folder)
        theirs = kustomize_render(command, folder)
        assert without_hashes(ours) == without_hashes(theirs), folder
    (tree / PRODUCTION / SECRETS_FILE).unlink()
    with pytest.raises(RenderFailed):
        own_render(tree / PRODUCTION)

"""The deployment files are accepted by their own tools: docker-compose for the
compose file, the Kubernetes schemas for every manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from .compose import ROOT, compose_config, resolved

KUBERNETES = ROOT / "deploy" / "kubernetes"
ROLES = {
    "scp1": "scp",
    "scp2": "scp",
    "worker": "worker",
    "scheduler": "scheduler",
    "api": "api",
    "hl7": "hl7",
    "migrate": "migrate",
}


def test_docker_compose_accepts_the_compose_file_with_and_without_the_demo() -> None:
    for args in ((), ("--profile", "demo")):
        result = compose_config(*args)
        assert result.returncode == 0, result.stderr
    services = resolved()["services"]
    assert set(services) >= {
        "redis",
        "postgres",
        "migrate",
        "scp1",
        "scp2",
        "haproxy",
        "worker",
        "scheduler",
        "api",
        "hl7",
        "flower",
    }
    demo = yaml.safe_load(compose_config("--profile", "demo").stdout)["services"]
    assert {"orthanc", "orthanc-loader"} <= set(demo)
    for name, role in ROLES.items():
        # Each role runs its own command of the one image, and its health check knows it.
        assert services[name]["environment"]["QRFARM_ROLE"] == role
        assert services[name]["command"][0] == {"migrate": "db"}.get(role, role)
    # The SCPs' port is published once, through HAProxy.
    assert "ports" not in services["scp1"] and "ports" not in services["scp2"]
    assert services["haproxy"]["ports"][0]["target"] == 11113


def test_the_image_is_one_for_every_role_non_root_with_a_health_check() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile
    assert "HEALTHCHECK" in dockerfile and '"qrfarm", "probe"' in dockerfile
    assert 'ENTRYPOINT ["qrfarm"]' in dockerfile


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_kubernetes_manifest_validates_against_the_schemas() -> None:
    checked = 0
    for kustomization in sorted(KUBERNETES.rglob("kustomization.yaml")):
        spec = documents(kustomization)[0]
        folder = kustomization.parent
        for entry in spec.get("resources", []):
            target = (folder / entry).resolve()
            assert target.exists(), f"{kustomization}: {entry} does not exist"
            if target.is_dir():
                continue
            for doc in documents(target):
                if doc["apiVersion"].startswith("keda.sh/"):
                    continue  # a CRD: no schema here; checked below
                kubernetes_validate.validate(doc, "1.30.0", strict=True)
                checked += 1
        for patch in spec.get("patches", []):
            assert (folder / patch["path"]).exists(), f"{kustomization}: {patch} does not exist"
    assert checked == 23  # every resource of base and overlay, the CRD aside


def test_patches_and_autoscaling_name_what_the_base_defines() -> None:
    base = {
        (doc["kind"], doc["metadata"]["name"])
        for path in (KUBERNETES / "base").glob("*.yaml")
        if path.name != "kustomization.yaml"
        for doc in documents(path)
    }
    overlay = KUBERNETES / "overlays" / "production"
    for patch in documents(overlay / "kustomization.yaml")[0]["patches"]:
        for doc in documents(overlay / patch["path"]):
            assert (doc["kind"], doc["metadata"]["name"]) in base, patch
    [scaled] = [
        doc
        for doc in documents(KUBERNETES / "base" / "worker.yaml")
        if doc["kind"] == "ScaledObject"
    ]
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in base
    assert scaled["spec"]["triggers"][0]["type"] == "prometheus"


def test_the_storage_scps_see_the_real_address_of_each_pacs() -> None:
    # They admit a PACS by its host: behind HAProxy through the PROXY protocol
    # (v2, from HAProxy alone), behind the Kubernetes Service by keeping the
    # client's address.
    haproxy = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in haproxy
    services = resolved()["services"]
    for name in ("scp1", "scp2"):
        assert services[name]["environment"]["QRFARM_SCP_PROXY_PROTOCOL_FROM"] == "haproxy"
    [service] = [
        doc for doc in documents(KUBERNETES / "base" / "scp.yaml") if doc["kind"] == "Service"
    ]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"

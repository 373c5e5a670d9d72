"""The Kustomize base renders, every object is valid for Kubernetes 1.37 with unknown fields
rejected, the KEDA ScaledObject matches KEDA's CRD schema, and the settings in the manifests
agree with each other and with inspectq.config.Settings."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from inspectq.config import Settings
from inspectq.keyspace import QUEUE
from tests.deploy.conftest import KEDA_CRD, find, pod_spec, run, venv_tool

K8S_VERSION = "1.37.0"
WORKLOAD_KINDS = ("Deployment", "CronJob")


def validate_k8s(manifest: str, tmp_path: Path) -> tuple[int, str]:
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest)
    result = run([venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, path])
    return result.returncode, result.stdout + result.stderr


def test_every_builtin_object_passes_strict_validation(
    objects: list[dict[str, Any]], rendered: str, tmp_path: Path
) -> None:
    rc, output = validate_k8s(rendered, tmp_path)
    assert rc == 0, output
    builtin = [o for o in objects if o["apiVersion"] != "keda.sh/v1alpha1"]
    passed = output.count(" passed for resource ")
    assert passed == len(builtin), f"{passed} of {len(builtin)} objects validated:\n{output}"


def test_strict_validation_rejects_a_misspelt_field(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Proves the validator is live: a typo in a Deployment must fail it."""
    api = copy.deepcopy(find(objects, "Deployment", "api"))
    api["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    rc, output = validate_k8s(yaml.safe_dump(api), tmp_path)
    assert rc != 0, output


def strict_schema(node: Any) -> Any:
    """KEDA's schema with ``additionalProperties: false`` on every object that lists its
    ``properties`` (the CRD itself tolerates unknown fields, so typos would pass)."""
    if isinstance(node, dict):
        node = {key: strict_schema(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    return node


@pytest.fixture(scope="module")
def keda_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert KEDA_CRD.exists(), f"KEDA CRD schema missing: {KEDA_CRD}"
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    path = tmp_path_factory.mktemp("keda") / "scaledobject.schema.json"
    path.write_text(json.dumps(schema))
    return path


def check_scaled_object(scaled_object: dict[str, Any], schema: Path, tmp_path: Path) -> str:
    """check-jsonschema's verdict; returns its output, asserts nothing."""
    path = tmp_path / "scaledobject.yaml"
    path.write_text(yaml.safe_dump(scaled_object))
    result = run([venv_tool("check-jsonschema"), "--schemafile", schema, path])
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def test_scaled_object_matches_keda_schema(
    objects: list[dict[str, Any]], keda_schema: Path, tmp_path: Path
) -> None:
    verdict = check_scaled_object(find(objects, "ScaledObject", "worker"), keda_schema, tmp_path)
    assert verdict.startswith("rc=0"), verdict


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda spec: spec.update(minReplicaCnt=1), id="misspelt-field"),
        pytest.param(lambda spec: spec.update(maxReplicaCount="20"), id="wrong-type"),
        pytest.param(lambda spec: spec.pop("scaleTargetRef"), id="missing-target"),
        pytest.param(
            lambda spec: spec["triggers"][0]["metadata"].update(listLength=8), id="int-metadata"
        ),
    ],
)
def test_broken_scaled_object_is_rejected(
    objects: list[dict[str, Any]], keda_schema: Path, tmp_path: Path, breakage: Any
) -> None:
    """Proves the schema check is live: each broken copy must fail it."""
    broken = copy.deepcopy(find(objects, "ScaledObject", "worker"))
    breakage(broken["spec"])
    verdict = check_scaled_object(broken, keda_schema, tmp_path)
    assert not verdict.startswith("rc=0"), verdict


def config_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The INSPECTQ_* environment the pods get: ConfigMap plus env Secret."""
    config = find(objects, "ConfigMap", "inspectq-config")["data"]
    secret = find(objects, "Secret", "inspectq-secrets")["stringData"]
    return {**config, **secret}


@pytest.fixture
def deployed_settings(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings exactly as a pod of the base reads them (runs Settings' own validation)."""
    for name in list(os.environ):
        if name.startswith("INSPECTQ_"):
            monkeypatch.delenv(name)
    for name, value in config_env(objects).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_env_name_is_a_setting(objects: list[dict[str, Any]]) -> None:
    """A misspelt variable would be silently ignored (extra="ignore"): catch it here."""
    unknown = [
        name for name in config_env(objects)
        if name.removeprefix("INSPECTQ_").lower() not in Settings.model_fields
    ]
    assert not unknown, f"not Settings fields: {unknown}"


def test_no_secret_setting_in_the_config_map(objects: list[dict[str, Any]]) -> None:
    secret_fields = {
        name for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert secret_fields, "Settings has no SecretStr fields any more? update this test"
    config = find(objects, "ConfigMap", "inspectq-config")["data"]
    leaked = [n for n in config if n.removeprefix("INSPECTQ_").lower() in secret_fields]
    assert not leaked, f"secrets in the ConfigMap: {leaked}"


def test_worker_outlives_its_longest_job(
    objects: list[dict[str, Any]], deployed_settings: Settings
) -> None:
    worker = pod_spec(find(objects, "Deployment", "worker"))
    grace = worker["terminationGracePeriodSeconds"]
    assert grace > deployed_settings.task_time_limit_s
    assert grace > deployed_settings.worker_shutdown_grace_s
    assert deployed_settings.visibility_timeout_s > deployed_settings.task_time_limit_s
    (container,) = worker["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("REMAP_SIGTERM") == "SIGQUIT", "SIGTERM must start Celery's soft shutdown"


def test_services_point_at_the_in_cluster_names(
    objects: list[dict[str, Any]], deployed_settings: Settings
) -> None:
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    redis_host = urlparse(deployed_settings.redis_url).hostname or ""
    triton_host = deployed_settings.triton_url.rsplit(":", 1)[0]
    assert redis_host.split(".")[0] in names
    assert triton_host.split(".")[0] in names
    triton = find(objects, "Service", "triton")
    assert any(p["port"] == 8001 for p in triton["spec"]["ports"])


def test_keda_watches_the_celery_queue_of_the_configured_redis(
    objects: list[dict[str, Any]], deployed_settings: Settings
) -> None:
    scaled = find(objects, "ScaledObject", "worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == find(objects, "Deployment", "worker")["metadata"][
        "name"
    ]
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    (trigger,) = [t for t in scaled["triggers"] if t["type"] == "redis"]
    broker = urlparse(deployed_settings.effective_broker_url)
    meta = trigger["metadata"]
    assert meta["listName"] == QUEUE
    assert meta["address"] == f"{broker.hostname}:{broker.port or 6379}"
    assert meta["databaseIndex"] == (broker.path.lstrip("/") or "0")


def all_containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict]]:
    found = []
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            spec = pod_spec(obj)
            for container in spec["containers"]:
                found.append((obj["metadata"]["name"], spec, container))
    return found


def test_containers_are_locked_down_and_sized(objects: list[dict[str, Any]]) -> None:
    for owner, spec, container in all_containers(objects):
        where = f"{owner}/{container['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
        assert "memory" in container["resources"]["limits"], where


def test_references_resolve(objects: list[dict[str, Any]]) -> None:
    """Every ConfigMap/Secret a pod reads is in the base (after Kustomize's hash renames)."""
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for owner, spec, container in all_containers(objects):
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    assert (kind, source[key]["name"]) in present, f"{owner}: {source}"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in present, owner


def test_replicated_workloads_have_disruption_budgets(objects: list[dict[str, Any]]) -> None:
    budgets = [o["spec"]["selector"]["matchLabels"] for o in objects
               if o["kind"] == "PodDisruptionBudget"]
    for name in ("api", "worker", "triton"):
        labels = find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), f"no PDB for {name}"


def test_everything_lands_in_the_inspectq_namespace(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "inspectq", obj["metadata"]["name"]


def test_secret_example_is_obviously_a_placeholder(objects: list[dict[str, Any]]) -> None:
    secret = find(objects, "Secret", "inspectq-secrets")["stringData"]
    assert secret["INSPECTQ_S3_SECRET_ACCESS_KEY"].startswith("CHANGE-ME")
    assert secret["INSPECTQ_API_KEY"] in ("", "CHANGE-ME"), "no real-looking key in the example"

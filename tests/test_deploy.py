"""The Kubernetes deployment (deploy/k8s), validated as far as can be done offline: every object
against the Kubernetes API's schema (kubernetes-validate's bundled schemas, strict: an unknown
field is an error), every secret read from a Secret, every image pinned, every container with
resources, the Dagster instance's storage and run launcher as Dagster reads them, and the training
steps asking for a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
K8S_VERSION = "1.33"  # the oldest release still supported upstream: what a cluster runs at least


def _objects(pattern: str = "*.yaml") -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DEPLOY.glob(pattern)):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _pod_specs():
    for name, obj in _objects():
        spec = obj.get("spec", {})
        if "template" in spec:
            yield name, obj["metadata"]["name"], spec["template"]["spec"]


def test_every_object_is_valid_kubernetes():
    objects = _objects()
    kinds = {obj["kind"] for _, obj in objects}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Role", "PersistentVolumeClaim"} <= kinds
    for name, obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_secrets_come_from_secrets_and_images_are_pinned():
    for name, obj, pod in _pod_specs():
        for c in pod["containers"]:
            where = f"{name}: {obj}/{c['name']}"
            assert ":" in c["image"] and not c["image"].endswith(":latest"), where
            assert c.get("resources", {}).get("requests"), f"{where} has no resource requests"
            for env in c.get("env", []):
                if env["name"].endswith(("PASSWORD", "USER_TOKEN", "SECRET_ACCESS_KEY", "API_KEY", "_URL")):
                    assert "valueFrom" in env and "value" not in env, f"{where}: {env['name']} is written in"
    # the only literal secret values are the example's placeholders
    for name, obj in _objects():
        if obj["kind"] == "Secret":
            assert name == "secrets.example.yaml"
            assert all("REPLACE_ME" in v or "@" in v for v in obj["stringData"].values()), obj["metadata"]


def test_the_dagster_instance_is_postgres_and_kubernetes_jobs(tmp_path):
    """The instance's dagster.yaml as Dagster validates it (its own schema); the launcher's module
    and the passwords read from the environment."""
    from dagster._core.instance.config import dagster_instance_config

    (config_map,) = [
        o for _, o in _objects("dagster.yaml") if o["metadata"]["name"] == "ferlab-dagster-instance"
    ]
    text = config_map["data"]["dagster.yaml"]
    assert "password" not in text.lower().replace("{env", "")
    instance = yaml.safe_load(text)
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "FERLAB_DAGSTER_POSTGRES_URL"}
    assert (instance["run_launcher"]["module"], instance["run_launcher"]["class"]) == (
        "dagster_k8s",
        "K8sRunLauncher",
    )
    assert instance["run_launcher"]["config"]["instance_config_map"] == "ferlab-dagster-instance"
    # Dagster's schema, with the parts that need the cluster's libraries (dagster-postgres,
    # dagster-k8s: imported when the instance starts) left to the cluster
    local = {k: v for k, v in instance.items() if k not in ("storage", "run_launcher")}
    config, _ = dagster_instance_config(str(tmp_path), "dagster.yaml", overrides=local)
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_training_steps_ask_for_a_gpu_on_kubernetes():
    from dagster_project.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    tags = {n.name: n.tags.get("dagster-k8s/config") for n in job.graph.node_defs}
    for step in ("au_model", "emotion_model", "face_detector"):
        config = json.loads(tags[step])
        assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1", step
    assert tags["fer2013_images"] is None  # the other steps take no GPU

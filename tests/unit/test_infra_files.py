"""The deployment files: Kubernetes manifests against the API schemas (offline, kubernetes-validate),
KEDA objects against the fields KEDA defines, CloudFormation through cfn-lint, Terraform through
python-hcl2, and the numbers that must agree across them."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.queues import JOB_QUEUES
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSIONS = ["1.31", "1.35"]  # the oldest and newest minor releases the managed services run
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}

MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_resources() -> list[dict]:
    return [doc for path in MANIFESTS for doc in documents(path)]


def find(kind: str, name: str) -> dict:
    matches = [r for r in all_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


# --- Kubernetes --------------------------------------------------------------------------------


def test_there_are_manifests():
    kinds = {r["kind"] for r in all_resources()}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for resource in documents(path):
        if resource["kind"] in KEDA_KINDS:
            continue  # a custom resource: checked below
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            location = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {resource['kind']}/{resource['metadata']['name']}: {location}: {exc.message}")


# KEDA's CRDs are not in kubernetes-validate; these schemas hold the ScaledObject and
# TriggerAuthentication fields KEDA 2.12+ defines that the manifests use, and refuse unknown ones.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
    },
}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        k: {"type": "string"} for k in ("apiVersion", "kind", "name", "envSourceContainerName")
                    },
                },
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                        "behavior": {
                            "enum": ["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]
                        },
                    },
                },  # fmt: skip
                **{
                    k: {"type": "integer", "minimum": 0}
                    for k in (
                        "pollingInterval",
                        "cooldownPeriod",
                        "initialCooldownPeriod",
                        "idleReplicaCount",
                        "minReplicaCount",
                        "maxReplicaCount",
                    )
                },  # fmt: skip
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                },
                            },
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["formula", "target"],
                            "properties": {
                                "formula": {"type": "string"},
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRINGS,  # KEDA takes only strings here
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {k: {"type": "string"} for k in ("parameter", "name", "key")},
                    },
                }
            },
        },
    },
}


def test_keda_objects_have_only_keda_fields():
    import jsonschema

    schemas = {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA}
    found = [r for r in all_resources() if r["kind"] in KEDA_KINDS]
    assert {r["kind"] for r in found} == KEDA_KINDS
    for resource in found:
        jsonschema.validate(resource, schemas[resource["kind"]])


def test_worker_scaler_reads_the_depth_and_a_redis_list_per_queue():
    from bench.scaling_sim import Policy

    spec = find("ScaledObject", "worker")["spec"]
    assert spec["scaleTargetRef"]["name"] == "worker"
    find("Deployment", "worker")
    target = Policy().per_worker
    redis = [t for t in spec["triggers"] if t["type"] == "redis"]
    assert sorted(t["metadata"]["listName"] for t in redis) == sorted(JOB_QUEUES)
    for trigger in redis:
        assert trigger["name"] == trigger["metadata"]["listName"]
        assert float(trigger["metadata"]["listLength"]) == target
        assert "activationListLength" in trigger["metadata"]
        assert trigger["authenticationRef"]["name"] == "biofleet-redis"
    (depth,) = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    assert "biofleet_queue_depth" in depth["metadata"]["query"]  # the metric the exporter serves
    assert float(depth["metadata"]["threshold"]) == target
    assert spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    find("TriggerAuthentication", "biofleet-redis")
    exporter_pod = find("Deployment", "exporter")["spec"]["template"]
    assert exporter_pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_exporter_serves_the_metric_the_scaler_queries():
    source = (ROOT / "shared" / "exporter.py").read_text()
    assert '"biofleet_queue_depth"' in source
    config = find("ConfigMap", "biofleet-config")["data"]
    pod = find("Deployment", "exporter")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "shared.exporter"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == config["BIOFLEET_EXPORTER_PORT"]
    assert [p["containerPort"] for p in container["ports"]] == [int(config["BIOFLEET_EXPORTER_PORT"])]
    assert not [r for r in all_resources() if r["kind"] == "Service" and r["metadata"]["name"] == "exporter"]


def test_metrics_are_not_on_the_api_service():
    """Prometheus scrapes the API pods' metrics port; the Service behind the ingress has only http."""
    config = find("ConfigMap", "biofleet-config")["data"]
    pod = find("Deployment", "api")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == config["BIOFLEET_METRICS_PORT"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "metrics": int(config["BIOFLEET_METRICS_PORT"])}
    assert [p["targetPort"] for p in find("Service", "api")["spec"]["ports"]] == ["http"]
    assert "BIOFLEET_METRICS_ROUTE" not in config


def test_scaler_numbers_match_the_simulator_defaults():
    from bench.scaling_sim import Policy

    spec = find("ScaledObject", "worker")["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    policy = Policy()
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (policy.min_replicas, policy.max_replicas)
    assert spec["pollingInterval"] == policy.poll_s
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == policy.cooldown_s
    assert {p["type"]: p["value"] for p in behavior["scaleUp"]["policies"]} == {
        "Pods": policy.scale_up_pods, "Percent": policy.scale_up_percent}  # fmt: skip
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": policy.scale_down_pods, "periodSeconds": 60}]


def test_worker_pods_get_a_gpu_and_time_to_finish_a_batch():
    deployment = find("Deployment", "worker")
    assert "replicas" not in deployment["spec"]  # owned by KEDA
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    config = find("ConfigMap", "biofleet-config")["data"]
    settings = Settings(
        flush_interval_ms=int(config["BIOFLEET_FLUSH_INTERVAL_MS"]), db_retry_s=float(config["BIOFLEET_DB_RETRY_S"])
    )
    assert pod["terminationGracePeriodSeconds"] > settings.flush_interval_ms / 1000 + settings.db_retry_s + 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    for port in container["ports"]:
        assert port["containerPort"] == int(config["BIOFLEET_WORKER_METRICS_PORT"])


def test_config_map_keys_are_settings():
    fields = {f"BIOFLEET_{name.upper()}" for name in Settings.model_fields}
    for key in find("ConfigMap", "biofleet-config")["data"]:
        assert key in fields, f"{key} is not a Settings field"


def test_flower_is_not_exposed_and_needs_a_login():
    service = find("Service", "flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    (container,) = find("Deployment", "flower")["spec"]["template"]["spec"]["containers"]
    names = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in names["FLOWER_BASIC_AUTH"]["valueFrom"]
    assert not any("redis://" in arg for arg in container["command"])
    find("NetworkPolicy", "flower")


def test_secret_keys_are_documented():
    readme = (ROOT / "infra" / "README.md").read_text()
    keys = set()
    for resource in all_resources():
        text = yaml.safe_dump(resource)
        for doc in yaml.safe_load_all(text):
            _collect_secret_keys(doc, keys)
    assert keys
    for key in keys:
        assert f"`{key}`" in readme, f"secret key {key} is not in infra/README.md"


def _collect_secret_keys(node, keys: set) -> None:
    if isinstance(node, dict):
        if node.get("name") == "biofleet-secrets" and "key" in node:
            keys.add(node["key"])
        for value in node.values():
            _collect_secret_keys(value, keys)
    elif isinstance(node, list):
        for value in node:
            _collect_secret_keys(value, keys)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


# --- AWS ---------------------------------------------------------------------------------------


def test_cloudformation_has_no_cfn_lint_errors():
    found = Path(sys.executable).with_name("cfn-lint")
    cfn_lint = str(found) if found.exists() else shutil.which("cfn-lint") or pytest.skip("cfn-lint not installed")
    templates = sorted((ROOT / "infra" / "aws").glob("*.yaml"))
    assert templates
    result = subprocess.run([cfn_lint, *map(str, templates)], capture_output=True, text=True, timeout=300)
    # cfn-lint's exit code is a bit set: 2 = errors, 4 = warnings, 8 = informational.
    assert result.returncode & 2 == 0, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloudformation_tracks_the_published_metric():
    from shared.scaling import BACKLOG_PER_WORKER, NAMESPACE

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # intrinsic functions
    template = yaml.load((ROOT / "infra" / "aws" / "worker-asg.yaml").read_text(), Loader=Loader)
    resources = template["Resources"]
    policy = next(r for r in resources.values() if r["Type"] == "AWS::AutoScaling::ScalingPolicy")
    metric = policy["Properties"]["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"]) == (NAMESPACE, BACKLOG_PER_WORKER)
    bucket = next(r for r in resources.values() if r["Type"] == "AWS::S3::Bucket")["Properties"]
    assert bucket["BucketEncryption"] and bucket["LifecycleConfiguration"]["Rules"]
    assert template["Parameters"]["InstanceType"]["Default"] in ("g5.xlarge", "g6.xlarge")
    from bench.scaling_sim import Policy

    assert template["Parameters"]["TargetBacklogPerWorker"]["Default"] == Policy().per_worker
    assert template["Parameters"]["MinWorkers"]["Default"] == Policy().min_replicas
    assert template["Parameters"]["MaxWorkers"]["Default"] == Policy().max_replicas


# --- GCP ---------------------------------------------------------------------------------------


def _hcl(path: Path) -> dict:
    hcl2 = pytest.importorskip("hcl2")
    with path.open() as f:
        return hcl2.load(f)


def test_terraform_parses_and_names_its_variables():
    files = sorted((ROOT / "infra" / "gcp").glob("*.tf"))
    assert files
    parsed = {path.name: _hcl(path) for path in files}
    variables = {name.strip('"') for doc in parsed.values() for block in doc.get("variable", []) for name in block}
    assert {"region", "machine_type", "gpu_type"} <= variables
    resources = {kind.strip('"') for doc in parsed.values() for block in doc.get("resource", []) for kind in block}
    assert {"google_container_cluster", "google_container_node_pool", "google_storage_bucket"} <= resources
    # every var.<name> used is declared
    used = {name for path in files for name in re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", path.read_text())}
    assert used and used <= variables, used - variables


def test_the_callback_dispatcher_runs_apart_from_inference():
    deployment = find("Deployment", "callbacks")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "worker", "--callbacks"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "nodeSelector" not in pod  # CPU nodes
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"] and container["startupProbe"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    config = find("ConfigMap", "biofleet-config")["data"]
    deadline_s = float(config.get("BIOFLEET_CALLBACK_DEADLINE_S", Settings().callback_deadline_s))
    assert pod["terminationGracePeriodSeconds"] > deadline_s
    (worker,) = find("Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    assert "--callbacks" not in " ".join(worker.get("command", []) + worker.get("args", []))

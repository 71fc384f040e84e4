"""ops/k8s/: the Deployments, the Redis StatefulSet, disruption budgets, KEDA's scaling triggers
and each Deployment's `fleet doctor` init container, compared with docker-compose.yml where
both say the same thing, and the strict schema check of every manifest. `kubectl kustomize`
runs when kubectl is installed."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.ops.helpers import (
    FLEET_SERVICES,
    HEARTBEAT_PROBE,
    K8S_DIR,
    K8S_SCHEMA_VERSION,
    NOT_A_SECRET_SUFFIX,
    SECRET_VAR_NAME,
    celery_conf,
    k8s_memory_bytes,
    k8s_object,
    k8s_objects,
    load_compose,
    only_container,
    tool_binary,
    worker_memory_floor_bytes,
)
from worker.keys import AGENT_QUEUE, ARCHIVE_QUEUE, WEBHOOK_QUEUE, tool_queue


def test_k8s_yaml_parses_into_named_objects() -> None:
    objects = k8s_objects()
    assert len({o["__file__"] for o in objects}) >= 5
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj["__file__"]
        if obj["kind"] != "Kustomization":
            assert obj["metadata"]["name"], obj["__file__"]
    kubectl = tool_binary("kubectl")
    if kubectl:
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert len([d for d in yaml.safe_load_all(result.stdout) if d]) == len(objects) - 1


@pytest.mark.parametrize("name", ["api", "worker", "tool-worker"])
def test_k8s_deployment_has_probes_limits_a_locked_down_pod_and_grace(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = only_container(deployment)
    assert container["livenessProbe"] and container["readinessProbe"]
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 0) != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] > celery_conf().worker_soft_shutdown_timeout
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "a writable /tmp (the heartbeat file) under the read-only root"
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels.items() <= pod.get("labels", deployment["spec"]["template"]["metadata"]["labels"]).items()


@pytest.mark.parametrize("name", ["worker", "tool-worker"])
def test_k8s_worker_probes_are_the_heartbeat_check(name: str) -> None:
    container = only_container(k8s_object("Deployment", name))
    assert container["livenessProbe"]["exec"]["command"] == HEARTBEAT_PROBE
    assert container["readinessProbe"]["exec"]["command"] == HEARTBEAT_PROBE


def test_k8s_api_probes_are_healthz_and_readyz() -> None:
    container = only_container(k8s_object("Deployment", "api"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("name", ["api", "worker", "tool-worker", "flower"])
def test_k8s_deployment_runs_the_compose_command_and_takes_secrets_from_secret_refs(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    container = only_container(deployment)
    assert container["args"] == load_compose()["services"][name]["command"], "the same as compose"
    refs = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
    refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e]
    volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
    secret_files = {item["path"] for v in volumes if "secret" in v for item in v["secret"].get("items", [])}
    assert refs or secret_files, "secrets come from a Secret"
    compose_secrets = set(load_compose()["services"][name].get("secrets", []))
    assert secret_files == compose_secrets, "the same secret files as compose mounts"
    for env in container.get("env", []):
        if SECRET_VAR_NAME.search(env["name"]) and not NOT_A_SECRET_SUFFIX.search(env["name"]):
            assert "value" not in env, f"{env['name']} has a literal value"


@pytest.mark.parametrize("name", ["worker", "tool-worker"])
def test_k8s_memory_limits_follow_the_compose_rule(name: str) -> None:
    container = only_container(k8s_object("Deployment", name))
    limit = k8s_memory_bytes(container["resources"]["limits"]["memory"])
    assert limit >= worker_memory_floor_bytes(container["args"])


def test_k8s_redis_runs_the_compose_password_script_and_admits_only_the_fleets_pods() -> None:
    redis = only_container(k8s_object("StatefulSet", "redis"))
    assert redis["command"] == load_compose()["services"]["redis"]["command"], "the same script as compose"
    assert "REDISCLI_AUTH" in redis["readinessProbe"]["exec"]["command"][2]
    volumes = k8s_object("StatefulSet", "redis")["spec"]["template"]["spec"]["volumes"]
    assert {"key": "redis_password", "path": "redis_password"} in [
        item for v in volumes if "secret" in v for item in v["secret"]["items"]
    ]
    assert (
        k8s_object("ConfigMap", "fleet-env")["data"]["FLEET_REDIS_PASSWORD_FILE"]
        == "/run/secrets/redis_password"
    )
    policy = k8s_object("NetworkPolicy", "redis")["spec"]
    redis_labels = k8s_object("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [fleet_pods] = [peer["podSelector"] for peer in rule["from"] if "namespaceSelector" not in peer]
    [components] = [
        e["values"] for e in fleet_pods["matchExpressions"] if e["key"] == "app.kubernetes.io/component"
    ]
    assert sorted(components) == sorted(FLEET_SERVICES)
    for name in FLEET_SERVICES:
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert fleet_pods["matchLabels"].items() <= labels.items(), name
    auth = k8s_object("TriggerAuthentication", "redis-auth")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "fleet-secrets", "key": "redis_password"}]
    for target in ("worker", "tool-worker"):
        scaled = next(
            o
            for o in k8s_objects()
            if o["kind"] == "ScaledObject" and o["spec"]["scaleTargetRef"]["name"] == target
        )
        assert all(t["authenticationRef"]["name"] == "redis-auth" for t in scaled["spec"]["triggers"]), target


def test_pod_disruption_budgets_cover_api_worker_and_tool_worker() -> None:
    budgets = [o for o in k8s_objects() if o["kind"] == "PodDisruptionBudget"]
    for name in ("api", "worker", "tool-worker"):
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert covering, f"no PodDisruptionBudget selects {name}"
        spec = covering[0]["spec"]
        assert "minAvailable" in spec or "maxUnavailable" in spec


def redis_triggers(target: str) -> list[dict[str, Any]]:
    scaled = [o for o in k8s_objects() if o["kind"] == "ScaledObject"]
    [obj] = [o for o in scaled if o["spec"]["scaleTargetRef"]["name"] == target]
    assert obj["apiVersion"].startswith("keda.sh/")
    triggers: list[dict[str, Any]] = [t["metadata"] for t in obj["spec"]["triggers"] if t["type"] == "redis"]
    return triggers


def test_keda_scales_agent_workers_on_the_agents_list() -> None:
    [trigger] = redis_triggers("worker")
    assert trigger["listName"] == AGENT_QUEUE
    concurrency = int(load_compose()["services"]["worker"]["command"][1].split("=")[1])
    assert int(trigger["listLength"]) == concurrency, "one replica per `concurrency` waiting runs"
    assert trigger["address"].startswith("redis.")


def test_keda_scales_tool_workers_on_every_tool_queue() -> None:
    from worker import tools

    lists = {t["listName"] for t in redis_triggers("tool-worker")}
    assert lists and all(
        name in ("tools", WEBHOOK_QUEUE, ARCHIVE_QUEUE) or name.startswith("tools.") for name in lists
    )
    # the built-in tools (a test run may also have registered the test plugins' tools)
    builtin = [
        n
        for n in tools.tool_names()
        if (tools.get_tool(n) or tools.get_tool("echo")).fn.__module__.startswith("worker.")
    ]
    assert {"tools", *(tool_queue(n) for n in builtin), WEBHOOK_QUEUE, ARCHIVE_QUEUE} <= lists


def test_k8s_manifests_pass_the_strict_schema_check() -> None:
    """kubernetes-validate --strict against the Kubernetes 1.31 schemas: an unknown or misspelt
    field fails (KEDA's custom resources and the Kustomization have no schema there)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for obj in k8s_objects():
        doc = {k: v for k, v in obj.items() if k != "__file__"}
        if obj["kind"] == "Kustomization" or obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)
        checked += 1
    assert checked >= 15
    misspelt = {**k8s_object("NetworkPolicy", "fleet-egress"), "__file__": None}
    misspelt = {k: v for k, v in misspelt.items() if k != "__file__"}
    misspelt["spec"] = {**misspelt["spec"], "egres": []}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_SCHEMA_VERSION, strict=True)


# -- the preflight as init containers ---------------------------------------------------------------

PREFLIGHT_KINDS = {"api": "api", "worker": "worker", "tool-worker": "tool-worker"}


@pytest.mark.parametrize("name", sorted(PREFLIGHT_KINDS))
def test_k8s_deployment_runs_fleet_doctor_of_its_kind_as_an_init_container(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    container = only_container(deployment)
    [init] = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == container["image"], "the same image"
    assert init["args"] == ["doctor", "--kind", PREFLIGHT_KINDS[name]]
    assert init["envFrom"] == container["envFrom"], "the same environment"
    assert [e for e in container.get("env", []) if e["name"].endswith("_FILE")] == [
        e for e in init.get("env", []) if e["name"].endswith("_FILE")
    ], "the same secret files"
    assert init["volumeMounts"] == container["volumeMounts"], "the same secrets and config"
    assert init["securityContext"] == container["securityContext"]
    assert init["resources"]["limits"]["memory"]

"""The Sentinel deployments: compose's `ha` profile and the kustomize overlay ops/overlays/sentinel.

Static, like tests/ops/: `docker-compose config` with and without the profile, `kubectl
kustomize` of the overlay when kubectl is installed, and the properties the failover relies on
(three Sentinels with a quorum of two, two replicas that follow the primary with its password,
the fleet on a Sentinel URL that parses, disruption budgets that keep a quorum, locked-down pods).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT
from tests.ops.helpers import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    K8S_SCHEMA_VERSION,
    compose_command,
    load_compose,
    tool_binary,
)
from worker.settings import parse_sentinel_url

OVERLAY = ROOT / "ops" / "overlays" / "sentinel"


@pytest.mark.parametrize("profiles", [[], ["--profile", "ha"]])
def test_docker_compose_config_accepts_the_file_with_and_without_the_ha_profile(profiles: list[str]) -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed (.ci/run installs it)")
    result = subprocess.run(
        [*compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), *profiles, "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    services = set(yaml.safe_load(result.stdout)["services"])
    ha = {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert ha <= services  # listed either way; the `profiles: [ha]` below keeps them out of a plain `up`


def test_the_ha_profile_has_two_replicas_of_redis_and_three_sentinels_with_a_quorum_of_two() -> None:
    services = load_compose()["services"]
    for name in ("redis-replica-1", "redis-replica-2"):
        script = services[name]["command"][2]
        assert services[name]["profiles"] == ["ha"]
        assert "replicaof redis 6379" in script and "masterauth $$password" in script, name
        assert services[name]["environment"]["REDIS_ANNOUNCE_NAME"] == name
    assert "masterauth $$password" in services["redis"]["command"][2], "a demoted primary follows the new one"
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = services[name]["command"][2]
        assert services[name]["profiles"] == ["ha"]
        assert "sentinel monitor agentfleet redis 6379 2" in script, name
        assert "auth-pass agentfleet $$(cat /run/secrets/redis_password)" in script
        assert "ports" not in services[name], "no Sentinel port is published"
        assert services[name]["environment"]["SENTINEL_ANNOUNCE_NAME"] == name


def test_env_example_names_the_sentinel_url_that_the_fleet_parses() -> None:
    text = ENV_EXAMPLE.read_text()
    (line,) = [ln for ln in text.splitlines() if "REDIS_URL=redis+sentinel://" in ln]
    parsed = parse_sentinel_url(line.split("REDIS_URL=", 1)[1].strip())
    assert parsed.master == "agentfleet" and [h for h, _ in parsed.sentinels] == [
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
    ]


def overlay_objects() -> list[dict[str, Any]]:
    kubectl = tool_binary("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_sentinel_overlay_points_the_fleet_at_three_sentinels() -> None:
    objects = overlay_objects()
    url = find(objects, "ConfigMap", "fleet-env")["data"]["REDIS_URL"]
    parsed = parse_sentinel_url(url)
    assert parsed.master == "agentfleet" and len(parsed.sentinels) == 3
    sentinels = find(objects, "StatefulSet", "redis-sentinel")
    assert sentinels["spec"]["replicas"] == 3
    script = sentinels["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert f"sentinel monitor {parsed.master} redis-0.redis-nodes 6379 2" in script
    redis = find(objects, "StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 3 and redis["spec"]["serviceName"] == "redis-nodes"
    redis_script = redis["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "masterauth $$password" in redis_script and "replica-announce-ip" in redis_script
    assert all(o["metadata"].get("namespace") == "agentfleet" for o in objects if o["kind"] != "Namespace")


def test_the_sentinel_overlay_has_its_own_disruption_budgets_keeping_a_quorum() -> None:
    objects = overlay_objects()
    sentinel_pdb = find(objects, "PodDisruptionBudget", "redis-sentinel")["spec"]
    assert sentinel_pdb["minAvailable"] == 2
    assert sentinel_pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "redis-sentinel"
    redis_pdb = find(objects, "PodDisruptionBudget", "redis")["spec"]
    assert redis_pdb["maxUnavailable"] == 1
    assert redis_pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"


def test_the_sentinel_pods_are_locked_down_like_the_rest() -> None:
    pod = find(overlay_objects(), "StatefulSet", "redis-sentinel")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"]
    assert container["livenessProbe"] and container["readinessProbe"]


def test_the_overlay_files_are_only_kubernetes_objects_and_its_kustomization() -> None:
    for path in sorted(Path(OVERLAY).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and doc.get("apiVersion") and doc.get("kind"), path.name


def test_the_sentinel_overlay_passes_the_strict_schema_check() -> None:
    """kubernetes-validate --strict, as tests/ops/test_k8s.py checks ops/k8s (KEDA's resources have no
    schema there)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for obj in overlay_objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)
        checked += 1
    assert checked >= 20


def test_the_fleets_pods_may_reach_the_sentinels() -> None:
    policy = find(overlay_objects(), "NetworkPolicy", "fleet-egress-sentinel")["spec"]
    components = policy["podSelector"]["matchExpressions"][0]["values"]
    assert {"api", "worker", "tool-worker", "flower"} <= set(components)
    (rule,) = policy["egress"]
    assert rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis-sentinel"
    assert rule["ports"] == [{"port": 26379, "protocol": "TCP"}]

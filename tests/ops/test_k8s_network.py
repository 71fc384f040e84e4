"""ops/k8s/network.yaml: every fleet pod is egress-isolated; agent workers, the API and Flower
reach only DNS, Redis and the database; tool workers reach the internet but no private range;
and only the ingress controller and Prometheus reach the API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ops.helpers import FLEET_SERVICES, K8S_DIR, k8s_object, k8s_object_file, k8s_objects


def pod_labels(component: str) -> dict[str, str]:
    kind = "StatefulSet" if component == "redis" else "Deployment"
    labels: dict[str, str] = k8s_object(kind, component)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's verdict (matchLabels and the In / NotIn / Exists operators)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def policies_of(component: str, direction: str) -> list[dict[str, Any]]:
    """The NetworkPolicies that select the component's pods for `Ingress` or `Egress`."""
    labels = pod_labels(component)
    return [
        o
        for o in k8s_objects()
        if o["kind"] == "NetworkPolicy"
        and selects(o["spec"]["podSelector"], labels)
        and direction in o["spec"]["policyTypes"]
    ]


def egress_peers(component: str) -> list[tuple[dict[str, Any], list[Any]]]:
    """Every (peer, ports) a component's pods may send to; an empty peer list is "anywhere"."""
    peers = []
    for policy in policies_of(component, "Egress"):
        for rule in policy["spec"].get("egress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            assert rule.get("to"), f"{policy['metadata']['name']}: an egress rule to anywhere"
            peers += [(peer, ports) for peer in rule["to"]]
    return peers


def is_dns(peer: dict[str, Any], ports: list[Any]) -> bool:
    return (
        peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "kube-system"}
        and peer.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}
        and set(ports) == {53}
    )


def is_redis(peer: dict[str, Any], ports: list[Any]) -> bool:
    return (
        "namespaceSelector" not in peer
        and "podSelector" in peer
        and selects(peer["podSelector"], pod_labels("redis"))
        and not selects(peer["podSelector"], pod_labels("api"))
        and ports == [6379]
    )


def is_database(peer: dict[str, Any], ports: list[Any]) -> bool:
    import ipaddress

    block = peer.get("ipBlock")
    return bool(block) and ipaddress.ip_network(block["cidr"]).is_private and ports == [5432]


PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
                  "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128")  # fmt: skip


def test_network_policies_are_in_the_kustomization_and_every_fleet_pod_is_egress_isolated() -> None:
    kustomization = k8s_object_file("kustomization.yaml")
    assert "network.yaml" in kustomization["resources"]
    assert {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"} <= set(
        kustomization["resources"]
    )
    for name in FLEET_SERVICES:
        assert policies_of(name, "Egress"), f"{name}: no egress policy selects its pods"


@pytest.mark.parametrize("name", ["worker", "api", "flower"])
def test_agent_workers_api_and_flower_reach_only_dns_redis_and_the_database(name: str) -> None:
    peers = egress_peers(name)
    assert any(is_dns(p, ports) for p, ports in peers) and any(is_redis(p, ports) for p, ports in peers)
    for peer, ports in peers:
        assert (
            is_dns(peer, ports) or is_redis(peer, ports) or (name != "flower" and is_database(peer, ports))
        ), f"{name} may reach {peer} {ports}"


def test_tool_workers_reach_the_internet_but_no_private_range() -> None:
    import ipaddress

    peers = egress_peers("tool-worker")
    open_blocks = [p["ipBlock"] for p, ports in peers if "ipBlock" in p and not ports]
    assert {b["cidr"] for b in open_blocks} == {"0.0.0.0/0", "::/0"}, "the internet, any port"
    excluded = [ipaddress.ip_network(c) for b in open_blocks for c in b.get("except", [])]
    for private in map(ipaddress.ip_network, PRIVATE_RANGES):
        assert any(private.subnet_of(e) for e in excluded if e.version == private.version), private  # type: ignore[arg-type]
    # beyond the internet: DNS, Redis, the database and the documented list (empty as shipped)
    for peer, ports in peers:
        if "ipBlock" in peer and not ports:
            continue
        assert is_dns(peer, ports) or is_redis(peer, ports) or is_database(peer, ports), peer
    documented = k8s_object("NetworkPolicy", "tool-worker-internal-upstreams")
    assert selects(documented["spec"]["podSelector"], pod_labels("tool-worker"))
    assert not selects(documented["spec"]["podSelector"], pod_labels("worker"))


def test_the_api_admits_only_the_ingress_controller_and_prometheus() -> None:
    [policy] = policies_of("api", "Ingress")
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    namespaces = set()
    for peer in rule["from"]:
        assert "namespaceSelector" in peer and "podSelector" in peer, "a named namespace and pods"
        namespaces.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    assert namespaces == {"ingress-nginx", "monitoring"}
    [redis_policy] = policies_of("redis", "Ingress")
    assert redis_policy["metadata"]["name"] == "redis", "one ingress policy for Redis (redis.yaml)"

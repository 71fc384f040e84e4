"""ops/k8s/ against the Kubernetes 1.31 API schemas, strictly (kubernetes-validate --strict).

No cluster runs here: its node images come from a registry this project's CI does not reach. A
strict schema check rejects what `kubectl apply` would reject or silently drop: a misspelt or
misplaced field, a wrong type, a missing required field. KEDA's ScaledObject and
TriggerAuthentication and the Kustomization are custom kinds without a schema in the package;
tests/ops/test_k8s.py checks what they say.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

K8S_DIR = ROOT / "ops" / "k8s"
KUBERNETES_VERSION = "1.31"
# Kinds that no Kubernetes schema covers: CRDs of KEDA, and kustomize's own file.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "Kustomization"}


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert exe, "kubernetes-validate is a test dependency (pyproject [test])"
    return subprocess.run(
        [exe, "--kubernetes-version", KUBERNETES_VERSION, "--strict", *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_every_k8s_object_passes_the_strict_schema_of_kubernetes_1_31() -> None:
    files = sorted(K8S_DIR.glob("*.yaml"))
    assert len(files) >= 5
    result = validate(*files)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    passed = re.findall(r"passed for resource (\w+)/([\w.-]+)", out)
    kinds = {kind for kind, _ in passed}
    assert {"deployment", "service", "statefulset", "configmap", "poddisruptionbudget"} <= kinds, out
    assert ("deployment", "worker") in passed and ("deployment", "api") in passed, out
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", out))
    assert unchecked <= CUSTOM_KINDS, f"kinds left unchecked: {unchecked - CUSTOM_KINDS}\n{out}"


def test_strict_validation_rejects_a_misplaced_field(tmp_path: Path) -> None:
    """The check above could fail: a field Kubernetes does not know is an error under --strict."""
    worker = (K8S_DIR / "worker.yaml").read_text()
    assert "      containers:\n" in worker
    broken = tmp_path / "worker.yaml"
    broken.write_text(worker.replace("      containers:\n", "      containerz: []\n      containers:\n", 1))
    result = validate(broken)
    assert result.returncode != 0, result.stdout
    assert "containerz" in result.stdout + result.stderr

"""Helpers shared by the chart, manifest and image tests (a plain module: test files import it).

Rendering uses helm-python-sdk (the real Helm engine, no helm binary); validation uses kubernetes-validate's
strict schemas (unknown fields are errors) for one pinned Kubernetes release.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llm-sidecar"
K8S = REPO / "k8s"

# Native sidecars (restartPolicy: Always on an init container) need >= 1.29; kubectl here is 1.32.
KUBE_VERSION = "1.32.0"

# Prometheus Operator and cert-manager CRDs: kubernetes-validate ships only the core API schemas, so these
# kinds cannot be validated here. They are skipped by name (and only these); anything else without a schema
# fails.
CRD_KINDS_WITHOUT_SCHEMA = frozenset({"PodMonitor", "ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"})


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``text``."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate_strict(objects: list[dict[str, Any]]) -> list[str]:
    """Validate each object in strict mode; return the kinds skipped for lack of a schema.

    Fails the test on the first invalid object, naming it and the offending field.
    """
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    skipped = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kv.validate(obj, KUBE_VERSION, strict=True)
        except kv.SchemaNotFoundError:
            if obj["kind"] not in CRD_KINDS_WITHOUT_SCHEMA:
                raise
            skipped.append(obj["kind"])
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} is not valid Kubernetes {KUBE_VERSION}: {path}: {exc.message}")
    return skipped


def check_config(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the contract's ``python -m sidecar check-config`` on a rendered config.

    ``file:`` key paths point into the pod; they are moved under ``tmp_path`` and filled with dummy keys,
    so the check sees readable files. Skips only while ``sidecar.cli`` cannot be imported (the CLI is
    being written); any other failure is a test failure.
    """
    try:
        import sidecar.cli  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"sidecar.cli not importable yet ({exc}); check-config runs once the CLI lands")
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(exist_ok=True)

    def local_key(match: re.Match[str]) -> str:
        target = keys_dir / Path(match.group(1)).name
        target.write_text("sk-test-not-a-real-key\n")
        return f"file:{target}"

    # Text substitution, not a YAML round trip: the sidecar must read exactly what was rendered.
    path = tmp_path / "config.yaml"
    path.write_text(re.sub(r"file:(/\S+)", local_key, config_text))
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )

"""A pod, the template and the pod's choices → the JSON Patch (RFC 6902) that adds the sidecar.

What is added, as the named templates render it for an application chart:
- the container: first among the init containers in the native form (so the app's own init containers
  can already call it), or last among the containers in the classic form;
- its volumes (config, provider keys, /tmp); the config volume names the pod's ConfigMap when chosen;
- ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` on each app container that does not set them;
- the pod labels and annotations (never overwriting the pod's own), ``llm-sidecar.io/status: injected``,
  and a termination grace period at least the template's.
A pod that already has a container or volume by one of those names is refused rather than half-patched.
"""

from __future__ import annotations

from typing import Any

from sidecar.injector.annotations import STATUS, AnnotationError, Choices
from sidecar.injector.template import CONFIG_VOLUME, SIDECAR_NAME, Template

Op = dict[str, Any]


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901): ``~`` and ``/`` in keys escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def has_sidecar(spec: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("name") == SIDECAR_NAME
               for c in _list(spec, "initContainers") + _list(spec, "containers"))


def build(pod: dict[str, Any], template: Template, choices: Choices) -> list[Op]:
    spec = pod["spec"]
    form = choices.form or template.form
    container = template.sidecar(form)
    for kind, values in choices.resources.items():
        container.setdefault("resources", {}).setdefault(kind, {}).update(values)
    ops: list[Op] = []
    if form == "native":
        ops += _insert(spec, "initContainers", container, first=True)
    else:
        ops += _insert(spec, "containers", container, first=False)
    ops += _volumes(spec, template, choices)
    ops += _app_env(spec, template.api_port)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is None or grace < template.termination_grace_seconds:
        ops.append({"op": "add", "path": "/spec/terminationGracePeriodSeconds",
                    "value": template.termination_grace_seconds})
    metadata = pod.get("metadata") or {}
    ops += _merge(metadata, "labels", template.pod_labels)
    ops += _merge(metadata, "annotations", {**template.pod_annotations, STATUS: "injected"})
    return ops


def _list(spec: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = spec.get(key)
    return value if isinstance(value, list) else []


def _insert(spec: dict[str, Any], key: str, item: dict[str, Any], *, first: bool) -> list[Op]:
    if not _list(spec, key):
        return [{"op": "add", "path": pointer("spec", key), "value": [item]}]
    return [{"op": "add", "path": pointer("spec", key, 0 if first else "-"), "value": item}]


def _volumes(spec: dict[str, Any], template: Template, choices: Choices) -> list[Op]:
    taken = {v.get("name") for v in _list(spec, "volumes")}
    clashes = sorted(taken & {v["name"] for v in template.volumes})
    if clashes:
        raise AnnotationError(f"the pod already has volumes named {', '.join(clashes)}; the sidecar needs them")
    volumes = []
    for volume in template.volumes:
        if volume["name"] == CONFIG_VOLUME and choices.config_map is not None:
            volume = {**volume, "configMap": {**volume["configMap"], "name": choices.config_map}}
        volumes.append(volume)
    if not _list(spec, "volumes"):
        return [{"op": "add", "path": "/spec/volumes", "value": volumes}]
    return [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes]


def _app_env(spec: dict[str, Any], port: int) -> list[Op]:
    """The base URLs on every app container that does not set them itself."""
    wanted = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"}
    ops: list[Op] = []
    for i, container in enumerate(_list(spec, "containers")):
        env = container.get("env") if isinstance(container.get("env"), list) else None
        present = {e.get("name") for e in env or []}
        missing = [{"name": name, "value": value} for name, value in wanted.items() if name not in present]
        if not missing:
            continue
        if env is None:
            ops.append({"op": "add", "path": pointer("spec", "containers", i, "env"), "value": missing})
        else:
            ops += [{"op": "add", "path": pointer("spec", "containers", i, "env", "-"), "value": e} for e in missing]
    return ops


def _merge(metadata: dict[str, Any], key: str, wanted: dict[str, str]) -> list[Op]:
    """Add ``wanted`` entries to ``metadata[key]`` that the pod does not set already."""
    current = metadata.get(key)
    if not isinstance(current, dict):
        return [{"op": "add", "path": pointer("metadata", key), "value": dict(wanted)}] if wanted else []
    return [{"op": "add", "path": pointer("metadata", key, name), "value": value}
            for name, value in wanted.items() if name not in current]

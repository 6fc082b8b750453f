"""The injection template: what the chart's named templates render, read from the injector's ConfigMap.

The chart renders ``llm-sidecar.container``, ``llm-sidecar.volumes``, the pod labels and annotations and
the termination grace period into one YAML document, so an injected pod gets exactly what an application
chart that includes the templates gets — one source of truth, the chart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

SIDECAR_NAME = "llm-sidecar"
CONFIG_VOLUME = "llm-sidecar-config"
FORMS = ("native", "classic")


class TemplateError(ValueError):
    """The template file is not what the chart renders."""


@dataclass(frozen=True, slots=True)
class Template:
    container: dict[str, Any]  # without restartPolicy: the form decides it
    volumes: tuple[dict[str, Any], ...]
    pod_labels: dict[str, str]
    pod_annotations: dict[str, str]
    termination_grace_seconds: int
    form: str  # the default form: native or classic
    api_port: int

    def sidecar(self, form: str) -> dict[str, Any]:
        """A fresh copy of the container in ``form`` (a native sidecar is an init container that restarts)."""
        container = copy.deepcopy(self.container)
        if form == "native":
            container["restartPolicy"] = "Always"
        return container


def parse_template(text: str | bytes) -> Template:
    """The template from its YAML; ``TemplateError`` names what is missing or wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TemplateError("expected a mapping")
    containers = data.get("containers")
    if not isinstance(containers, list) or len(containers) != 1 or not isinstance(containers[0], dict):
        raise TemplateError("containers: expected exactly one container")
    container = dict(containers[0])
    if container.get("name") != SIDECAR_NAME:
        raise TemplateError(f"containers[0].name: expected {SIDECAR_NAME}")
    container.pop("restartPolicy", None)
    volumes = data.get("volumes")
    if not isinstance(volumes, list) or not all(isinstance(v, dict) and v.get("name") for v in volumes):
        raise TemplateError("volumes: expected a list of named volumes")
    if not any(v["name"] == CONFIG_VOLUME and "configMap" in v for v in volumes):
        raise TemplateError(f"volumes: the {CONFIG_VOLUME} configMap volume is missing")
    form = data.get("form", "native")
    if form not in FORMS:
        raise TemplateError(f"form: expected one of {', '.join(FORMS)}")
    return Template(container, tuple(volumes), _strings(data, "podLabels"), _strings(data, "podAnnotations"),
                    _integer(data, "terminationGracePeriodSeconds", 30), form, _integer(data, "apiPort", 4000))


def _strings(data: dict[str, Any], key: str) -> dict[str, str]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise TemplateError(f"{key}: expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _integer(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TemplateError(f"{key}: expected a non-negative integer")
    return value

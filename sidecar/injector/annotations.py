"""A pod's choices, from its annotations (``llm-sidecar.io/...``), validated before anything is patched.

    llm-sidecar.io/inject: "true" | "false"     opt in (or out, in a namespace labelled for injection)
    llm-sidecar.io/config: <ConfigMap>          the config to mount (default: the chart's)
    llm-sidecar.io/form: native | classic       where the container goes (default: the chart's sidecar.form)
    llm-sidecar.io/cpu-request, cpu-limit, memory-request, memory-limit: <quantity>

Written by the injector: ``llm-sidecar.io/status: injected``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.injector.template import FORMS

PREFIX = "llm-sidecar.io/"
INJECT = PREFIX + "inject"
CONFIG = PREFIX + "config"
FORM = PREFIX + "form"
STATUS = PREFIX + "status"
RESOURCES = {  # annotation → (requests | limits, resource)
    PREFIX + "cpu-request": ("requests", "cpu"),
    PREFIX + "cpu-limit": ("limits", "cpu"),
    PREFIX + "memory-request": ("requests", "memory"),
    PREFIX + "memory-limit": ("limits", "memory"),
}
KNOWN = frozenset({INJECT, CONFIG, FORM, STATUS, *RESOURCES})
# Kubernetes resource quantities (apimachinery's resource.Quantity): a decimal number and a suffix.
QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i|[mkMGTPE])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class AnnotationError(ValueError):
    """An opted-in pod's annotation that cannot be honoured: the pod is refused with this message."""


@dataclass(frozen=True, slots=True)
class Choices:
    config_map: str | None = None
    form: str | None = None
    resources: dict[str, dict[str, str]] = field(default_factory=dict)  # requests/limits → {cpu, memory}


def opt_in(annotations: Mapping[str, str], default: bool) -> tuple[bool, str | None]:
    """(inject?, a warning for the user). ``default``: the namespace opted in for every pod."""
    value = annotations.get(INJECT)
    if value is None:
        return default, None
    normalized = value.strip().lower()
    if normalized in ("true", "false"):
        return normalized == "true", None
    return False, f"{INJECT}: '{value}' is neither true nor false; the sidecar was not added"


def choices(annotations: Mapping[str, str]) -> Choices:
    """The pod's choices; ``AnnotationError`` lists every annotation that is wrong."""
    problems: list[str] = []
    config_map = annotations.get(CONFIG)
    if config_map is not None and (len(config_map) > 253 or not DNS_SUBDOMAIN.match(config_map)):
        problems.append(f"{CONFIG}: '{config_map}' is not a ConfigMap name")
    form = annotations.get(FORM)
    if form is not None and form not in FORMS:
        problems.append(f"{FORM}: '{form}' is not one of {', '.join(FORMS)}")
    resources: dict[str, dict[str, str]] = {}
    for key, (kind, resource) in RESOURCES.items():
        value = annotations.get(key)
        if value is None:
            continue
        if not QUANTITY.match(value.strip()):
            problems.append(f"{key}: '{value}' is not a Kubernetes quantity (e.g. 100m, 256Mi)")
            continue
        resources.setdefault(kind, {})[resource] = value.strip()
    unknown = sorted(k for k in annotations if k.startswith(PREFIX) and k not in KNOWN)
    problems += [f"{k}: unknown annotation (known: {', '.join(sorted(KNOWN - {STATUS}))})" for k in unknown]
    if problems:
        raise AnnotationError("; ".join(problems))
    return Choices(config_map, form, resources)

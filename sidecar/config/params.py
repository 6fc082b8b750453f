"""A deployment's request parameters from LiteLLM's keys: completion defaults in ``litellm_params``
(``temperature``, ``max_tokens``, ``reasoning_effort``…, under ``router_settings.default_litellm_params``),
``extra_body``, ``additional_drop_params`` and ``drop_params`` (the deployment's, else
``litellm_settings.drop_params``). Resolved once per deployment; ``None`` when a deployment sets none of
them, so its requests go to the adapter untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.litellm import COMPLETION_DEFAULTS
from sidecar.config.reader import Section


@dataclass(frozen=True, slots=True)
class RequestParams:
    """What a deployment changes in each request before (``defaults``, ``drop``) and after (``extra_body``)
    translation, and whether a field its provider cannot take is dropped (``drop_unsupported``)."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    drop_unsupported: bool = False

    @property
    def changes_request(self) -> bool:
        return bool(self.defaults or self.drop or self.drop_unsupported)


def request_params(params: Section, shared_defaults: Mapping[str, Any], drop_all: bool) -> RequestParams | None:
    """Read a deployment's parameters from its ``litellm_params`` (``params``)."""
    defaults = dict(shared_defaults)
    for name in COMPLETION_DEFAULTS:
        value = params.get(name)
        if value is not None:
            defaults[name] = value
    extra = params.mapping("extra_body")
    drop = params.list("additional_drop_params")
    if not all(isinstance(d, str) and d for d in drop):
        params.problem("additional_drop_params", "expected a list of field names")
        drop = []
    own = params.boolean("drop_params", None)
    settings = RequestParams(defaults=defaults, extra_body={str(k): v for k, v in extra.items()},
                             drop=frozenset(drop), drop_unsupported=bool(drop_all if own is None else own))
    if not (settings.changes_request or settings.extra_body):
        return None
    return settings


def shared_defaults(router: Section) -> dict[str, Any]:
    """``router_settings.default_litellm_params``: completion defaults for every deployment."""
    out = {}
    for name, value in router.mapping("default_litellm_params").items():
        if name in COMPLETION_DEFAULTS:
            out[name] = value
        else:
            router.warn(f"default_litellm_params.{name}",
                        "ignored: only completion defaults (temperature, max_tokens, …) apply to every deployment")
    return out

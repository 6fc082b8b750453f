"""The parts of a ``model_list`` entry LiteLLM reads beyond the basics: named credentials
(``credential_list`` + ``litellm_credential_name``), the model reference (``config.references``), the key and
address a deployment leaves to the environment, headers (``extra_headers``, ``headers``, ``organization``)
and ``model_info``'s prices, limits and capability flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.litellm import CAPABILITIES
from sidecar.config.reader import Secret, SecretResolver, Section
from sidecar.config.references import KEY_VARIABLES, PROVIDERS, WILDCARD, ModelRef, default_base, parse_reference

ORGANIZATION_HEADER = "OpenAI-Organization"


@dataclass(frozen=True, slots=True)
class Context:
    """What every deployment is read with: secrets, the environment and the config-wide LiteLLM settings."""

    secrets: SecretResolver
    env: Mapping[str, str]
    defaults: Mapping[str, Any]  # router_settings.default_litellm_params
    drop_params: bool  # litellm_settings.drop_params
    credentials: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def wildcard_keys(self) -> dict[str, Secret]:
        """The provider keys in the environment, for ``model: "*"`` deployments (any provider)."""
        return {p: Secret(self.env[v]) for p, v in KEY_VARIABLES.items() if self.env.get(v)}

    def wildcard_bases(self) -> dict[str, str]:
        """Every provider's address, from the environment or its default, for ``model: "*"`` deployments."""
        return {p: base for p in PROVIDERS if (base := default_base(p, self.env))}


def credentials(root: Section) -> dict[str, Mapping[str, Any]]:
    """``credential_list``: ``[{credential_name, credential_values: {api_key, api_base, …}, credential_info}]``."""
    out: dict[str, Mapping[str, Any]] = {}
    for i, item in enumerate(root.list("credential_list", sections=True)):
        entry = root.child(item, f"credential_list[{i}]", policy="credential_list[]")
        name = entry.string("credential_name", None, required=True)
        values = entry.mapping("credential_values")
        entry.get("credential_info")
        entry.finish()
        if name is not None:
            out[name] = values
    return out


def params_section(entry: Section, context: Context) -> Section:
    """``litellm_params``, with the values of its named credential under its own."""
    raw = entry.data.get("litellm_params")
    if isinstance(raw, dict) and raw.get("litellm_credential_name") is not None:
        name = raw["litellm_credential_name"]
        values = context.credentials.get(name) if isinstance(name, str) else None
        if values is None:
            entry.report(f"{entry.where}.litellm_params.litellm_credential_name",
                         f"no credential named {name!r} in credential_list")
        else:
            entry.data["litellm_params"] = {**values, **raw}  # the tree is our own copy (config.environ)
    params = entry.section("litellm_params", required=True, policy="model_list[].litellm_params")
    params.get("litellm_credential_name")
    return params


def reference(params: Section, model_name: str | None) -> ModelRef | None:
    """The deployment's provider and model, or None (with the problem recorded)."""
    ref = params.string("model", None, required=True)
    custom = params.string("custom_llm_provider", None)
    if ref is None:
        return None
    if custom is not None and custom not in PROVIDERS:
        parsed: ModelRef | str = parse_reference(f"{custom}/{ref}")
    else:
        parsed = parse_reference(ref, custom)
    if isinstance(parsed, str):
        params.problem("model", f"{parsed} (model_name '{model_name}')" if model_name else parsed)
        return None
    if parsed.wildcard and (model_name is None or WILDCARD not in model_name):
        params.problem("model", f"a '*' in model needs a '*' in model_name to take it from (got '{model_name}')")
        return None
    return parsed


def api_key(params: Section, provider: str, context: Context) -> Secret | None:
    """The deployment's key: ``api_key``, else the provider's usual variable (LiteLLM reads it too)."""
    ref = params.get("api_key")
    if ref is not None:
        return context.secrets.resolve(ref, f"{params.where}.api_key")
    variable = KEY_VARIABLES.get(provider)
    value = context.env.get(variable) if variable else None
    return Secret(value) if value else None


def headers(params: Section, provider: str) -> tuple[tuple[str, str], ...]:
    """``headers`` and ``extra_headers`` (the latter wins), and OpenAI's organization header."""
    merged = {**params.mapping("headers"), **params.mapping("extra_headers")}
    organization = params.string("organization", None)
    if organization is not None:
        if provider in ("openai", "azure"):
            merged.setdefault(ORGANIZATION_HEADER, organization)
        else:
            params.warn("organization", f"ignored: it applies to openai and azure deployments, not {provider}")
    return tuple((str(k), str(v)) for k, v in merged.items())


def model_info_values(info: Section, params: Section) -> dict[str, Any]:
    """``model_info``'s prices, limits and ``supports_*`` flags (prices may also be in ``litellm_params``)."""
    max_output = info.integer("max_output_tokens", None, minimum=1)
    legacy = info.integer("max_tokens", None, minimum=1)  # LiteLLM's older name for the output limit
    capabilities = {}
    for name in CAPABILITIES:
        flag = info.boolean(name, None)
        if flag is not None:
            capabilities[name] = flag
    prices = {}
    for name in ("input_cost_per_token", "output_cost_per_token"):
        own, in_params = info.number(name, None, minimum=0), params.number(name, None, minimum=0)
        prices[name] = own if own is not None else in_params
    return {
        **prices,
        "cache_read_input_token_cost": info.number("cache_read_input_token_cost", None, minimum=0),
        "max_input_tokens": info.integer("max_input_tokens", None, minimum=1),
        "max_output_tokens": max_output if max_output is not None else legacy,
        "capabilities": capabilities,
        "tags": _tags(info),
    }


@dataclass(frozen=True, slots=True)
class BetaRules:
    """``litellm_params.anthropic_betas``: which of the app's ``anthropic-beta`` flags an Anthropic deployment
    receives (``allow`` None: every flag not denied; an entry ending in ``*`` matches by prefix)."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


BETA_PROVIDERS = ("anthropic", "bedrock")


def beta_rules(params: Section, provider: str) -> BetaRules | None:
    """``anthropic_betas: {allow: [...], deny: [...]}`` (ours, strict), for Anthropic and Bedrock deployments."""
    if params.data.get("anthropic_betas") is None:
        params.raw("anthropic_betas")
        return None
    section = params.section("anthropic_betas")
    lists: dict[str, tuple[str, ...] | None] = {}
    for name in ("allow", "deny"):
        value = section.get(name)
        if value is None:
            lists[name] = None
        elif isinstance(value, list) and all(isinstance(v, str) and v.strip() and "," not in v for v in value):
            lists[name] = tuple(v.strip() for v in value)
        else:
            section.problem(name, "expected a list of beta flags (e.g. context-management-2025-06-27 or effort-*)")
            lists[name] = None
    section.finish()
    if provider not in BETA_PROVIDERS:
        params.warn("anthropic_betas", f"ignored: only {', '.join(BETA_PROVIDERS)} deployments receive beta "
                                       f"flags, not {provider}")
        return None
    return BetaRules(lists["allow"], lists["deny"] or ())


def _tags(info: Section) -> frozenset[str]:
    """``model_info.tags``: a list of names that request rules require or exclude."""
    tags = info.list("tags")
    if not all(isinstance(t, str) and t for t in tags):
        info.problem("tags", "expected a list of tag names")
        return frozenset()
    return frozenset(tags)

"""Wildcard model groups, as LiteLLM routes them: ``model_name: "openai/*"`` (or ``"*"``, ``"claude-*"``)
serves every model name it matches, each ``*`` of the name standing for one ``*`` of the deployment's
``litellm_params.model`` (``model: openai/*``: the app's ``openai/gpt-4o`` calls OpenAI's ``gpt-4o``; with
``model: "*"`` the provider comes from the name itself: ``gpt-4o`` → openai, ``anthropic/claude-…`` →
anthropic). Exact names always win; among patterns the most specific one does.

Pure: ``expand`` builds the concrete model group for one name; the router keeps the groups it built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sidecar.config.reader import Secret
from sidecar.config.references import WILDCARD, ModelRef, parse_reference, root_base, unique_id

if TYPE_CHECKING:
    from sidecar.config.model import Deployment


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A model group whose name has a ``*``; ``deployments`` are templates; ``keys`` and ``bases`` are what
    LiteLLM would read from the environment, for templates whose provider comes from the name."""

    pattern: str
    regex: re.Pattern[str]
    deployments: tuple[Deployment, ...]
    keys: Mapping[str, Secret]
    bases: Mapping[str, str]  # each provider's address (its variable, else its default)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + "(.*)".join(re.escape(part) for part in pattern.split(WILDCARD)) + "$", re.DOTALL)


def ordered(wildcards: Iterable[Wildcard]) -> tuple[Wildcard, ...]:
    """Most specific first: more literal characters, then fewer wildcards (LiteLLM's order)."""
    return tuple(sorted(wildcards, key=lambda w: (-len(w.pattern.replace(WILDCARD, "")),
                                                  w.pattern.count(WILDCARD))))


def match(wildcards: Iterable[Wildcard], name: str) -> tuple[Wildcard, tuple[str, ...]] | None:
    for wildcard in wildcards:
        found = wildcard.regex.match(name)
        if found is not None:
            return wildcard, found.groups()
    return None


def substitute(template: str, name: str, segments: tuple[str, ...]) -> str:
    """The template's ``*``s filled from the matched segments, in order; the name itself when they do not fit."""
    if WILDCARD not in template:
        return template
    if len(segments) > template.count(WILDCARD) or not segments:
        return name
    for segment in segments:
        template = template.replace(WILDCARD, segment, 1)
    return template


def expand(wildcard: Wildcard, name: str, segments: tuple[str, ...]) -> list[Deployment] | str:
    """The deployments serving ``name``, or why it cannot be served."""
    out: list[Deployment] = []
    seen: set[str] = set()
    for template in wildcard.deployments:
        concrete = _concrete(template, wildcard, name, segments)
        if isinstance(concrete, str):
            return concrete
        concrete = replace(concrete, id=unique_id(concrete.id, seen))
        seen.add(concrete.id)
        out.append(concrete)
    return out


def _concrete(template: Deployment, wildcard: Wildcard, name: str, segments: tuple[str, ...]) -> Deployment | str:
    filled = substitute(template.model, name, segments)
    if template.provider:
        ref: ModelRef | str = ModelRef(template.provider, filled)
    else:
        ref = parse_reference(filled)
    if isinstance(ref, str):
        return f"the model '{name}' cannot be served: {ref}"
    if WILDCARD in ref.model or not ref.model:
        return f"the model '{name}' does not name a model for {wildcard.pattern}"
    api_base, api_key = template.api_base, template.api_key
    if not template.provider:
        api_base = api_base or root_base(ref.provider, wildcard.bases.get(ref.provider) or "")
        api_key = api_key or wildcard.keys.get(ref.provider)
        if ref.provider == "bedrock" or (not api_base and ref.provider != "vertex_ai"):
            return f"the model '{name}' needs a deployment of its own for provider '{ref.provider}'"
    aws = replace(template.aws, model_id=ref.model) if template.aws is not None else None
    return replace(template, id=f"{ref.provider}/{ref.model}", model_name=name, provider=ref.provider,
                   model=ref.model, api_base=api_base, api_key=api_key, aws=aws)

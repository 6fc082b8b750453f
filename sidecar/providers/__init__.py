"""Provider adapters by prefix: ``ADAPTERS[deployment.provider](deployment)`` binds one."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sidecar.config import Deployment
from sidecar.providers.anthropic import AnthropicAdapter
from sidecar.providers.base import Adapter
from sidecar.providers.bedrock import BedrockAdapter
from sidecar.providers.gemini import GeminiAdapter
from sidecar.providers.openai_compatible import ROWS, OpenAICompatibleAdapter
from sidecar.providers.params import ParamsAdapter

ADAPTERS: Mapping[str, Callable[[Deployment], Adapter]] = {
    **{name: OpenAICompatibleAdapter for name in ROWS},
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "vertex_ai": GeminiAdapter,
    "bedrock": BedrockAdapter,
}


def bind(deployment: Deployment) -> Adapter:
    """The adapter for a deployment (wrapped when it sets request parameters: ``providers.params``).
    ``KeyError`` for a provider with no adapter in this build."""
    adapter = ADAPTERS[deployment.provider](deployment)
    params = deployment.params
    return ParamsAdapter(adapter, params) if params is not None and params.changes_request else adapter

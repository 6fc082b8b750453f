"""Model references as LiteLLM resolves them: ``<provider>/<model>``, a bare name whose provider its prefix
tells (``gpt-4o`` → openai), ``custom_llm_provider`` with a bare name, and wildcards (``openai/*``, ``*``)
whose model comes from the app's request.

Also what LiteLLM reads from the environment when a deployment leaves it out: the provider's usual key
variable (``OPENAI_API_KEY``, …). Providers LiteLLM knows and the sidecar does not serve yet get an error
that says so, naming the deployment.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.core.redact import looks_secret

PROVIDERS: Mapping[str, str | None] = {
    # provider prefix → default api_base (None: must be configured)
    "openai": "https://api.openai.com/v1",
    "azure": None,
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "vertex_ai": None,
    "groq": "https://api.groq.com/openai/v1",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "ollama": "http://localhost:11434/v1",
    "ollama_chat": "http://localhost:11434/v1",  # LiteLLM's /api/chat route; the same server's OpenAI API here
    "hosted_vllm": None,
    "sglang": "http://localhost:30000/v1",
    "bedrock": None,  # https://bedrock-runtime.<region>.amazonaws.com, from the region (config/aws.py)
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/beta",
    "xai": "https://api.x.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "cerebras": "https://api.cerebras.ai/v1",
    "perplexity": "https://api.perplexity.ai",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "huggingface": "https://router.huggingface.co/v1",
    "lm_studio": "http://localhost:1234/v1",
    "llamafile": "http://127.0.0.1:8080/v1",
    "nvidia_nim": "https://integrate.api.nvidia.com/v1",
    "dashscope": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    "github": None,  # GitHub Models: set api_base to the inference endpoint your account uses
    "litellm_proxy": None,  # a LiteLLM proxy upstream (OpenAI format)
}

#: Providers LiteLLM serves that need their own wire format here: a clear error until they have an adapter.
NOT_YET: frozenset[str] = frozenset({
    "cohere", "cohere_chat", "voyage", "cloudflare", "text-completion-openai", "text-completion-codestral",
    "replicate", "sagemaker", "sagemaker_chat", "watsonx", "watsonx_text", "ai21", "ai21_chat", "databricks",
    "clarifai", "predibase", "palm", "vertex_ai_beta", "azure_ai", "azure_text", "jina_ai", "infinity", "triton",
    "nlp_cloud", "aleph_alpha", "baseten", "petals", "oobabooga", "maritalk", "vllm", "custom", "openai_like",
    "custom_openai", "codestral", "friendliai", "sambanova", "nebius", "novita", "hyperbolic", "featherless_ai",
    "lambda_ai", "nscale", "moonshot", "volcengine", "galadriel", "github_copilot", "anyscale", "empower",
    "xinference", "snowflake", "gradient_ai", "llama", "meta_llama", "v0", "morph", "datarobot", "topaz",
    "elevenlabs", "assemblyai", "deepgram", "openai_compatible", "recraft", "fal_ai", "qwencloud",
})

#: A bare model name's provider, by prefix (LiteLLM finds it in its model list; these are the families).
INFERRED: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), provider) for p, provider in (
    (r"^(gpt-|chatgpt-|text-embedding-|omni-moderation|davinci-|babbage-|o\d(-|$))", "openai"),
    (r"^claude-", "anthropic"),
    (r"^gemini-", "gemini"),
    (r"^grok-", "xai"),
    (r"^deepseek-", "deepseek"),
    (r"^(mistral-|codestral-|ministral-|pixtral-|magistral-|open-mistral-|open-mixtral-)", "mistral"),
    (r"^command-", "cohere"),
))

#: What LiteLLM reads when a deployment has no api_key (and no api_base for Azure).
KEY_VARIABLES: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY", "groq": "GROQ_API_KEY", "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY", "mistral": "MISTRAL_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
    "xai": "XAI_API_KEY", "openrouter": "OPENROUTER_API_KEY", "cerebras": "CEREBRAS_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY", "deepinfra": "DEEPINFRA_API_KEY", "huggingface": "HF_TOKEN",
    "nvidia_nim": "NVIDIA_NIM_API_KEY", "dashscope": "DASHSCOPE_API_KEY", "github": "GITHUB_API_KEY",
}
BASE_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_BASE"), "azure": ("AZURE_API_BASE",),
    "anthropic": ("ANTHROPIC_API_BASE",), "hosted_vllm": ("HOSTED_VLLM_API_BASE",),
    "ollama": ("OLLAMA_API_BASE",), "ollama_chat": ("OLLAMA_API_BASE",), "nvidia_nim": ("NVIDIA_NIM_API_BASE",),
    "dashscope": ("DASHSCOPE_API_BASE",),
}
#: Hosts whose LiteLLM api_base is the server's root; their OpenAI API is under /v1.
ROOT_BASES = frozenset({"ollama", "ollama_chat"})
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A resolved ``litellm_params.model``: ``provider`` is "" for ``*`` (taken from each request's name)."""

    provider: str
    model: str

    @property
    def wildcard(self) -> bool:
        return WILDCARD in self.model


def parse_reference(ref: str, custom_provider: str | None = None) -> ModelRef | str:
    """The provider and model of ``ref``, or the problem with it (a message)."""
    if ref == WILDCARD or (ref.startswith(WILDCARD) and custom_provider is None):
        return ModelRef("", ref)  # every provider: the app's name says which
    head, sep, rest = ref.partition("/")
    if custom_provider is not None:
        provider, model = custom_provider, (rest if sep and head == custom_provider else ref)
    elif sep and rest and (head in PROVIDERS or head in NOT_YET):
        provider, model = head, rest
    else:
        inferred = infer(ref)
        if inferred is None:
            return _unknown(ref, head if sep else None)
        provider, model = inferred, ref
    if provider in NOT_YET:
        return f"provider '{provider}' is not supported yet (it needs its own wire format)"
    if provider not in PROVIDERS:
        return _unknown(ref, provider)
    return ModelRef(provider, model)


def infer(name: str) -> str | None:
    """The provider of a bare model name, from its prefix; None when no prefix tells."""
    return next((provider for pattern, provider in INFERRED if pattern.match(name)), None)


MAX_ECHOED = 64  # a model reference longer than this is not echoed in a problem: it may be a pasted key


def _unknown(ref: str, provider: str | None) -> str:
    if len(ref) > MAX_ECHOED or looks_secret(ref):
        return "not a model reference ('<provider>/<model>' or a known model name); the value is not shown"
    if provider is None:
        return (f"cannot tell the provider of '{ref}': write '<provider>/{ref}' (e.g. 'openai/{ref}' for an "
                "OpenAI-compatible server at api_base)")
    near = difflib.get_close_matches(provider, list(PROVIDERS), n=1, cutoff=0.7)
    hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(PROVIDERS)})"
    return f"unknown provider '{provider}'{hint}"


def default_base(provider: str, env: Mapping[str, str]) -> str | None:
    """Where a provider is when the deployment does not say: its variable (LiteLLM reads it), else its default."""
    return next((env[v] for v in BASE_VARIABLES.get(provider, ()) if env.get(v)), None) or PROVIDERS.get(provider)


def root_base(provider: str, base: str) -> str:
    """``http://host:11434`` (LiteLLM's Ollama base) → ``http://host:11434/v1``, the OpenAI API we call."""
    if provider in ROOT_BASES and re.match(r"^https?://[^/]+/?$", base):
        return base.rstrip("/") + "/v1"
    return base


def unique_id(base: str, seen: set[str]) -> str:
    candidate, n = base, 2
    while candidate in seen:
        candidate, n = f"{base}#{n}", n + 1
    return candidate

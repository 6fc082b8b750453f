"""llm-sidecar: a small, fast LLM gateway sidecar."""

__version__ = "0.1.0"

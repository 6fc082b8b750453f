"""Price arithmetic: what one answer cost, from per-token prices in ``model_info`` (USD)."""

from __future__ import annotations

from typing import Protocol

from sidecar.core.types import Usage


class Prices(Protocol):
    """``config.ModelInfo``'s price fields (kept structural so core does not import config)."""

    input_cost_per_token: float | None
    output_cost_per_token: float | None
    cache_read_input_token_cost: float | None


def request_cost(usage: Usage | None, prices: Prices | None) -> float | None:
    """USD for ``usage`` at ``prices``; ``None`` when either is unknown.

    Cached prompt tokens are billed at ``cache_read_input_token_cost`` when the provider has one (they are
    part of ``prompt_tokens``), else at the input price.
    """
    if usage is None or prices is None:
        return None
    input_price, output_price = prices.input_cost_per_token, prices.output_cost_per_token
    if input_price is None and output_price is None:
        return None
    input_price, output_price = input_price or 0.0, output_price or 0.0
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = prices.cache_read_input_token_cost
    if cached_price is None:
        cached_price = input_price
    return ((usage.prompt_tokens - cached) * input_price + cached * cached_price
            + usage.completion_tokens * output_price)


def format_cost(cost: float) -> str:
    """The ``x-sidecar-cost`` header value: plain decimal USD, enough digits for a one-token answer."""
    return f"{cost:.10f}".rstrip("0").rstrip(".") or "0"

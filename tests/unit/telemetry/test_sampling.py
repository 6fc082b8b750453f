"""The samplers the sidecar decides without calling agree with the SDK's own decisions."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from sidecar.telemetry.tracing import _LOCAL_DECISIONS


def _parent(sampled: bool) -> SpanContext:
    return SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1 if sampled else 0))


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF, ParentBased(ALWAYS_ON), ParentBased(ALWAYS_OFF)],
                         ids=lambda s: s.get_description()[:40])
@pytest.mark.parametrize("parent", [None, _parent(True), _parent(False)], ids=["root", "sampled", "unsampled"])
def test_local_decision_is_the_samplers(sampler: Sampler, parent: SpanContext | None) -> None:
    context = None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
    sdk = sampler.should_sample(context, 0x1234, "POST /v1/chat/completions", SpanKind.SERVER, {})
    assert _LOCAL_DECISIONS[sampler.get_description()](parent) == sdk.decision.is_sampled()

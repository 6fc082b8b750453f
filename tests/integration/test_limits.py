"""Per-deployment rpm/tpm limits and the context-window check happen before any upstream call."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hi"}]


def client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def test_rpm_limit_spills_to_the_next_deployment_then_429(workdir: Path, primary: FakeProvider,
                                                          backup: FakeProvider) -> None:
    models = [deployment("m", primary, rpm=2, order=1), deployment("m", backup, rpm=1, order=2)]
    sidecar = Sidecar({"model_list": models}, workdir, "rpm")
    try:
        answered = [client(sidecar).chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
                    .headers["x-sidecar-deployment"] for _ in range(3)]
        assert answered == ["openai/primary-model", "openai/primary-model", "openai/backup-model"]
        with pytest.raises(openai.RateLimitError) as info:
            client(sidecar).chat.completions.create(model="m", messages=MESSAGES)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert primary.stats()["requests"] == 2 and backup.stats()["requests"] == 1  # no call over the limit
    finally:
        sidecar.stop()


def test_tpm_limit_counts_the_request_estimate(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    sidecar = Sidecar({"model_list": [deployment("m", primary, tpm=300, order=1), deployment("m", backup, order=2)]},
                      workdir, "tpm")
    try:
        big = [{"role": "user", "content": "word " * 200}]  # ~250 tokens + the 16-token budget
        first = client(sidecar).chat.completions.with_raw_response.create(model="m", messages=big, max_tokens=16)
        second = client(sidecar).chat.completions.with_raw_response.create(model="m", messages=big, max_tokens=16)
        assert first.headers["x-sidecar-deployment"] == "openai/primary-model"
        assert second.headers["x-sidecar-deployment"] == "openai/backup-model"
    finally:
        sidecar.stop()


def test_prompt_beyond_the_context_window_goes_to_the_context_window_fallback(
        workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    small = deployment("small", primary)
    small["model_info"] = {"max_input_tokens": 50}
    sidecar = Sidecar({"model_list": [small, deployment("large", backup)],
                       "router_settings": {"context_window_fallbacks": [{"small": ["large"]}]}}, workdir, "ctx")
    try:
        long = [{"role": "user", "content": "x" * 400}]
        raw = client(sidecar).chat.completions.with_raw_response.create(model="small", messages=long)
        assert raw.headers["x-sidecar-fallback"] == "large"
        assert primary.stats()["requests"] == 0  # never sent where it cannot fit
        assert client(sidecar).chat.completions.with_raw_response.create(
            model="small", messages=MESSAGES).headers["x-sidecar-deployment"] == "openai/primary-model"
    finally:
        sidecar.stop()


def test_prompt_beyond_every_context_window_is_a_400(workdir: Path, primary: FakeProvider) -> None:
    small = deployment("small", primary)
    small["model_info"] = {"max_input_tokens": 50}
    sidecar = Sidecar({"model_list": [small]}, workdir, "ctx400")
    try:
        with pytest.raises(openai.BadRequestError) as info:
            client(sidecar).chat.completions.create(model="small", messages=[{"role": "user", "content": "x" * 400}])
        assert info.value.code == "context_length_exceeded" and primary.stats()["requests"] == 0
    finally:
        sidecar.stop()

"""LiteLLM configs (``litellm_configs/``, written for these tests) through ``check-config`` and ``serve``: each
loads with the warnings it should, ``--strict`` turns them into a failure, and each that loads starts and
answers through the fake provider — drop_params with an Anthropic deployment, completion defaults under the
app's values, wildcards serving names nobody listed, credentials and Redis from the environment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import orjson
import pytest
import requests
import yaml

from sidecar import cli
from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, RedisServer, Sidecar

CORPUS = Path(__file__).parent / "litellm_configs"
MESSAGES = [{"role": "user", "content": "Say hello"}]


@dataclass(frozen=True)
class Expect:
    warnings: tuple[str, ...] = ()  # the start of each warning line, in order
    problems: tuple[str, ...] = ()  # the start of each problem line (any order)


IGNORED_LOGGING = "ignored: logging integrations are not loaded: traces and metrics are OpenTelemetry"
NO_DATABASE = "ignored: no database"
EXPECTED = {
    "logging_and_database.yaml": Expect(warnings=(
        "model_list[1].litellm_params.max_parallel_requests: ignored: use rpm and tpm",
        "litellm_settings.set_verbose: ignored: use sidecar_settings.log_level",
        "litellm_settings.json_logs: ignored: use sidecar_settings.log_level",
        f"litellm_settings.success_callback: {IGNORED_LOGGING}",
        f"litellm_settings.failure_callback: {IGNORED_LOGGING}",
        f"litellm_settings.callbacks: {IGNORED_LOGGING}",
        f"general_settings.database_url: {NO_DATABASE}",
        f"general_settings.store_model_in_db: {NO_DATABASE}",
        f"general_settings.store_prompts_in_spend_logs: {NO_DATABASE}",
        f"general_settings.disable_spend_logs: {NO_DATABASE}",
    )),
    "completion_defaults.yaml": Expect(),
    "wildcards.yaml": Expect(),
    "references_and_credentials.yaml": Expect(),
    "typos_and_misplaced.yaml": Expect(warnings=(
        "model_list[0].litellm_params.temprature: unknown key, ignored (did you mean 'temperature'?)",
        "model_list[0].model_info.max_input_token: unknown key, ignored (did you mean 'max_input_tokens'?)",
        "litellm_settings.drop_parms: unknown key, ignored (did you mean 'drop_params'?)",
        "litellm_settings.routing_strategy: unknown key here, ignored: it belongs in router_settings",
        "router_settings.num_retires: unknown key, ignored (did you mean 'num_retries'?)",
        "router_settings.drop_params: unknown key here, ignored: it belongs in litellm_settings",
    )),
    "refused.yaml": Expect(problems=(
        "model_list[0].litellm_params.mock_response: not supported: the sidecar would call the real provider",
        "general_settings.custom_auth: not supported: apps authenticate only with",
        "guardrails: not supported: guardrails are not run by the sidecar",
    )),
    "unsupported_provider.yaml": Expect(problems=(
        "model_list[1].litellm_params.model: provider 'cohere' is not supported yet (it needs its own wire format) "
        "(model_name 'rerank-chat')",
        "model_list[1].litellm_params.api_key: environment variable COHERE_API_KEY is not set",
    )),
}


def environment(fake: FakeProvider, redis: RedisServer | None = None) -> dict[str, str]:
    env = {"FAKE_BASE": fake.api_base, "FAKE_HOST": fake.url, "FAKE_KEY": PROVIDER_KEY, "APP_KEY": APP_KEY,
           "OPENAI_API_BASE": fake.api_base, "OPENAI_API_KEY": "sk-from-openai-api-key",
           "CHOSEN_MODEL": "openai/chosen-by-env", "CHOSEN_RPM": "600"}
    if redis is not None:
        env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis.port), REDIS_PASSWORD=redis.password or "")
    return env


def test_every_config_of_the_corpus_has_expectations() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_config_says_what_it_should(name: str, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], primary: FakeProvider) -> None:
    for key, value in {**environment(primary), "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6379",
                       "REDIS_PASSWORD": "pw"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    expect, path = EXPECTED[name], str(CORPUS / name)
    code = cli.main(["check-config", path])
    err = capsys.readouterr().err.splitlines()
    warnings = [line.removeprefix("warning: ") for line in err if line.startswith("warning: ")]
    assert len(warnings) == len(expect.warnings) and all(
        w.startswith(e) for w, e in zip(warnings, expect.warnings, strict=True)), warnings
    for problem in expect.problems:
        assert any(line.startswith(problem) for line in err), (problem, err)
    assert code == (1 if expect.problems else 0)
    strict = cli.main(["check-config", "--strict", path])
    assert strict == (1 if expect.problems or expect.warnings else 0)
    if expect.warnings:
        assert f"{len(expect.warnings) + len(expect.problems)} problem(s)" in capsys.readouterr().err


# ---- serving ----------------------------------------------------------------------------------------------


def start(name: str, workdir: Path, env: dict[str, str]) -> Sidecar:
    config = yaml.safe_load((CORPUS / name).read_text())
    return Sidecar(config, workdir, f"litellm-{name.removesuffix('.yaml')}", env=env)


@pytest.fixture(scope="module")
def redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir, "litellm-redis", password="redis-pw")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sidecars(workdir: Path, primary: FakeProvider, redis: RedisServer) -> Iterator[dict[str, Sidecar]]:
    env = environment(primary, redis)
    started = {name: start(name, workdir, env) for name, expect in EXPECTED.items() if not expect.problems}
    yield started
    for sidecar in started.values():
        sidecar.stop()


def client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def logged(sidecar: Sidecar, field: str, timeout: float = 10.0) -> list[dict[str, object]]:
    """The request log lines that have ``field`` set (they are flushed on a short timer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [orjson.loads(line) for line in sidecar.logs().splitlines() if f'"{field}":' in line]
        found = [line for line in lines if line.get(field) is not None]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize(("name", "model", "key"), [
    ("logging_and_database.yaml", "gpt", PROVIDER_KEY), ("completion_defaults.yaml", "tuned", PROVIDER_KEY),
    ("wildcards.yaml", "summarizer", "sk-from-openai-api-key"),  # no api_key: OPENAI_API_KEY, as LiteLLM reads it
    ("references_and_credentials.yaml", "bare", PROVIDER_KEY), ("typos_and_misplaced.yaml", "gpt", PROVIDER_KEY),
])
def test_serve_starts_on_each_config_and_answers(sidecars: dict[str, Sidecar], primary: FakeProvider, name: str,
                                                 model: str, key: str) -> None:
    reply = client(sidecars[name]).chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Hello from primary."
    assert primary.stats()["last_headers"]["authorization"] == f"Bearer {key}"


def test_warnings_are_logged_once_at_start(sidecars: dict[str, Sidecar]) -> None:
    logs = sidecars["logging_and_database.yaml"].logs()
    assert logs.count("config: litellm_settings.set_verbose: ignored") == 1
    assert "config: general_settings.database_url: ignored: no database" in logs


@pytest.mark.parametrize("stream", [False, True])
def test_drop_params_lets_an_anthropic_deployment_answer_without_what_it_cannot_take(
        sidecars: dict[str, Sidecar], primary: FakeProvider, stream: bool) -> None:
    sidecar = sidecars["logging_and_database.yaml"]
    answer = client(sidecar).chat.completions.create(model="claude", messages=MESSAGES,  # type: ignore[arg-type]
                                                     logit_bias={"1734": -100}, temperature=0.4, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices) if stream else \
        answer.choices[0].message.content  # type: ignore[union-attr]
    assert text and "Hello" in text
    body = primary.stats()["last_body"]
    assert "logit_bias" not in body and body["temperature"] == 0.4 and body["model"] == "claude-3-5-haiku-20241022"
    assert any(line["dropped_params"] == ["logit_bias"] for line in logged(sidecar, "dropped_params"))


def test_completion_defaults_are_merged_under_the_apps_values(sidecars: dict[str, Sidecar],
                                                              primary: FakeProvider) -> None:
    oa = client(sidecars["completion_defaults.yaml"])
    oa.chat.completions.create(model="tuned", messages=MESSAGES)  # type: ignore[arg-type]
    body = primary.stats()["last_body"]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["reasoning_effort"]) == (0.2, 256, 0.9,
                                                                                                   "low")
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"enable_thinking": False}  # extra_body
    oa.chat.completions.create(model="tuned", messages=MESSAGES, temperature=0.7, max_completion_tokens=9,
                               user="someone", extra_body={"top_k": 3})  # type: ignore[arg-type]
    body = primary.stats()["last_body"]
    assert body["temperature"] == 0.7 and body["max_completion_tokens"] == 9 and "max_tokens" not in body
    assert body["top_k"] == 3 and "user" not in body  # the app's extra field wins; user is always dropped


def test_a_wildcard_serves_names_it_never_listed(sidecars: dict[str, Sidecar], primary: FakeProvider) -> None:
    oa = client(sidecars["wildcards.yaml"])
    raw = oa.chat.completions.with_raw_response.create(model="openai/never-listed-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "Hello from primary."
    assert raw.headers["x-sidecar-deployment"] == "openai/never-listed-model"
    assert primary.stats()["last_body"]["model"] == "never-listed-model"
    oa.chat.completions.create(model="gpt-4.1-nano", messages=MESSAGES)  # type: ignore[arg-type]
    seen = primary.stats()
    assert seen["last_body"]["model"] == "gpt-4.1-nano"  # "*": the provider from the name, its key from the env
    assert seen["last_headers"]["authorization"] == "Bearer sk-from-openai-api-key"
    oa.chat.completions.create(model="gpt-small", messages=MESSAGES)  # type: ignore[arg-type]
    assert primary.stats()["last_body"]["model"] == "gpt-4o-mini"  # an alias of the summarizer group
    with pytest.raises(openai.NotFoundError) as info:
        oa.chat.completions.create(model="mystery-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert "cannot tell the provider of 'mystery-model'" in info.value.message
    assert requests.get(f"{sidecars['wildcards.yaml'].admin_url}/readyz", timeout=5).status_code == 200


def test_references_credentials_and_redis_from_the_environment(sidecars: dict[str, Sidecar], primary: FakeProvider,
                                                               redis: RedisServer) -> None:
    oa = client(sidecars["references_and_credentials.yaml"])
    for model, upstream in (("bare", "gpt-4o"), ("vllm", "meta-llama/Llama-3.1-8B-Instruct"),
                            ("from-env", "chosen-by-env")):
        oa.chat.completions.create(model=model, messages=MESSAGES, temperature=0)  # type: ignore[arg-type]
        assert primary.stats()["last_body"]["model"] == upstream
    redis.wait_for_keys(1)  # the cache lives in the Redis REDIS_HOST/PORT/PASSWORD point at
    deadline = time.monotonic() + 20  # a lookup slower than 50 ms is a miss: on a loaded machine, ask again
    while True:
        raw = oa.chat.completions.with_raw_response.create(model="bare", messages=MESSAGES, temperature=0)  # type: ignore[arg-type]
        if raw.headers["x-sidecar-cache"] == "hit" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert raw.headers["x-sidecar-cache"] == "hit" and raw.parse().choices[0].message.content

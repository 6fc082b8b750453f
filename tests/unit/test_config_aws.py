"""Bedrock deployments read LiteLLM's aws_* keys; the model id forms, the region and the endpoint resolve at load;
the ten OpenAI-compatible long-tail prefixes have their default bases."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.config import ConfigError


def bedrock(model: str, **params: object) -> dict[str, object]:
    return {"model_name": "claude", "litellm_params": {"model": model, **params}}


def deployment(model: str, environ: dict[str, str] | None = None, **params: object) -> config.Deployment:
    return config.parse({"model_list": [bedrock(model, **params)]}, environ=environ or {}).deployments[0]


def test_litellm_keys_load() -> None:
    dep = deployment("bedrock/us.anthropic.claude-sonnet-4-20250514-v1:0", aws_region_name="eu-west-1",
                     aws_access_key_id="AKID", aws_secret_access_key="os.environ/SECRET",
                     aws_session_token="tok", aws_role_name="arn:aws:iam::123456789012:role/gw",
                     aws_session_name="gw", aws_external_id="ext", aws_sts_endpoint="https://sts.example",
                     environ={"SECRET": "s3cr3t"})
    aws = dep.aws
    assert aws is not None and dep.provider == "bedrock"
    assert dep.model == aws.model_id == "us.anthropic.claude-sonnet-4-20250514-v1:0"
    assert aws.region == "eu-west-1" and dep.api_base == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert aws.access_key_id.value == "AKID" and aws.secret_access_key.value == "s3cr3t"  # type: ignore[union-attr]
    assert (aws.role_name, aws.session_name, aws.external_id) == ("arn:aws:iam::123456789012:role/gw", "gw", "ext")
    assert [s.value for s in aws.secrets] == ["s3cr3t", "tok"]
    assert dep.api_key is None


@pytest.mark.parametrize(("model", "model_id", "region"), [
    ("bedrock/converse/amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0", "us-west-2"),
    ("bedrock/us-east-2/meta.llama3-70b-instruct-v1:0", "meta.llama3-70b-instruct-v1:0", "us-east-2"),
    ("bedrock/arn:aws:bedrock:ap-south-1:123456789012:application-inference-profile/abc123",
     "arn:aws:bedrock:ap-south-1:123456789012:application-inference-profile/abc123", "ap-south-1"),
    ("bedrock/cn-north-1/anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0",
     "cn-north-1"),
])
def test_model_id_forms_and_region(model: str, model_id: str, region: str) -> None:
    dep = deployment(model)
    assert dep.aws is not None and (dep.aws.model_id, dep.aws.region) == (model_id, region)
    suffix = ".com.cn" if region.startswith("cn-") else ".com"
    assert dep.api_base == f"https://bedrock-runtime.{region}.amazonaws{suffix}"


def test_region_from_the_environment_and_endpoint_overrides() -> None:
    dep = deployment("bedrock/amazon.nova-lite-v1:0", environ={"AWS_REGION": "eu-central-1"})
    assert dep.aws is not None and dep.aws.region == "eu-central-1"
    dep = deployment("bedrock/amazon.nova-lite-v1:0", aws_bedrock_runtime_endpoint="https://vpce.example/")
    assert dep.api_base == "https://vpce.example"
    dep = deployment("bedrock/amazon.nova-lite-v1:0", model_id="arn:aws:bedrock:us-east-1:1:provisioned-model/x")
    assert dep.aws is not None and dep.aws.model_id.endswith("provisioned-model/x") and dep.aws.region == "us-east-1"


def test_api_keys_are_bearer_tokens() -> None:
    dep = deployment("bedrock/amazon.nova-lite-v1:0", api_key="bedrock-api-key")
    assert dep.api_key is not None and dep.api_key.value == "bedrock-api-key"
    env = {"AWS_BEARER_TOKEN_BEDROCK": "from-env"}
    assert deployment("bedrock/amazon.nova-lite-v1:0", env).api_key.value == "from-env"  # type: ignore[union-attr]
    assert deployment("bedrock/amazon.nova-lite-v1:0", env, aws_access_key_id="A",
                      aws_secret_access_key="B").api_key is None  # explicit keys win


def test_problems_are_reported_with_locations() -> None:
    with pytest.raises(ConfigError) as info:
        config.parse({"model_list": [bedrock("bedrock/invoke/anthropic.claude-v2"),
                                     bedrock("bedrock/amazon.nova-lite-v1:0", aws_access_key_id="A"),
                                     bedrock("bedrock/amazon.nova-lite-v1:0", aws_web_identity_token="t"),
                                     bedrock("openai/gpt-4o", aws_region_name="us-east-1", api_key="k")]})
    found = info.value.problems
    assert any(p.startswith("model_list[0].litellm_params.model: bedrock/invoke/") for p in found)
    assert "model_list[1].litellm_params.aws_secret_access_key: aws_access_key_id and aws_secret_access_key " \
           "go together" in found
    assert "model_list[2].litellm_params.aws_role_name: is required with aws_web_identity_token" in found
    assert not any("model_list[3]" in p for p in found)  # an AWS key on another provider: a warning


@pytest.mark.parametrize(("prefix", "base"), [
    ("mistral", "https://api.mistral.ai/v1"), ("deepseek", "https://api.deepseek.com/beta"),
    ("xai", "https://api.x.ai/v1"), ("openrouter", "https://openrouter.ai/api/v1"),
    ("cerebras", "https://api.cerebras.ai/v1"), ("perplexity", "https://api.perplexity.ai"),
    ("deepinfra", "https://api.deepinfra.com/v1/openai"), ("huggingface", "https://router.huggingface.co/v1"),
    ("lm_studio", "http://localhost:1234/v1"), ("llamafile", "http://127.0.0.1:8080/v1"),
])
def test_long_tail_default_bases(prefix: str, base: str) -> None:
    dep = config.parse({"model_list": [bedrock(f"{prefix}/some-model", api_key="k")]}).deployments[0]
    assert (dep.provider, dep.model, dep.api_base) == (prefix, "some-model", base)

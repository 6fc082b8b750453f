"""AWS Bedrock deployments: LiteLLM's ``aws_*`` keys, the model id forms and the regional endpoint.

``bedrock/<model id>`` (also ``bedrock/converse/<id>`` and ``bedrock/<region>/<id>``) names a Converse model:
a base model id, a cross-Region inference profile (``us.anthropic…``) or an ARN. The region comes from the ARN,
``aws_region_name``, ``AWS_REGION_NAME`` / ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-west-2`` (LiteLLM's
order). Credentials are not resolved here: static keys are kept as secrets; everything else is the default
chain, resolved by botocore when the adapter is built (``providers.aws_auth``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.config.reader import Secret, SecretResolver, Section

DEFAULT_REGION = "us-west-2"
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
ARN_REGION = re.compile(r"^arn:aws[a-z-]*:bedrock:([a-z0-9-]+):")
BEARER_ENV = "AWS_BEARER_TOKEN_BEDROCK"


@dataclass(frozen=True, slots=True)
class AwsSettings:
    """How to reach and sign for one Bedrock deployment. ``model_id`` is the Converse ``modelId`` (unencoded)."""

    region: str
    model_id: str
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    role_name: str | None = None  # LiteLLM's name for the ARN of a role to assume
    session_name: str | None = None
    external_id: str | None = None
    sts_endpoint: str | None = None
    profile_name: str | None = None
    web_identity_token: Secret | None = None

    @property
    def static_keys(self) -> bool:
        return self.access_key_id is not None and self.secret_access_key is not None

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """What must never reach a log line."""
        return tuple(s for s in (self.secret_access_key, self.session_token, self.web_identity_token) if s)


def bedrock_settings(params: Section, secrets: SecretResolver,
                     model: str) -> tuple[AwsSettings | None, str | None, str, Secret | None]:
    """(settings, the model id, the default api_base, a Bedrock API key from the environment) for ``model``,
    the part of ``litellm_params.model`` after ``bedrock/``."""
    route, _, rest = model.partition("/")
    explicit_region = None
    if route in ("converse", "invoke") and rest:
        if route == "invoke":
            params.problem("model", "bedrock/invoke/ (InvokeModel) is not supported: use bedrock/<model id> "
                                    "or bedrock/converse/<model id> (Converse serves the same chat models)")
            return None, None, "", None
        model = rest
    elif REGION.match(route) and rest and not model.startswith("arn:"):
        explicit_region, model = route, rest
    model_id = params.string("model_id", None) or model
    env = secrets.env
    arn = ARN_REGION.match(model_id)
    configured = _plain(params, "aws_region_name", secrets)
    region = (explicit_region or (arn.group(1) if arn else None) or configured
              or env.get("AWS_REGION_NAME") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
              or DEFAULT_REGION)
    settings = AwsSettings(
        region=region,
        model_id=model_id,
        access_key_id=_secret(params, "aws_access_key_id", secrets),
        secret_access_key=_secret(params, "aws_secret_access_key", secrets),
        session_token=_secret(params, "aws_session_token", secrets),
        role_name=_plain(params, "aws_role_name", secrets),
        session_name=_plain(params, "aws_session_name", secrets),
        external_id=_plain(params, "aws_external_id", secrets),
        sts_endpoint=_plain(params, "aws_sts_endpoint", secrets),
        profile_name=_plain(params, "aws_profile_name", secrets),
        web_identity_token=_secret(params, "aws_web_identity_token", secrets),
    )
    if (settings.access_key_id is None) != (settings.secret_access_key is None):
        params.problem("aws_secret_access_key" if settings.secret_access_key is None else "aws_access_key_id",
                       "aws_access_key_id and aws_secret_access_key go together")
    if settings.web_identity_token is not None and settings.role_name is None:
        params.problem("aws_role_name", "is required with aws_web_identity_token")
    endpoint = (_plain(params, "aws_bedrock_runtime_endpoint", secrets) or env.get("AWS_BEDROCK_RUNTIME_ENDPOINT")
                or runtime_endpoint(region))
    bearer = None
    if not (settings.static_keys or settings.role_name or settings.profile_name) and env.get(BEARER_ENV):
        bearer = Secret(env[BEARER_ENV])  # botocore's rule: the API key applies when nothing else is configured
    return settings, model_id, endpoint, bearer


def runtime_endpoint(region: str) -> str:
    """``https://bedrock-runtime.{region}.{dnsSuffix}`` for the region's partition."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://bedrock-runtime.{region}.{suffix}"


def _plain(params: Section, key: str, secrets: SecretResolver) -> str | None:
    return secrets.plain(params.string(key, None), f"{params.where}.{key}")


def _secret(params: Section, key: str, secrets: SecretResolver) -> Secret | None:
    ref = params.get(key)
    return secrets.resolve(ref, f"{params.where}.{key}") if ref is not None else None

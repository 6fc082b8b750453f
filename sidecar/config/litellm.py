"""What the sidecar does with each key LiteLLM documents, as data: the loader and the README read this table.

Every key of LiteLLM's own sections is one of:

- ``implemented``: it behaves as in LiteLLM (the note says how, where it differs);
- ``ignored``: it has no meaning in a sidecar; the config loads with a one-line warning saying what to use
  instead (the note);
- ``information``: descriptive metadata (``model_info.mode``, ``description``…): accepted silently;
- ``refused``: ignoring it would silently change behaviour in a dangerous way (auth, guardrails, mock
  answers); the config does not load, and the note says why.

A key no section documents is a warning naming the nearest known key, or the section it belongs in.
``sidecar_settings`` is ours and strict: an unknown key there is an error. ``check-config --strict`` turns
every warning into an error. ``markdown()`` renders the README's table from this data.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IMPLEMENTED, IGNORED, INFORMATION, REFUSED = "implemented", "ignored", "information", "refused"


@dataclass(frozen=True, slots=True)
class Key:
    status: str
    note: str = ""


def _keys(status: str, note: str, names: Iterable[str]) -> dict[str, Key]:
    return dict.fromkeys(names, Key(status, note))


def _done(**notes: str) -> dict[str, Key]:
    return {name: Key(IMPLEMENTED, note) for name, note in notes.items()}


_OTEL = "logging integrations are not loaded: traces and metrics are OpenTelemetry (OTEL_* variables) and /metrics"
_DATABASE = "no database: deployments come from this file; spend is in /metrics and sidecar_settings.budgets"
_KEYS = ("no virtual keys: apps authenticate with general_settings.master_key or "
         "sidecar_settings.inbound_api_keys")
_UI = "no admin UI or management API"
_ALERTS = "no alerting: use the Prometheus alerts of the Helm chart (monitoring.enabled)"
_ROUTES = "the sidecar serves the LLM routes only (chat, completions, embeddings, messages, responses)"
_AUTH = ("apps authenticate only with general_settings.master_key or sidecar_settings.inbound_api_keys; "
         "ignoring this would leave the API open: remove it and set those")
_BREAKER = "failures are counted by circuit breakers: tune allowed_fails, cooldown_time or sidecar_settings.breaker"
_CACHE = "use litellm_settings.cache with cache_params (or sidecar_settings.cache)"
_LOGS = "use sidecar_settings.log_level (logs are always JSON lines)"
_REDIS = "the Redis that budgets and a redis cache share (as sidecar_settings.redis)"
_DEFAULT = "a completion default for this deployment: applied when the app's request does not set it"
_INFO = "kept as information"
_TAGS = "tag-based routing is not supported"

TOP: dict[str, Key] = {
    **_done(model_list="deployments; entries sharing a model_name form a model group",
            litellm_settings="see below", general_settings="see below", router_settings="see below",
            environment_variables="variables set before os.environ/ references are resolved (they win over "
                                  "the process's own, as in LiteLLM)",
            credential_list="named credentials (credential_values) a deployment uses by litellm_credential_name",
            sidecar_settings="our own extensions (strict: an unknown key is an error)"),
    "guardrails": Key(REFUSED, "guardrails are not run by the sidecar: requests would reach the model unchecked"),
    "include": Key(REFUSED, "not supported yet: merge the included files into this one"),
    **_keys(IGNORED, _OTEL, ("callback_settings",)),
    **_keys(IGNORED, _ROUTES, ("mcp_servers", "mcp_tools", "search_tools", "vector_store_registry", "prompts",
                               "files_settings", "finetune_settings", "assistant_settings")),
}

LITELLM_SETTINGS: dict[str, Key] = {
    **_done(drop_params="a field the deployment's provider cannot take is dropped (noted on the span and the "
                        "log line) instead of a 400",
            num_retries="router_settings.num_retries when that is not set",
            request_timeout="router_settings.timeout when that is not set",
            fallbacks="router_settings.fallbacks when that is not set",
            context_window_fallbacks="router_settings.context_window_fallbacks when that is not set",
            content_policy_fallbacks="router_settings.content_policy_fallbacks when that is not set",
            default_fallbacks="fallbacks of every model group that has none of its own",
            cache="the response cache (with cache_params); see Response cache",
            cache_params="see the cache_params rows",
            max_budget="a global budget in USD per budget_duration",
            budget_duration="the window of max_budget (30s, 1h, 1d, 7d, 1mo)"),
    **_keys(IGNORED, _OTEL, ("success_callback", "failure_callback", "callbacks", "service_callbacks",
                             "langfuse_default_tags", "redact_user_api_key_info")),
    **_keys(IGNORED, _LOGS, ("set_verbose", "json_logs")),
    "turn_off_message_logging": Key(IGNORED, "prompts and answers are never logged unless "
                                             "sidecar_settings.telemetry.capture_content is true"),
    "modify_params": Key(IGNORED, "requests are translated as they are; set drop_params to drop what a "
                                  "provider cannot take"),
    "force_ipv4": Key(IGNORED, "addresses come from the system resolver"),
    "ssl_verify": Key(IGNORED, "TLS is always verified: add a private CA with SSL_CERT_FILE"),
    **_keys(IGNORED, _KEYS, ("key_generation_settings", "enable_key_alias_format_validation",
                             "default_key_generate_params", "upperbound_key_generate_params",
                             "default_internal_user_params", "default_team_settings", "max_internal_user_budget",
                             "internal_user_budget_duration", "max_end_user_budget")),
    **_keys(IGNORED, _DATABASE, ("disable_end_user_cost_tracking", "disable_end_user_cost_tracking_prometheus_only")),
    **_keys(IGNORED, "nothing to switch: the sidecar's translations are fixed",
            ("enable_preview_features", "disable_add_transform_inline_image_block",
             "use_chat_completions_url_for_anthropic_messages", "disable_copilot_system_to_assistant",
             "enable_json_schema_validation", "return_response_headers")),
    "disable_hf_tokenizer_download": Key(IGNORED, "token estimates need no tokenizer"),
    "telemetry": Key(IGNORED, "the sidecar sends no usage telemetry"),
    "mcp_aliases": Key(IGNORED, _ROUTES),
    "guardrails": Key(REFUSED, "guardrails are not run by the sidecar: requests would reach the model unchecked"),
}

GENERAL_SETTINGS: dict[str, Key] = {
    **_done(master_key="an inbound key apps must send (Bearer or x-api-key)",
            max_request_size_mb="the largest request body accepted (sidecar_settings.max_body_size_mb)"),
    **_keys(REFUSED, _AUTH, ("custom_auth", "enable_jwt_auth", "litellm_jwtauth", "enable_oauth2_auth",
                             "enable_oauth2_proxy_auth")),
    **_keys(IGNORED, _DATABASE, (
        "database_url", "database_connection_pool_limit", "database_connection_timeout",
        "allow_requests_on_db_unavailable", "store_model_in_db", "supported_db_objects",
        "store_prompts_in_spend_logs", "disable_spend_logs", "disable_spend_updates", "disable_reset_budget",
        "disable_adding_master_key_hash_to_db", "disable_prisma_schema_update", "maximum_spend_logs_retention_period",
        "maximum_spend_logs_retention_interval", "proxy_batch_write_at", "proxy_budget_rescheduler_min_time",
        "proxy_budget_rescheduler_max_time", "proxy_batch_polling_interval", "user_api_key_cache_ttl")),
    **_keys(IGNORED, _KEYS, ("custom_key_generate", "key_management_settings", "allow_client_side_credentials",
                             "default_team_disabled", "service_account_settings", "infer_model_from_keys",
                             "disable_master_key_return", "litellm_key_header_name", "reject_clientside_metadata_tags",
                             "enforced_params", "enforce_user_param")),
    **_keys(IGNORED, _UI, ("ui_access_mode", "custom_sso", "allow_user_auth", "user_mcp_management_mode",
                           "litellm_license", "oauth2_config_mappings", "admin_ui_disabled")),
    **_keys(IGNORED, _ALERTS, ("alerting", "alerting_threshold", "alert_types", "alert_to_webhook_url",
                               "alerting_args", "spend_report_frequency")),
    **_keys(IGNORED, _ROUTES, ("allowed_routes", "public_routes", "admin_only_routes", "pass_through_endpoints",
                               "use_client_credentials_pass_through_routes", "disable_responses_id_security",
                               "completion_model", "embedding_model", "image_generation_model",
                               "moderation_model")),
    **_keys(IGNORED, "secrets come from the environment (os.environ/NAME) or files (file:/path)",
            ("key_management_system", "use_azure_key_vault", "use_google_kms")),
    **_keys(IGNORED, "health comes from real traffic (circuit breakers); /readyz reports it",
            ("background_health_checks", "health_check_interval", "health_check_details")),
    **_keys(IGNORED, "use rpm and tpm on the deployments", ("max_parallel_requests", "global_max_parallel_requests",
                                                            "disable_retry_on_max_parallel_request_limit_error")),
    "allowed_ips": Key(IGNORED, "the API listens on loopback only (--host)"),
    "use_x_forwarded_for": Key(IGNORED, "the API listens on loopback only (--host)"),
    "max_response_size_mb": Key(IGNORED, "answers are passed through as the upstream sends them"),
    "forward_client_headers_to_llm_api": Key(IGNORED, "the app's headers are not forwarded: set "
                                                      "litellm_params.extra_headers"),
    "forward_openai_org_id": Key(IGNORED, "set litellm_params.organization"),
}

ROUTER_SETTINGS: dict[str, Key] = {
    **_done(routing_strategy="simple-shuffle, least-busy, latency-based-routing, usage-based-routing, "
                             "cost-based-routing; least-tokens (ours: fewest estimated tokens in flight)",
            num_retries="retries per request on a group's last deployment (see When a provider has a bad night)",
            retry_policy="retries per error class",
            retry_after="the shortest wait before a retry when the upstream sends no Retry-After",
            timeout="seconds for the whole request, retries and fallbacks included",
            stream_timeout="seconds to a stream's first token (keep-alive bytes do not count)",
            allowed_fails="consecutive failures that open a deployment's breaker",
            cooldown_time="seconds a breaker stays open",
            fallbacks="groups tried after every deployment of a group failed",
            context_window_fallbacks="groups tried when the prompt is too long",
            content_policy_fallbacks="groups tried after a content-policy refusal",
            default_fallbacks="fallbacks of every model group that has none of its own",
            model_group_alias="other names for a model group (an alias: group, or alias: {model: group})",
            default_litellm_params="completion defaults for every deployment (a deployment's own win)",
            enable_pre_call_checks="always on: a prompt longer than max_input_tokens skips the deployment",
            enable_pre_call_check="always on: a prompt longer than max_input_tokens skips the deployment",
            redis_host=_REDIS, redis_port=_REDIS, redis_password=_REDIS, redis_url=_REDIS, redis_db=_REDIS),
    **_keys(IGNORED, _BREAKER, ("disable_cooldowns", "allowed_fails_policy")),
    **_keys(IGNORED, _CACHE, ("cache_responses", "cache_kwargs", "caching_groups")),
    **_keys(IGNORED, _LOGS, ("set_verbose", "debug_level")),
    **_keys(IGNORED, "use rpm and tpm on the deployments", ("default_max_parallel_requests",)),
    **_keys(IGNORED, "no request scheduler: requests are routed as they arrive", ("default_priority",
                                                                                   "polling_interval")),
    **_keys(IGNORED, "fallback chains end when every group was tried once", ("max_fallbacks",)),
    **_keys(IGNORED, "strategies need no arguments", ("routing_strategy_args",)),
    **_keys(IGNORED, "every deployment is checked at load; a broken one is an error", ("ignore_invalid_deployments",)),
    **_keys(IGNORED, "use sidecar_settings.budgets", ("provider_budget_config",)),
    **_keys(IGNORED, "use retry_policy", ("model_group_retry_policy",)),
    **_keys(IGNORED, "no pre-call checks beyond context windows", ("optional_pre_call_checks",
                                                                   "deployment_affinity_ttl_seconds")),
    **_keys(IGNORED, "connections are pooled per upstream host", ("client_ttl",)),
    **_keys(IGNORED, _ROUTES, ("search_tools", "guardrail_list", "assistants_config")),
    **_keys(IGNORED, _ALERTS, ("alerting_config",)),
    "enable_tag_filtering": Key(REFUSED, f"{_TAGS}: requests could reach deployments their tags exclude"),
    "tag_filtering_match_any": Key(IGNORED, _TAGS),
}

CACHE_PARAMS: dict[str, Key] = {
    **_done(type="redis (default) or local; any other type leaves the cache off, with a warning",
            host="Redis host (else REDIS_HOST, as LiteLLM reads it)", port="Redis port (else REDIS_PORT)",
            password="Redis password (else REDIS_PASSWORD)", url="redis:// or rediss:// URL (else REDIS_URL)",
            ssl="TLS to Redis", ttl="seconds an answer is kept", namespace="prefix of the cache's keys",
            mode="default_off leaves the cache off (no per-request opt-in), with a warning"),
    **_keys(IGNORED, "not supported: a redis cache uses one Redis server",
            ("redis_startup_nodes", "service_name", "sentinel_nodes", "sentinel_password")),
    **_keys(IGNORED, "no semantic cache: answers are cached for identical requests",
            ("similarity_threshold", "qdrant_semantic_cache_embedding_model", "qdrant_collection_name",
             "qdrant_quantization_config", "qdrant_semantic_cache_vector_size", "redis_semantic_cache_embedding_model",
             "redis_semantic_cache_index_name")),
    **_keys(IGNORED, "the cache is in memory or in Redis",
            ("s3_bucket_name", "s3_region_name", "s3_aws_access_key_id", "s3_aws_secret_access_key",
             "s3_endpoint_url", "gcs_bucket_name", "gcs_path_service_account", "gcs_path", "disk_cache_dir")),
    **_keys(IGNORED, "connections to Redis are managed by the sidecar",
            ("max_connections", "ssl_cert_reqs", "ssl_check_hostname", "gcp_service_account", "gcp_ssl_ca_certs")),
    "supported_call_types": Key(IGNORED, "non-streaming chat, completions and embeddings are cached"),
}

RETRY_POLICY: dict[str, Key] = _done(**{name: "retries for that error class (else num_retries)" for name in (
    "RateLimitErrorRetries", "TimeoutErrorRetries", "InternalServerErrorRetries", "AuthenticationErrorRetries",
    "BadRequestErrorRetries", "ContentPolicyViolationErrorRetries")})

#: OpenAI request fields a deployment may set as defaults (LiteLLM passes litellm_params to the completion call).
COMPLETION_DEFAULTS = (
    "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed", "response_format", "reasoning_effort",
    "user", "tool_choice", "parallel_tool_calls", "metadata", "service_tier", "store", "verbosity", "modalities",
    "audio", "prediction", "web_search_options", "stream_options",
)

LITELLM_PARAMS: dict[str, Key] = {
    **_done(model="<provider>/<model>; a bare name gets its provider from its prefix (gpt- → openai, claude- → "
                  "anthropic, …); * passes the app's model name through",
            api_key="the provider key (os.environ/NAME, file:/path or literal); else the provider's usual "
                    "variable (OPENAI_API_KEY, …)",
            api_base="the provider's address (a default exists for most providers)",
            api_version="Azure's api-version; Anthropic's anthropic-version",
            custom_llm_provider="the provider, when model has no prefix",
            organization="OpenAI's OpenAI-Organization header",
            timeout="seconds for one attempt",
            stream_timeout="seconds to a stream's first token (keep-alive bytes do not count)",
            rpm="requests per minute (per pod)", tpm="tokens per minute (per pod)",
            weight="share under simple-shuffle", order="priority in the group (lower first)",
            extra_headers="headers sent upstream", headers="headers sent upstream (as extra_headers)",
            extra_body="fields merged into the upstream body (the app's own fields win)",
            drop_params="as litellm_settings.drop_params, for this deployment",
            additional_drop_params="fields always removed from requests to this deployment",
            input_cost_per_token="as model_info.input_cost_per_token",
            output_cost_per_token="as model_info.output_cost_per_token",
            litellm_credential_name="takes api_key, api_base, api_version… from credential_list",
            vertex_project="Vertex AI project", vertex_location="Vertex AI location",
            vertex_credentials="path of a service-account JSON key",
            supports_prefill="may a cut stream be continued here by assistant prefill? (ours)",
            propagate_trace="send the W3C traceparent upstream (ours, default true)",
            proxy="this deployment's egress proxy URL, or none to go direct (ours; see Egress)",
            anthropic_betas="{allow: [...], deny: [...]}: which of the app's anthropic-beta flags an anthropic or "
                            "bedrock deployment receives (ours; see Coding agents)",
            replicas="sglang: a list of replica base URLs, or dns (ours; see The shared SGLang deployment)",
            replica_refresh_seconds="sglang replicas: dns re-resolution interval (ours)",
            replica_dns_server="sglang replicas: the DNS server to ask, address[:port] (ours)",
            replica_poll_seconds="sglang replicas: health and load poll interval (ours)",
            replica_poll_timeout_seconds="sglang replicas: one poll's time limit (ours)",
            max_queue_per_replica="sglang replicas: queue depth above which requests spill over (ours)",
            replica_load_factor="sglang replicas: bounded-load factor of the ring (ours)",
            replica_keep_factor="sglang replicas: load factor under which a conversation keeps its replica (ours)",
            replica_spread="sglang replicas: a ring key's home set, the lighter of its first k replicas first (ours)",
            replica_key="sglang replicas: the ring key, conversation or shared (ours)",
            replica_share="sglang replicas: redis — long shared prefixes placed through Redis, fleet-wide (ours)",
            replica_health_path="sglang replicas: the health probe's path, /health or /ready (ours)"),
    **_done(**{name: "see AWS Bedrock" for name in (
        "aws_region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_role_name",
        "aws_session_name", "aws_external_id", "aws_sts_endpoint", "aws_profile_name", "aws_web_identity_token",
        "aws_bedrock_runtime_endpoint", "model_id")}),
    **_done(**dict.fromkeys(COMPLETION_DEFAULTS, _DEFAULT)),
    "mock_response": Key(REFUSED, "the sidecar would call the real provider instead: use llm-sidecar fake-provider"),
    **_keys(REFUSED, "not supported yet: Azure Entra ID auth; use api_key",
            ("azure_ad_token", "azure_ad_token_provider", "tenant_id", "client_id", "client_secret",
             "azure_username", "azure_password", "azure_scope")),
    "stream": Key(IGNORED, "the app chooses streaming"),
    "max_retries": Key(IGNORED, "use router_settings.num_retries"),
    "num_retries": Key(IGNORED, "use router_settings.num_retries"),
    "cooldown_time": Key(IGNORED, "use router_settings.cooldown_time"),
    "max_parallel_requests": Key(IGNORED, "use rpm and tpm"),
    **_keys(IGNORED, "use rpm and tpm", ("itpm", "otpm", "default_api_key_tpm_limit", "default_api_key_rpm_limit")),
    **_keys(IGNORED, "use sidecar_settings.budgets", ("max_budget", "budget_duration")),
    "tags": Key(IGNORED, _TAGS), "tag_regex": Key(IGNORED, _TAGS),
    **_keys(IGNORED, "deployments are chosen by model_name only", ("region_name", "use_in_pass_through",
                                                                   "use_litellm_proxy", "use_chat_completions_api",
                                                                   "configurable_clientside_auth_params")),
    **_keys(IGNORED, "the answer is returned as the provider sends it", ("merge_reasoning_content_in_choices",)),
    **_keys(IGNORED, "no per-second prices: use input_cost_per_token", ("input_cost_per_second",
                                                                         "output_cost_per_second")),
    **_keys(IGNORED, "keep-alive is managed by the sidecar", ("keepalive_seconds", "allow_client_keepalive_override")),
    **_keys(IGNORED, _ROUTES, ("max_file_size_mb", "gcs_bucket_name", "s3_bucket_name", "s3_region_name",
                               "s3_encryption_key_id", "aws_batch_role_arn", "s3_output_bucket_name",
                               "vector_store_id", "auto_router_config_path", "auto_router_config",
                               "auto_router_default_model", "auto_router_embedding_model")),
    "model_info": Key(IGNORED, "put model_info next to litellm_params"),
}

#: ``model_info`` keys that feed routing and checks; LiteLLM treats the rest as free-form information.
CAPABILITIES = ("supports_function_calling", "supports_vision", "supports_response_schema",
                "supports_tool_choice", "supports_parallel_function_calling", "supports_system_messages",
                "supports_reasoning", "supports_prompt_caching", "supports_audio_input", "supports_audio_output",
                "supports_pdf_input", "supports_web_search", "supports_computer_use", "supports_assistant_prefill")
MODEL_INFO: dict[str, Key] = {
    **_done(id="the deployment's name in x-sidecar-deployment, logs and traces",
            input_cost_per_token="USD per prompt token (x-sidecar-cost, budgets)",
            output_cost_per_token="USD per completion token",
            cache_read_input_token_cost="USD per cached prompt token",
            max_input_tokens="the context window: a longer prompt skips this deployment",
            max_output_tokens="the default max_tokens where a provider requires one (Anthropic, Bedrock)",
            max_tokens="as max_output_tokens when that is not set (LiteLLM's older name)",
            tags="names request rules require or exclude (sidecar_settings.rules; ours)"),
    **_done(**dict.fromkeys(CAPABILITIES, "a capability flag (ModelInfo.capabilities), for capability checks")),
    **_keys(INFORMATION, _INFO, (
        "mode", "description", "base_model", "tier", "team_id", "team_public_model_name", "access_groups",
        "metadata", "db_model", "litellm_provider", "created_at", "created_by", "updated_at", "updated_by",
        "blocked", "cache_creation_input_token_cost", "input_cost_per_second", "output_cost_per_second",
        "output_cost_per_reasoning_token", "input_cost_per_character", "output_cost_per_character",
        "supported_openai_params", "supported_reasoning_efforts", "supports_native_streaming",
        "supports_embedding_image_input", "supports_url_context", "supports_video_input", "ptu_count",
        "cost_per_ptu_per_hour", "allow_fail_open", "enable_tag_filtering", "health_check_model")),
}

CREDENTIAL: dict[str, Key] = {
    **_done(credential_name="the name deployments use in litellm_params.litellm_credential_name",
            credential_values="api_key, api_base, api_version… given to those deployments (their own win)"),
    "credential_info": Key(INFORMATION, _INFO),
}

DEPLOYMENT: dict[str, Key] = _done(model_name="the name apps ask for (* and prefix/* are wildcards)",
                                   litellm_params="see the litellm_params rows", model_info="see the model_info rows")

#: Section name (as the README writes it) → its keys.
SECTIONS: Mapping[str, Mapping[str, Key]] = {
    "(top level)": TOP, "litellm_settings": LITELLM_SETTINGS, "general_settings": GENERAL_SETTINGS,
    "router_settings": ROUTER_SETTINGS, "router_settings.retry_policy": RETRY_POLICY,
    "litellm_settings.cache_params": CACHE_PARAMS, "model_list[]": DEPLOYMENT,
    "model_list[].litellm_params": LITELLM_PARAMS, "model_list[].model_info": MODEL_INFO,
    "credential_list[]": CREDENTIAL,
}


def advice(section: str, key: str) -> str:
    """The warning for a key ``section`` does not document: the nearest key there, or where it belongs."""
    homes = [name for name, keys in SECTIONS.items() if key in keys and name != section]
    if homes:
        return f"unknown key here, ignored: it belongs in {' or '.join(homes)}"
    near = difflib.get_close_matches(key, list(SECTIONS[section]), n=1, cutoff=0.75)
    if near:
        return f"unknown key, ignored (did you mean '{near[0]}'?)"
    return "unknown key, ignored"


def markdown() -> str:
    """The README's table: one row per (section, status, note), keys in the order the table lists them."""
    lines = ["| Section | Keys | Status | What the sidecar does |", "| --- | --- | --- | --- |"]
    for section, keys in SECTIONS.items():
        rows: dict[Key, list[str]] = {}
        for name, key in keys.items():
            rows.setdefault(key, []).append(name)
        for key, names in rows.items():
            listed = ", ".join(f"`{n}`" for n in names)
            lines.append(f"| {section} | {listed} | {key.status} | {key.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"

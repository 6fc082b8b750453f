"""Configuration: YAML → validated, immutable typed objects (``model``), the typed reader that remembers
where each value came from (``reader``), and the settings of what pods share (``shared``).

``sidecar.config`` exposes ``load``/``parse`` and the settings types, so callers need not know the split.
"""

from sidecar.config.limits import LimitSettings, ListenerSettings
from sidecar.config.model import (
    CatchAll,
    Config,
    Deployment,
    Hedging,
    ModelGroup,
    ModelInfo,
    SidecarSettings,
    TelemetrySettings,
    load,
    parse,
    parse_yaml,
)
from sidecar.config.params import RequestParams
from sidecar.config.reader import ConfigError, Secret
from sidecar.config.references import PROVIDERS
from sidecar.config.resilience import BreakerSettings, StallSettings
from sidecar.config.router import RouterSettings
from sidecar.config.rules import AffinitySettings, CascadeSettings, IntentSettings, Rule, ShadowSettings
from sidecar.config.shared import BudgetSettings, CacheSettings, RedisSettings, SharedSettings
from sidecar.config.wildcards import Wildcard

__all__ = [
    "PROVIDERS",
    "AffinitySettings",
    "BreakerSettings",
    "BudgetSettings",
    "CacheSettings",
    "CascadeSettings",
    "CatchAll",
    "Config",
    "ConfigError",
    "Deployment",
    "Hedging",
    "IntentSettings",
    "LimitSettings",
    "ListenerSettings",
    "ModelGroup",
    "ModelInfo",
    "RedisSettings",
    "RequestParams",
    "RouterSettings",
    "Rule",
    "Secret",
    "ShadowSettings",
    "SharedSettings",
    "SidecarSettings",
    "StallSettings",
    "TelemetrySettings",
    "Wildcard",
    "load",
    "parse",
    "parse_yaml",
]

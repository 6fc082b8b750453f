"""Which model group serves a name the app asked for, when the name is not a group itself: the group it is an
alias of (``router_settings.model_group_alias``), or a group built for it from the most specific wildcard that
matches it (``config.wildcards``: ``openai/*``, ``*``). Built groups are kept in the router's tables (their own
breakers and statistics), the oldest out past ``MAX_WILDCARD_GROUPS``.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.config import Config, Deployment
from sidecar.config.wildcards import expand, match
from sidecar.core.errors import UnknownModel
from sidecar.policy.plan import context_windows, groups_to_try
from sidecar.routing.outcome import Target

MAX_WILDCARD_GROUPS = 256


class Names:
    """Resolves names into the router's tables (``targets``, ``plans``, ``windows``), building what is missing."""

    def __init__(self, config: Config, targets: dict[str, tuple[Target, ...]], plans: dict[str, tuple[str, ...]],
                 windows: dict[str, int | None], make: Callable[[Deployment], Target]) -> None:
        self.config = config
        self.targets, self.plans, self.windows = targets, plans, windows
        self.make = make
        self.built: dict[str, str] = {}  # name → the wildcard pattern it was built from

    def resolve(self, name: str) -> str:
        """The group serving ``name`` (not a group itself): an alias's, or one built now; else ``UnknownModel``."""
        alias = self.config.router.aliases.get(name)
        if alias is not None:
            return alias
        found = match(self.config.wildcards, name) if self.config.wildcards else None
        if found is None:
            raise UnknownModel(f"the model '{name}' does not exist", param="model")
        deployments = expand(found[0], name, found[1])
        if isinstance(deployments, str):
            raise UnknownModel(deployments, param="model")
        while len(self.built) >= MAX_WILDCARD_GROUPS:
            oldest = next(iter(self.built))
            del self.built[oldest], self.targets[oldest], self.plans[oldest], self.windows[oldest]
        pattern = self.built[name] = found[0].pattern
        self.targets[name] = tuple(self.make(d) for d in deployments)
        self.plans[name] = (name, *groups_to_try(pattern, self.config.router)[1:])
        self.windows[name] = context_windows({name: [d.model_info.max_input_tokens for d in deployments]})[name]
        return name

    def label(self, name: str) -> str:
        """The configured group a name is served by, for metrics and budgets: the group, the alias's group, the
        wildcard's pattern; "" for a name nothing serves (app-chosen names are not labels)."""
        if name in self.config.groups:
            return name
        alias = self.config.router.aliases.get(name)
        if alias is not None:
            return alias
        if name in self.built:
            return self.built[name]
        found = match(self.config.wildcards, name) if self.config.wildcards else None
        return found[0].pattern if found else ""

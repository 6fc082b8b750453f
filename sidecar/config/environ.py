"""``os.environ/NAME`` in any string value of the config, resolved once before the sections are read.

LiteLLM resolves the reference wherever it appears (``model``, ``api_base``, ``rpm``, a Redis host…), so we do
too, in one pass over the whole tree. A resolved value is an ``EnvString``: it remembers the variable, so a
problem with it names the variable and never echoes the value (it may be a key), and a numeric setting may
come from a variable (``rpm: os.environ/RPM``) the way YAML would have typed it inline. A variable that is not
set leaves a placeholder (``missing``): it is a problem where the loader reads it (``config.reader``), so a key
the sidecar ignores never fails a config for its variable, and with ``check-config --skip-secrets`` (e.g. in
CI) every check accepts it as given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

PREFIX = "os.environ/"
MAX_DEPTH = 32  # YAML anchors can nest deeply; a config never does


class EnvString(str):
    """A string that came from ``os.environ/<variable>``; ``missing`` when the variable was not set."""

    __slots__ = ("missing", "variable")
    variable: str
    missing: bool

    def __new__(cls, value: str, variable: str, *, missing: bool = False) -> EnvString:
        self = super().__new__(cls, value)
        self.variable = variable
        self.missing = missing
        return self

    def describe(self) -> str:
        return f"the value of {self.variable}"


def unresolved(value: object) -> bool:
    """A reference to a variable that was not set (only with secrets not resolved)."""
    return isinstance(value, EnvString) and value.missing


def resolve(data: Any, env: Mapping[str, str], depth: int = 0) -> Any:
    """``data`` with every ``os.environ/NAME`` string replaced by an ``EnvString`` (a new tree)."""
    if depth > MAX_DEPTH:
        return data
    if isinstance(data, dict):
        return {k: resolve(v, env, depth + 1) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve(v, env, depth + 1) for v in data]
    if isinstance(data, str) and data.startswith(PREFIX) and not isinstance(data, EnvString):
        name = data[len(PREFIX):]
        value = env.get(name)
        return EnvString(value, name) if value is not None else EnvString(data, name, missing=True)
    return data


def missing(value: Any, where: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(location, variable) of every reference to an unset variable in ``value``."""
    if depth > MAX_DEPTH:
        return
    if isinstance(value, EnvString) and value.missing:
        yield where, value.variable
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from missing(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from missing(v, f"{where}[{i}]", depth + 1)

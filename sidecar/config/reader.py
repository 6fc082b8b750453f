"""Reading a configuration mapping with locations: typed getters that collect problems instead of raising.

``Section`` reads one mapping (``model_list[2].litellm_params``), records each problem as
``location: message``, and at ``finish`` looks at every key it was never asked about: in our own sections
that is an error; in LiteLLM's (a section with a ``policy``) the policy table (``config.litellm``) says
whether it is ignored with a warning, refused, or a typo to point out. ``SecretResolver`` turns
``file:/path`` references (and the ``os.environ/NAME`` values ``config.environ`` resolved) into ``Secret``
values. ``config`` builds the typed configuration on top of them.
"""

from __future__ import annotations

import difflib
import math
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.config import litellm
from sidecar.config.environ import PREFIX, EnvString, missing


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` are ``location: message`` strings."""

    def __init__(self, problems: list[str], warnings: tuple[str, ...] = ()) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings  # found on the way; ``check-config`` shows them too


class Secret:
    """A credential from ``os.environ/NAME``, ``file:/path`` or a literal.

    File secrets are re-read by ``refresh()`` (the server calls it on a timer), so a rotated Kubernetes
    Secret takes effect without a restart. ``repr`` never shows the value.
    """

    __slots__ = ("_mtime", "path", "value")

    def __init__(self, value: str, path: str | None = None, mtime: float = 0.0) -> None:
        self.value = value
        self.path = path
        self._mtime = mtime

    def refresh(self) -> bool:
        """Re-read a file secret if it changed; True when the value changed."""
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return False
            with open(self.path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            return False  # keep the last good value; the file may be mid-rotation
        if not value:
            return False  # an empty file (mid-rotation, or a mistake): keep the last good value, look again
        if has_control(value):
            return False  # a value no request could carry: keep the last good one
        self._mtime = mtime
        changed, self.value = value != self.value, value
        return changed

    def __repr__(self) -> str:
        return "Secret(<redacted>)"


class Section:
    """A mapping being read: typed getters record problems with locations; ``finish`` flags unknown keys."""

    def __init__(self, data: object, where: str, problems: list[str], *, required: bool = False,
                 warnings: Warnings | None = None, policy: str | None = None, require_env: bool = True) -> None:
        self.where = where
        self.problems = problems
        self.warnings = warnings if warnings is not None else Warnings()
        self.require_env = require_env  # an unset os.environ/ variable read here is a problem (not --skip-secrets)
        self.policy = policy  # a section of ``litellm.SECTIONS``: LiteLLM's leniency; None: strict
        self.seen: set[str] = set()
        if data is None and not required:
            data = {}
        if not isinstance(data, dict):
            self.report(where or "(top level)", "expected a mapping")
            data = {}
        self.data: dict[str, Any] = data

    def report(self, location: str, message: str) -> None:
        self.problems.append(f"{location}: {message}")

    def problem(self, key: str, message: str) -> None:
        self.report(self._at(key), message)

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def raw(self, key: str) -> Any:
        """The value of a key whose own keys are read by a section of their own (their variables checked there)."""
        self.seen.add(key)
        return self.data.get(key)

    def get(self, key: str) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if self.require_env and value is not None and not isinstance(value, int | float | bool):
            for where, variable in missing(value, self._at(key)):
                problem = f"{where}: environment variable {variable} is not set"
                if problem not in self.problems:  # a key may be read more than once
                    self.problems.append(problem)
        return value

    def section(self, key: str, *, required: bool = False, policy: str | None = None) -> Section:
        value = self.raw(key)
        if value is None and required:
            self.problem(key, "is required")
        return self.child(value, self._at(key), policy)

    def child(self, data: object, where: str, policy: str | None = None) -> Section:
        """A section that is not one key of this one (an entry of a list), sharing its problems and warnings."""
        return Section(data, where, self.problems, warnings=self.warnings, policy=policy,
                       require_env=self.require_env)

    def warn(self, key: str, message: str) -> None:
        self.warnings.add(self.policy or "", key, self._at(key), message)

    def mapping(self, key: str) -> dict[Any, Any]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(key, "expected a mapping")
            return {}
        return value

    def list(self, key: str, *, sections: bool = False) -> list[Any]:
        """A list; of ``sections`` (mappings each read by a ``child``), or of values."""
        value = self.raw(key) if sections else self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, "expected a list")
            return []
        return value

    def _typed(self, key: str, default: Any, ok: Callable[[Any], bool], expected: str, required: bool,
               convert: Callable[[str], Any] | None = None, *, keep_missing: bool = False) -> Any:
        value = self.get(key)
        if value is None:
            if required:
                self.problem(key, "is required")
            return default
        if isinstance(value, EnvString):
            if value.missing:  # not resolved (check-config --skip-secrets): nothing to check
                return value if keep_missing else default
            if convert is not None:
                value = _converted(value, convert)
        if not ok(value):
            shown = value.describe() if isinstance(value, EnvString) else described(value)
            self.problem(key, f"expected {expected}, got {shown}")
            return default
        return value

    def string(self, key: str, default: str | None, *, required: bool = False) -> str | None:
        value = self._typed(key, default, lambda v: isinstance(v, str) and v != "", "a non-empty string",
                            required, keep_missing=True)
        return value  # type: ignore[no-any-return]

    def boolean(self, key: str, default: bool | None) -> Any:
        return self._typed(key, default, lambda v: isinstance(v, bool), "true or false", False, _boolean)

    def integer(self, key: str, default: int | None, *, minimum: int) -> Any:
        return self._typed(key, default, lambda v: is_int(v) and v >= minimum,
                           f"an integer >= {minimum}", False, int)

    def number(self, key: str, default: float | None, *, minimum: float) -> Any:
        value = self._typed(key, default, lambda v: is_number(v) and v >= minimum,
                            f"a number >= {minimum}", False, float)
        return float(value) if value is not None else None

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key)
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        value = self._typed(key, default, lambda v: v in choices, f"one of {', '.join(choices)}{hint}", False)
        return value  # type: ignore[no-any-return]

    def fallbacks(self, key: str) -> dict[str, tuple[str, ...]]:
        """LiteLLM's shape: ``[{group: [fallback, ...]}, ...]``."""
        out: dict[str, tuple[str, ...]] = {}
        for i, item in enumerate(self.list(key)):
            valid = isinstance(item, dict) and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(t, str) for t in v)
                for k, v in item.items()
            )
            if not valid:
                self.report(f"{self._at(key)}[{i}]", "expected {group: [fallback group, ...]}")
                continue
            out.update({k: tuple(v) for k, v in item.items()})
        return out

    def finish(self) -> None:
        """Report the keys nobody read: errors in a strict section; per the policy table in LiteLLM's."""
        keys = litellm.SECTIONS.get(self.policy) if self.policy is not None else None
        for key in self.data:
            if key in self.seen:
                continue
            name = str(key)
            known = keys.get(name) if keys is not None else None
            if keys is None:
                self.problem(name, "unknown key")
            elif known is None:
                self.warn(name, litellm.advice(self.policy, name))  # type: ignore[arg-type]
            elif known.status == litellm.REFUSED:
                self.problem(name, f"not supported: {known.note}")
            elif known.status == litellm.IGNORED:
                self.warn(name, f"ignored: {known.note}")
            elif known.status == litellm.IMPLEMENTED:  # read elsewhere, or not for this kind of deployment
                self.warn(name, "ignored: it has no effect here")


class Warnings:
    """Warnings about a config, each said once: the same key with the same message in many deployments is
    one line naming the first place and how many more (a config with 40 deployments says it once)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], list[str]] = {}

    def add(self, policy: str, key: str, location: str, message: str) -> None:
        self._seen.setdefault((policy, key, message), []).append(location)

    def lines(self) -> tuple[str, ...]:
        out = []
        for (_, _, message), where in self._seen.items():
            more = f" (and {len(where) - 1} more)" if len(where) > 1 else ""
            out.append(f"{where[0]}: {message}{more}")
        return tuple(out)


def _converted(value: str, convert: Callable[[str], Any]) -> Any:
    """A number or boolean written in an environment variable, typed as YAML would have typed it inline."""
    try:
        return convert(value.strip())
    except ValueError:
        return value


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(text)


def described(value: object) -> str:
    """A wrong value as a config problem names it: numbers and booleans as they are; a string, list or mapping
    by its kind only — a secret pasted into the wrong field must not be printed back in the error."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__


def has_control(text: str) -> bool:
    """A control character (other than tab) — never valid in an HTTP field value (RFC 9110 §5.5)."""
    return any((c < " " and c != "\t") or c == "\x7f" for c in text)


def header_problem(name: object, value: object) -> str | None:
    """Why ``name: value`` cannot be sent as an HTTP header field, or None."""
    if not isinstance(name, str) or not name or any(c not in _TOKEN for c in name):
        return f"{name!r} is not a valid header name"
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return f"header {name}: expected a string value"
    if has_control(str(value)):
        return f"header {name}: the value contains a control character (CR, LF, NUL, ...)"
    return None


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class SecretResolver:
    """Resolves ``os.environ/NAME`` and ``file:/path`` references, recording what cannot be resolved (and, in
    ``warnings``, key files any user of the machine can read)."""

    def __init__(self, env: Mapping[str, str], problems: list[str], *, enabled: bool,
                 warnings: list[str] | None = None) -> None:
        self.env = env
        self.problems = problems
        self.enabled = enabled
        self.warnings = warnings if warnings is not None else []

    def resolve(self, ref: object, where: str) -> Secret | None:
        if not isinstance(ref, str) or not ref:
            self.problems.append(f"{where}: expected a string")
            return None
        if isinstance(ref, EnvString):  # resolved before the sections were read (config.environ)
            # unset: reported where it was read; a trailing newline dropped, as from a file
            return self._checked(Secret("" if ref.missing else str(ref).strip()), where)
        if ref.startswith(PREFIX):
            name = ref.removeprefix(PREFIX)
            value = self.env.get(name)
            if value is None and self.enabled:
                self.problems.append(f"{where}: environment variable {name} is not set")
            return self._checked(Secret((value or "").strip()), where)  # a trailing newline, as from a file
        if ref.startswith("file:"):
            path = ref.removeprefix("file:")
            if not self.enabled:
                return Secret("", path)
            try:
                with open(path, encoding="utf-8") as handle:
                    value = handle.read().strip()
                status = os.stat(path)
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                self.problems.append(f"{where}: cannot read secret file {path}: {reason}")
                return None
            if not value:
                self.problems.append(f"{where}: secret file {path} is empty")
                return None
            if status.st_mode & stat.S_IROTH and not _kubernetes_volume(path):
                self.warnings.append(f"{where}: secret file {path} is readable by every user "
                                     f"(mode {stat.S_IMODE(status.st_mode):04o}); make it 0600 or 0640")
            return self._checked(Secret(value, path, status.st_mtime), where)
        return self._checked(Secret(ref.strip()), where)

    def _checked(self, secret: Secret, where: str) -> Secret:
        """A credential goes into a header: a control character in it would fail every request."""
        if has_control(secret.value):
            self.problems.append(f"{where}: the value contains a control character (CR, LF, NUL, ...)")
        return secret

    def resolve_all(self, refs: list[Any], where: str) -> list[Secret]:
        out = [self.resolve(ref, f"{where}[{i}]") for i, ref in enumerate(refs)]
        return [s for s in out if s is not None]

    def plain(self, value: str | None, where: str) -> str | None:
        """Non-secret strings may also come from ``os.environ/NAME`` (LiteLLM allows it for api_base)."""
        if value is None or isinstance(value, EnvString) or not value.startswith(PREFIX):
            return value
        secret = self.resolve(value, where)
        return secret.value if secret else None


def _kubernetes_volume(path: str) -> bool:
    """A file of a mounted Kubernetes Secret (its atomic writer's ``..<timestamp>`` directory): its mode is
    the volume's ``defaultMode`` and only the containers that mount the volume can read it."""
    return any(part.startswith("..") and part != ".." for part in os.path.realpath(path).split(os.sep))

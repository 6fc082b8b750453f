"""The Dockerfile, checked without a container engine.

Its shape is read statically; its install steps are replayed on this machine: the build stage's COPY and
`pip wheel` into a temporary directory, then the runtime stage's `pip install` from those wheels into a
fresh virtualenv, whose `llm-sidecar` must then run. System steps (apt-get, useradd) are the base
image's business and are skipped by name; any other RUN step the replay does not know fails the test, so
the two cannot drift apart silently.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from k8s_helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
SYSTEM_STEPS = ("apt-get ", "rm -rf /var/lib/apt/lists", "groupadd ", "useradd ")
NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable")


@dataclass
class Stage:
    base: str
    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each a list of (INSTRUCTION, arguments)."""
    logical = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        elif op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1].steps.append((op, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_dockerfile_shape(stages):
    build, runtime = stages[0], stages[-1]
    assert len(stages) >= 2, "multi-stage: wheels are built in a stage of their own"
    assert runtime.base == "python:3.11-slim"
    assert any(op == "RUN" and "pip wheel" in rest for op, rest in build.steps)
    final = {op: rest for op, rest in runtime.steps}  # the last of each instruction wins, as in Docker
    assert final["USER"].split(":")[0] == "10001", "non-root, numeric so runAsNonRoot can verify it"
    assert final["ENTRYPOINT"] == '["llm-sidecar", "serve"]', "exec form, so SIGTERM reaches the process"
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert "4000" in final["EXPOSE"].split()
    labels = " ".join(rest for op, rest in runtime.steps if op == "LABEL")
    assert "org.opencontainers.image.title" in labels and "org.opencontainers.image.version" in labels
    env = " ".join(rest for op, rest in runtime.steps if op == "ENV")
    assert "TMPDIR=/tmp" in env and "PIP_NO_CACHE_DIR=1" in env
    runs = " ".join(rest for op, rest in runtime.steps if op == "RUN")
    assert "build-essential" not in runs and "gcc" not in runs, "no compiler in the final image"
    assert not [rest for op, rest in runtime.steps if op == "COPY"], "wheels are bind-mounted, not copied"
    assert "--no-index" in runs, "the runtime stage installs only the wheels of the build stage"


def test_dockerignore_keeps_the_context_small():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "ignore everything, then allow only what the image needs"
    assert {"!pyproject.toml", "!sidecar/"} <= set(rules)


class Replay:
    """Runs a stage's COPY and pip steps, with container paths mapped under ``root``."""

    def __init__(self, root: Path, python: str, mounts: dict[str, Path] | None = None):
        self.root, self.python, self.mounts = root, python, mounts or {}
        self.workdir = root
        root.mkdir(parents=True, exist_ok=True)
        # The image turns pip's cache off; the replay keeps it so repeated runs do not download again.
        self.env = {k: v for k, v in os.environ.items() if k != "PIP_NO_CACHE_DIR"}

    def path(self, container_path: str) -> Path:
        for target, host in self.mounts.items():
            if container_path == target or container_path.startswith(target + "/"):
                return host / container_path[len(target) :].lstrip("/")
        if container_path.startswith("/"):
            return self.root / container_path.lstrip("/")
        return self.workdir / container_path

    def run_stage(self, stage: Stage) -> None:
        for op, rest in stage.steps:
            if op == "WORKDIR":
                self.workdir = self.path(rest)
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif op == "ENV":
                for key, value in re.findall(r"(\w+)=(\S+)", rest):
                    if key != "PIP_NO_CACHE_DIR":
                        self.env[key] = value
            elif op == "COPY":
                self.copy(rest)
            elif op == "RUN":
                self.run(rest)

    def copy(self, rest: str) -> None:
        *sources, dest = shlex.split(rest)
        assert not [s for s in sources if s.startswith("--")], f"COPY options not replayed: {rest}"
        matched = [Path(p) for pattern in sources for p in glob.glob(str(REPO / pattern))]
        assert matched, f"COPY {rest}: no source matches"
        target = self.path(dest)
        for src in matched:
            into = target / src.name if dest.endswith("/") else target
            into.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, into)

    def run(self, rest: str) -> None:
        command = re.sub(r"--mount=\S+\s*", "", rest)
        for step in (s.strip() for s in command.split("&&")):
            if step.startswith(SYSTEM_STEPS):
                continue
            argv = shlex.split(step)
            assert argv[0] == "pip", f"RUN step the replay does not know: {step!r}"
            argv = [str(self.path(a)) if a.startswith("/") else a for a in argv[1:]]
            argv = [re.sub(r"^(--[\w-]+=)(/.*)$", lambda m: m.group(1) + str(self.path(m.group(2))), a) for a in argv]
            result = subprocess.run(
                [self.python, "-m", "pip", *argv],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            output = result.stdout + result.stderr
            if result.returncode != 0 and any(e in output for e in NETWORK_ERRORS):
                pytest.skip(f"the package index is unreachable, so dependencies cannot be fetched: {step}")
            assert result.returncode == 0, f"{step} failed:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def installed(stages, tmp_path_factory) -> Path:
    """A fresh virtualenv holding what the image's install steps put in it; returns its bin/."""
    root = tmp_path_factory.mktemp("image")
    build = Replay(root / "build", sys.executable)
    build.run_stage(stages[0])
    target = root / "venv"
    venv.create(target, with_pip=True, clear=True)
    bindir = target / "bin"
    runtime = Replay(root / "runtime", str(bindir / "python"), mounts=bind_mounts(stages, root))
    runtime.run_stage(stages[-1])
    return bindir


def bind_mounts(stages: list[Stage], root: Path) -> dict[str, Path]:
    """RUN --mount=type=bind,from=STAGE,source=SRC,target=DST as DST -> the replayed stage's SRC."""
    mounts = {}
    for op, rest in stages[-1].steps:
        for spec in re.findall(r"--mount=(\S+)", rest) if op == "RUN" else []:
            opts = dict(part.split("=", 1) for part in spec.split(","))
            assert opts.get("from") == stages[0].name, f"mount from an unknown stage: {spec}"
            mounts[opts["target"]] = root / "build" / opts["source"].lstrip("/")
    return mounts


def test_install_steps_give_a_working_console_script(installed):
    assert (installed / "llm-sidecar").exists()
    result = subprocess.run(
        [str(installed / "python"), "-c", "import sidecar, aiohttp, yaml; print(sidecar.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=installed,  # not the work tree, whose sidecar/ would shadow the installed one
    )
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout, "installed from the wheel, not the work tree"


def test_installed_cli_answers_help(installed):
    probe = subprocess.run(
        [str(installed / "python"), "-c", "import sidecar.cli"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=installed,
    )
    if probe.returncode != 0 and ("ImportError" in probe.stderr or "ModuleNotFoundError" in probe.stderr):
        pytest.skip(f"sidecar.cli not importable yet: {probe.stderr.strip().splitlines()[-1]}")
    result = subprocess.run(
        [str(installed / "llm-sidecar"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serve" in result.stdout

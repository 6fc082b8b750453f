"""Claude Code itself (npm ``@anthropic-ai/claude-code``, 2.1.332) through the real sidecar: ``claude -p`` with
``ANTHROPIC_BASE_URL`` at the sidecar against the Anthropic emulator (which refuses beta-gated fields without their
flag, as the API does), the OpenAI emulator, a failover mid-session from a failing Anthropic deployment to an
OpenAI-format one, and a session in which the OpenAI emulator calls Claude Code's own ``Read`` tool.

No account is needed: the key is a dummy, and telemetry, auto-update and other non-essential traffic are off.
``make test`` installs Claude Code into ``~/.cache/llm-sidecar/claude-code-2.1.332`` when missing (so does this
module); the tests are skipped only when the npm registry cannot be reached. Each run takes a few seconds.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.integration.procs import PROVIDER_KEY, ROOT, FakeProvider, Sidecar, fake_providers

pytestmark = pytest.mark.slow

VERSION = "2.1.332"
CACHE = Path(os.environ.get("LLM_SIDECAR_CACHE", Path.home() / ".cache" / "llm-sidecar"))
INSTALL_DIR = CACHE / f"claude-code-{VERSION}"
CLAUDE = INSTALL_DIR / "node_modules" / ".bin" / "claude"


def _installed() -> bool:
    if not CLAUDE.exists():
        return False
    probe = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True, timeout=60)
    return probe.returncode == 0 and VERSION in probe.stdout


def _registry_reachable() -> tuple[bool, str]:
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
    try:
        requests.get(f"{registry}/-/ping", timeout=15)
    except requests.RequestException as exc:
        return False, f"{registry}: {type(exc).__name__}"
    return True, registry


def claude_code() -> Path:
    """Claude Code's binary, installed by ``make claude-code`` (the recipe ``make test`` runs) when missing."""
    if _installed():
        return CLAUDE
    done = subprocess.run(["make", "-s", "claude-code", f"CLAUDE_CODE_DIR={INSTALL_DIR}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if done.returncode == 0 and _installed():
        return CLAUDE
    reachable, where = _registry_reachable()
    if not reachable:
        pytest.skip(f"Claude Code tests skipped: the npm registry cannot be reached ({where})")
    raise AssertionError(f"installing Claude Code {VERSION} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def claude() -> Path:
    return claude_code()


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(workdir, "cc-anthropic", "cc-openai") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> None:
    for fake in fakes.values():
        fake.clear()
        fake.set(tool_call="")  # Claude Code offers a dozen tools: call one only when a test says so


@pytest.fixture(scope="module")
def sidecar(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Sidecar]:
    claude_base, openai_base = fakes["cc-anthropic"].url, f"{fakes['cc-openai'].url}/v1"

    def entry(group: str, model: str, api_base: str, info: dict[str, object] | None = None,
              **params: object) -> dict[str, object]:
        return {"model_name": group, "model_info": info or {},
                "litellm_params": {"model": model, "api_base": api_base, "api_key": PROVIDER_KEY, **params}}

    config = {
        "model_list": [
            entry("cc-claude", "anthropic/claude-emulated", claude_base),
            entry("cc-fast", "sglang/qwen-emulated", openai_base, {"max_output_tokens": 8192,
                                                                   "supports_reasoning": True}),
            entry("cc-failover", "anthropic/claude-emulated", claude_base, order=1),
            entry("cc-failover", "openai/gpt-emulated", openai_base, order=2),
        ],
        "router_settings": {"timeout": 30, "num_retries": 0},
    }
    process = Sidecar(config, workdir, "claude-code")
    yield process
    process.stop()


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "project").mkdir()
    return tmp_path


def run(claude: Path, sidecar: Sidecar, scratch: Path, model: str, prompt: str, *args: str
        ) -> subprocess.CompletedProcess[str]:
    """``claude -p`` as a user runs it, with nothing of this machine's own Claude Code setup."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch / "home"),
           "ANTHROPIC_BASE_URL": sidecar.url, "ANTHROPIC_API_KEY": "sk-ant-dummy-not-a-key",
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_COST_WARNINGS": "1"}
    return subprocess.run([str(claude), "-p", prompt, "--model", model, *args], cwd=scratch / "project", env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_anthropic_emulator_with_beta_flags(claude, sidecar, fakes, scratch) -> None:
    fakes["cc-anthropic"].set(text="Hi from the Anthropic emulator.")
    assert "Hi from the Anthropic emulator." in ok(run(claude, sidecar, scratch, "cc-claude", "say hi"))
    seen = fakes["cc-anthropic"].stats()
    assert "context-management-2025-06-27" in seen["last_headers"]["anthropic-beta"]
    assert seen["last_body"]["context_management"] and seen["last_body"]["model"] == "claude-emulated"


def test_openai_emulator(claude, sidecar, fakes, scratch) -> None:
    fakes["cc-openai"].set(text="Hi from the OpenAI emulator.", reasoning="The user greets me.")
    assert "Hi from the OpenAI emulator." in ok(run(claude, sidecar, scratch, "cc-fast", "say hi"))
    sent = fakes["cc-openai"].stats()["last_body"]
    assert sent["max_tokens"] == 8192 and sent["reasoning_effort"] and "context_management" not in sent
    assert "anthropic-beta" not in fakes["cc-openai"].stats()["last_headers"]


def test_failover_mid_session_from_anthropic_to_openai(claude, sidecar, fakes, scratch) -> None:
    fakes["cc-anthropic"].set(text="First answer, from Claude.")
    assert "First answer, from Claude." in ok(run(claude, sidecar, scratch, "cc-failover", "first question"))
    fakes["cc-anthropic"].set(error_rate=1.0, error_status=529)  # Anthropic is overloaded from here on
    fakes["cc-openai"].set(text="Second answer, from the fallback.")
    second = run(claude, sidecar, scratch, "cc-failover", "second question", "--continue")
    assert "Second answer, from the fallback." in ok(second)
    assert fakes["cc-anthropic"].stats()["errors_injected"] >= 1
    history = orjson.dumps(fakes["cc-openai"].stats()["last_body"]["messages"]).decode()
    assert "first question" in history and "First answer, from Claude." in history  # the session went along


def test_openai_emulator_calls_claude_codes_read_tool(claude, sidecar, fakes, scratch) -> None:
    notes = scratch / "project" / "notes.txt"
    notes.write_text("The launch code is 4242.\n")
    fakes["cc-openai"].set(tool_call="Read", tool_arguments=orjson.dumps({"file_path": str(notes)}).decode(),
                           text="The file says the launch code is 4242.")
    result = run(claude, sidecar, scratch, "cc-fast", "what is in notes.txt?", "--allowedTools", "Read")
    assert "The file says the launch code is 4242." in ok(result)
    messages = fakes["cc-openai"].stats()["last_body"]["messages"]
    calls = [m for m in messages if m.get("tool_calls")]
    results = [m for m in messages if m["role"] == "tool"]
    assert calls[-1]["tool_calls"][0]["function"]["name"] == "Read"
    assert results and results[-1]["tool_call_id"] == calls[-1]["tool_calls"][0]["id"]
    assert "The launch code is 4242." in results[-1]["content"]  # Claude Code read the file and sent it back

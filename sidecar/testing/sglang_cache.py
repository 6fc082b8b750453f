"""The prefix-cache model of the SGLang emulator (pure): an LRU of prompt prefixes with a capacity in tokens.

SGLang keeps a radix tree of the KV cache of prompts it has served and evicts least-recently-used leaves when
the pool is full; a request reuses the longest cached prefix of its tokens and prefills only the rest. This
model keeps the same behaviour at page granularity (SGLang's ``page_size``; 16 here, as SMG's block size):
the prompt's tokens are cut into pages, each page named by the chained hash of every token up to its end, so
a page is only ever shared by prompts with the same prefix. A lookup walks the pages from the start and
stops at the first one not cached; inserting touches pages deepest first, so a parent is always more recent
than its children and eviction takes leaves first, as in the radix tree.

Tokens are whitespace-separated words of the rendered chat prompt (``prompt_tokens``): a stand-in for a real
tokenizer that keeps every property the router cares about (a shared text prefix is a shared token prefix).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

PAGE = 16


def prompt_tokens(body: Any) -> list[str]:
    """The prompt of a chat or completions body as tokens, rendered like a chat template (role markers)."""
    if not isinstance(body, dict):
        return []
    messages = body.get("messages")
    if isinstance(messages, list):
        words: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            words.append(f"<|{message.get('role')}|>")
            words += _text(message.get("content")).split()
        words.append("<|assistant|>")
        return words
    prompt = body.get("prompt")
    return _text(prompt).split() if isinstance(prompt, str | list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict)) if all(
            isinstance(p, dict) for p in content) else " ".join(map(str, content))
    return "" if content is None else str(content)


def page_keys(tokens: Sequence[str]) -> list[int]:
    """One key per full page: the chained hash of every token up to the page's end."""
    keys, previous = [], 0
    for start in range(0, len(tokens) - PAGE + 1, PAGE):
        previous = hash((previous, *tokens[start:start + PAGE]))
        keys.append(previous)
    return keys


class PrefixCache:
    """The cached pages of one replica, least recently used first; ``capacity`` in tokens."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = max(0, capacity_tokens) // PAGE
        self.pages: OrderedDict[int, None] = OrderedDict()
        self.evicted_tokens = 0

    @property
    def used_tokens(self) -> int:
        return len(self.pages) * PAGE

    def match(self, keys: Sequence[int]) -> int:
        """Tokens of the longest cached prefix (whole pages)."""
        matched = 0
        for key in keys:
            if key not in self.pages:
                break
            matched += 1
        return matched * PAGE

    def insert(self, keys: Sequence[int]) -> None:
        """Record that a prompt with these pages was served: touch deepest first, then evict over capacity."""
        if not self.capacity:
            return
        for key in reversed(keys[:self.capacity]):  # deepest first: the root ends most recent
            self.pages[key] = None
            self.pages.move_to_end(key)
        while len(self.pages) > self.capacity:
            self.pages.popitem(last=False)
            self.evicted_tokens += PAGE

    def flush(self) -> None:
        self.pages.clear()

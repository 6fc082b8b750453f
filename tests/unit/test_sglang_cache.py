"""The emulator's prefix-cache model: longest cached prefix by pages, LRU eviction leaves first."""

from __future__ import annotations

from sidecar.testing.sglang_cache import PAGE, PrefixCache, page_keys, prompt_tokens


def _tokens(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_longest_cached_prefix_in_whole_pages() -> None:
    cache = PrefixCache(10 * PAGE)
    shared = _tokens("s", 3 * PAGE)
    cache.insert(page_keys([*shared, *_tokens("a", PAGE + 3)]))
    assert cache.match(page_keys([*shared, *_tokens("b", 2 * PAGE)])) == 3 * PAGE
    assert cache.match(page_keys(_tokens("z", 4 * PAGE))) == 0


def test_same_text_at_another_position_is_not_a_hit() -> None:
    cache = PrefixCache(10 * PAGE)
    page = _tokens("p", PAGE)
    cache.insert(page_keys([*_tokens("q", PAGE), *page]))
    assert cache.match(page_keys(page)) == 0


def test_capacity_evicts_least_recently_used_leaves_first() -> None:
    cache = PrefixCache(4 * PAGE)
    root = _tokens("r", 2 * PAGE)
    cache.insert(page_keys([*root, *_tokens("a", 2 * PAGE)]))
    cache.insert(page_keys([*root, *_tokens("b", PAGE)]))  # 5 pages: one of a's leaves goes, the root stays
    assert cache.used_tokens == 4 * PAGE
    assert cache.match(page_keys([*root, *_tokens("b", PAGE)])) == 3 * PAGE
    assert cache.match(page_keys([*root, *_tokens("a", 2 * PAGE)])) == 3 * PAGE


def test_prompt_tokens_render_roles() -> None:
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]}
    assert prompt_tokens(body) == ["<|system|>", "be", "brief", "<|user|>", "hi", "there", "<|assistant|>"]
    assert prompt_tokens({"prompt": "a b"}) == ["a", "b"]

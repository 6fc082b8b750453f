"""Intent routing's arithmetic and the text it embeds."""

from __future__ import annotations

import math

from sidecar.policy.intent import nearest, normalised
from sidecar.routing.intent import last_user_text


def test_normalised() -> None:
    vector = normalised([3, 4])
    assert vector == (0.6, 0.8)
    assert normalised([0, 0]) is None and normalised(["x"]) is None and normalised([math.inf]) is None


def test_nearest_takes_each_groups_best_example() -> None:
    index = [("a", [(1.0, 0.0), (0.0, 1.0)]), ("b", [normalised([1, 1]) or ()]), ("c", [(1.0, 0.0, 0.0)])]
    assert nearest((0.0, 1.0), index) == ("a", 1.0)
    group, score = nearest(normalised([1, 0.9]) or (), index)
    assert group == "b" and 0.99 < score <= 1.0
    assert nearest((1.0, 0.0), []) == (None, -math.inf)


def test_last_user_text() -> None:
    body = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "second"},
                                                      {"type": "image_url", "image_url": {"url": "x"}},
                                                      {"type": "text", "text": "part"}]}]}
    assert last_user_text(body) == "second part"
    assert last_user_text({"messages": [{"role": "system", "content": "s"}]}) == ""
    assert last_user_text({}) == ""

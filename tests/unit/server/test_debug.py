"""/debug/route answers loopback clients only."""

from __future__ import annotations

import pytest

from sidecar.server.debug import is_loopback


@pytest.mark.parametrize(("remote", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.0.0.5", False), ("192.168.1.2", False),
    ("::ffff:10.0.0.5", False), ("::ffff:127.0.0.1", True), ("fe80::1", False), ("", False), (None, False),
    ("not-an-address", False),
])
def test_is_loopback(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback

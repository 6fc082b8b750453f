"""Event loops for the async tests here: uvloop (the server's loop) as well as asyncio's for the wire stream
tests, whose transports' pause/resume and abort are separate implementations in each; asyncio's alone elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

_ASYNCIO: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
_BOTH: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {**_ASYNCIO, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    return _BOTH if module is not None and module.__name__.endswith(".test_wire_stream") else _ASYNCIO

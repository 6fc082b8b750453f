"""Event loops for the async tests here: uvloop (the server's loop) as well as asyncio's for the wire stream and
egress tests, whose transports' pause/resume, abort and sockets are separate implementations in each; asyncio's
alone elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import pytest
import uvloop

from sidecar.providers import http, wire

_ASYNCIO: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
_BOTH: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {**_ASYNCIO, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    both = module is not None and module.__name__.endswith((".test_wire_stream", ".test_wire_egress"))
    return _BOTH if both else _ASYNCIO


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session with a wire pool attached, as the server makes one (closed after the test)."""
    session = aiohttp.ClientSession()
    http.attach_pool(session, wire.Pool(limit=4, user_agent="llm-sidecar/test"))
    yield session
    await http.close(session)

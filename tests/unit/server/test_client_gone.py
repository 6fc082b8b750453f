"""An app that hangs up while its answer is being written: a cancelled request (499), never an internal error
with a traceback (the write can fail just before aiohttp cancels the handler)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import make_mocked_request

from sidecar.routing.pipeline import Pipeline
from sidecar.server.middleware import guarded
from sidecar.telemetry import RequestRecord


def test_a_write_to_an_app_gone_is_a_cancellation_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(_: object) -> object:
        raise ConnectionResetError("Cannot write to closing transport")

    async def main() -> None:
        await guarded(handler)(make_mocked_request("POST", "/v1/chat/completions"))  # type: ignore[arg-type]

    with caplog.at_level(logging.ERROR), pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert not caplog.records
    record = RequestRecord("r", "g", stream=True)
    Pipeline._failed(ConnectionResetError(), record, None)
    assert (record.outcome, record.status) == ("cancelled", 499)

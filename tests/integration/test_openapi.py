"""/openapi.json is the API's contract: it documents every route the sidecar serves (a route added without
its entry fails here), it is valid OpenAPI 3.1, and schemathesis fuzzes the running sidecar from it — no 5xx
caused by the sidecar, every error OpenAI- or Anthropic-shaped, and the process alive at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as builtin
from schemathesis.config import SchemathesisConfig

from sidecar.config import parse
from sidecar.server import openapi
from sidecar.server.app import create_admin_app, create_app
from sidecar.server.keys import AppState
from tests.integration.procs import FakeProvider, Sidecar, deployment

MAX_EXAMPLES = 10  # per operation, valid and invalid inputs: a bounded run (~20 s; about 250 requests)


def served(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route an aiohttp app serves, without the 405 and 404 catch-alls and the HEAD
    routes aiohttp adds to each GET."""
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.method not in ("*", "HEAD") and "{tail" not in route.resource.canonical}


def documented(document: dict[str, Any], tag: str | None = None) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method, op in item.items()
            if method != "servers" and (tag is None or tag in op["tags"])}


def test_every_served_route_is_documented(fuzzed: Sidecar) -> None:
    document = requests.get(f"{fuzzed.admin_url}/openapi.json", timeout=10).json()
    state = AppState(parse({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}]}))
    api, admin = served(create_app(state)), served(create_admin_app(state))
    assert api - documented(document) == set(), "served on the API port but missing from /openapi.json"
    assert admin - documented(document) == set(), "served on the admin port but missing from /openapi.json"
    assert documented(document) - api - admin == set(), "documented but not served"
    assert ("GET", "/openapi.json") in admin and ("GET", "/openapi.json") not in api  # the admin port only
    assert document["openapi"] == "3.1.0"


def test_the_document_is_valid_openapi_31(fuzzed: Sidecar) -> None:
    document = requests.get(f"{fuzzed.admin_url}/openapi.json", timeout=10).json()
    assert orjson.loads(openapi.BODY) == document
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 meta-schema


@pytest.fixture(scope="module")
def fuzzed(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    """A sidecar serving the model group the document's examples name, in front of a healthy fake."""
    config = {"model_list": [deployment("gpt-4o", primary)],
              "router_settings": {"timeout": 10, "num_retries": 0},
              "sidecar_settings": {"max_body_size_mb": 1}}
    sidecar = Sidecar(config, workdir, "fuzzed")
    yield sidecar
    assert sidecar.process.poll() is None, "the sidecar died under the fuzzer"
    assert sidecar.stop() == 0


# The document the admin port serves (the same bytes: checked in test_the_document_is_valid_openapi_31);
# /openapi.json itself lives on the admin port, another base URL, and is fetched by the tests above.
schema = schemathesis.openapi.from_dict(
    orjson.loads(openapi.BODY),
    config=SchemathesisConfig.from_dict({"seed": 1, "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
                                        "phases": {"coverage": {"enabled": False}}}),
).exclude(path="/openapi.json")


@schemathesis.check
def error_is_well_shaped(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx/5xx body is the error shape of the route's dialect, with a message."""
    if response.status_code < 400:
        return None
    body = response.json()
    if case.path.endswith("/messages"):
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
        assert isinstance(body["error"]["type"], str), body
    else:
        assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str), body
    return True


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))  # a loaded machine is slow, not wrong
def test_fuzz_the_running_sidecar(case: schemathesis.Case, fuzzed: Sidecar) -> None:
    case.call_and_validate(base_url=fuzzed.url, checks=[builtin.not_a_server_error, builtin.status_code_conformance,
                                   builtin.content_type_conformance, builtin.response_schema_conformance,
                                   builtin.response_headers_conformance, error_is_well_shaped])

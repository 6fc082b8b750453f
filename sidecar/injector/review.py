"""AdmissionReview (admission.k8s.io/v1) in → AdmissionReview out, with the JSON Patch when injecting.

Two webhooks call this, told apart by ``namespace_opted_in``: pods in namespaces labelled
``llm-sidecar.io/inject=enabled`` are injected unless they say ``llm-sidecar.io/inject: "false"``;
elsewhere only pods that say ``"true"``. A pod is left alone (allowed, no patch) when it did not opt in, when
it already has the sidecar, and when it is one of the injector's own pods. A pod that opted in with choices
that cannot be honoured is refused with a message naming them. A review that is not one gets
``InvalidReview`` — the server answers 400 with its message.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.injector import annotations, patch
from sidecar.injector.template import Template

API_VERSION = "admission.k8s.io/v1"
INJECTOR_LABEL = "llm-sidecar.io/injector"  # on the injector's own pods: never injected


class InvalidReview(ValueError):
    """The request body is not an AdmissionReview v1 request for a pod."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What was decided, for the log line and the tests."""

    injected: bool
    reason: str
    response: dict[str, Any]


def respond(body: bytes, template: Template, *, namespace_opted_in: bool) -> Verdict:
    review = _loads(body)
    request = review["request"]
    uid = request["uid"]
    pod = request.get("object")
    kind = request.get("kind") if isinstance(request.get("kind"), dict) else {}
    if request.get("operation", "CREATE") != "CREATE" or kind.get("kind", "Pod") != "Pod":
        return _allow(review, uid, "not a pod being created")
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        return _refuse(review, uid, "request.object: expected a Pod with a spec")
    metadata = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    notes = _strings(metadata.get("annotations"))
    if INJECTOR_LABEL in _strings(metadata.get("labels")):
        return _allow(review, uid, "the injector's own pod")
    inject, warning = annotations.opt_in(notes, namespace_opted_in)
    if not inject:
        return _allow(review, uid, "did not opt in", warning)
    if patch.has_sidecar(pod["spec"]) or notes.get(annotations.STATUS) == "injected":
        return _allow(review, uid, "already has the sidecar")
    try:
        ops = patch.build(pod, template, annotations.choices(notes))
    except annotations.AnnotationError as error:
        return _refuse(review, uid, f"llm-sidecar injector: {error}")
    except (TypeError, AttributeError, KeyError, IndexError, ValueError):  # a spec no API server would pass on
        return _refuse(review, uid, "request.object: not a well-formed Pod (a field of the wrong type)")
    response = {"uid": uid, "allowed": True, "patchType": "JSONPatch",
                "patch": base64.b64encode(orjson.dumps(ops)).decode()}
    return Verdict(True, "injected", _envelope(review, response))


def _loads(body: bytes) -> dict[str, Any]:
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidReview(f"the body is not JSON: {exc}") from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise InvalidReview("expected an AdmissionReview object")
    if review.get("apiVersion") != API_VERSION:
        raise InvalidReview(f"apiVersion: expected {API_VERSION} (set admissionReviewVersions: [v1])")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise InvalidReview("request.uid: required")
    return review


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _envelope(review: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}


def _allow(review: dict[str, Any], uid: str, reason: str, warning: str | None = None) -> Verdict:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if warning is not None:
        response["warnings"] = [warning]
    return Verdict(False, reason, _envelope(review, response))


def _refuse(review: dict[str, Any], uid: str, message: str) -> Verdict:
    response = {"uid": uid, "allowed": False, "status": {"code": 400, "reason": "BadRequest", "message": message}}
    return Verdict(False, message, _envelope(review, response))

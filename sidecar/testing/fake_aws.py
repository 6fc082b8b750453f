"""What the Bedrock emulator shares with AWS itself: SigV4 verification against fixed test credentials (with
botocore, as AWS checks it), the ``vnd.amazon.eventstream`` encoder, JSON error answers with
``x-amzn-ErrorType``, and an STS endpoint (``POST /``: AssumeRole, AssumeRoleWithWebIdentity) that issues
temporary credentials the emulator then accepts. Never imported by runtime modules.
"""

from __future__ import annotations

import binascii
import datetime
import itertools
import re
import struct
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from sidecar.testing.faults import STATS_KEY, Stats

ACCESS_KEY = "AKIDSIDECARTEST0001"
SECRET_KEY = "sidecar/test+secret/0001"
TEMP_KEY, TEMP_SECRET, TEMP_TOKEN = "ASIASIDECARTEMP0001", "sidecar/temp/secret", "valid-session-token"
EXPIRED_TOKEN = "expired-session-token"
ROLE_KEY, ROLE_SECRET, ROLE_TOKEN_PREFIX = "ASIASIDECARROLE0001", "sidecar/role/secret", "role-session-token-"
BEARER_KEY = "bedrock-api-key-sidecar-test"
SKEW = datetime.timedelta(minutes=5)
CREDENTIAL = re.compile(r"Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_sessions = itertools.count(1)


def aws_error(name: str, status: int, message: str, stats: Stats) -> web.Response:
    stats.by_status[str(status)] = stats.by_status.get(str(status), 0) + 1
    return web.Response(body=orjson.dumps({"message": message}), status=status, content_type="application/json",
                        headers={"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                                 "x-amzn-RequestId": "fake-request-id"})


def _secret_for(key: str, token: str | None) -> str | None:
    if key == ACCESS_KEY:
        return SECRET_KEY
    if key == TEMP_KEY and token in (TEMP_TOKEN, EXPIRED_TOKEN):
        return TEMP_SECRET
    if key == ROLE_KEY and token and token.startswith(ROLE_TOKEN_PREFIX):
        return ROLE_SECRET
    return None


def check_auth(request: web.Request, body: bytes) -> web.Response | None:
    """None when the request is signed with a known credential (or carries the test API key); else AWS's 403."""
    stats = request.app[STATS_KEY]
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        if header == f"Bearer {BEARER_KEY}":
            return None
        return aws_error("UnrecognizedClientException", 403, "The security token included in the request is "
                         "invalid.", stats)
    match = CREDENTIAL.search(header)
    signed = re.search(r"SignedHeaders=([a-z0-9;-]+)", header)
    signature = re.search(r"Signature=([0-9a-f]{64})", header)
    stamp = request.headers.get("x-amz-date", "")
    if not (header.startswith("AWS4-HMAC-SHA256 ") and match and signed and signature and stamp):
        return aws_error("MissingAuthenticationTokenException", 403, "Missing Authentication Token", stats)
    key, _, region, service = match.groups()
    token = request.headers.get("x-amz-security-token")
    secret = _secret_for(key, token)
    if secret is None:
        return aws_error("UnrecognizedClientException", 403, "The security token included in the request is "
                         "invalid.", stats)
    if token == EXPIRED_TOKEN:
        return aws_error("ExpiredTokenException", 403, "The security token included in the request is expired",
                         stats)
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    now = datetime.datetime.now(datetime.UTC)
    if now - when > SKEW:
        return aws_error("InvalidSignatureException", 403, f"Signature expired: {stamp} is now earlier than "
                         f"{(now - SKEW):%Y%m%dT%H%M%SZ} ({now:%Y%m%dT%H%M%SZ} - 5 min.)", stats)
    if _signature(request, body, signed.group(1).split(";"), key, secret, token, region, service, stamp) != \
            signature.group(1):
        return aws_error("InvalidSignatureException", 403, "The request signature we calculated does not match the "
                         "signature you provided. Check your AWS Secret Access Key and signing method. Consult the "
                         "service documentation for details.", stats)
    return None


def _signature(request: web.Request, body: bytes, signed: list[str], key: str, secret: str,  # noqa: PLR0913
               token: str | None, region: str, service: str, stamp: str) -> str:
    """What AWS computes: the request rebuilt from its raw path and the signed headers only, signed by botocore."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {name: request.headers.get(name, "") for name in signed}
    rebuilt = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}", data=body,
                         headers=headers)
    rebuilt.context["timestamp"] = stamp
    auth = SigV4Auth(Credentials(key, secret, token), service, region)
    return str(auth.signature(auth.string_to_sign(rebuilt, auth.canonical_request(rebuilt)), rebuilt))


# ---- the event stream -------------------------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One ``vnd.amazon.eventstream`` message with string headers (reference §A4)."""
    encoded = b"".join(struct.pack("!B", len(k.encode())) + k.encode() + b"\x07" + struct.pack("!H", len(v.encode()))
                       + v.encode() for k, v in headers.items())
    prelude = struct.pack("!II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(name: str, data: dict[str, object]) -> bytes:
    return frame({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                 orjson.dumps(data))


def exception(name: str, message: str) -> bytes:
    return frame({":exception-type": name, ":content-type": "application/json", ":message-type": "exception"},
                 orjson.dumps({"message": message}))


def corrupt(message: bytes) -> bytes:
    """The same message with a wrong CRC at its end."""
    return message[:-4] + bytes(b ^ 0xFF for b in message[-4:])


# ---- STS ------------------------------------------------------------------------------------------


async def sts(request: web.Request) -> web.Response:
    """AssumeRole / AssumeRoleWithWebIdentity (query protocol): temporary credentials valid for an hour."""
    form = parse_qs((await request.read()).decode())
    action = (form.get("Action") or [""])[0]
    stats = request.app[STATS_KEY]
    stats.sts_calls += 1
    if action not in ("AssumeRole", "AssumeRoleWithWebIdentity"):
        return web.Response(status=400, text="unsupported action")
    session = (form.get("RoleSessionName") or ["s"])[0]
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    xml = (f'<{action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><{action}Result>'
           f"<Credentials><AccessKeyId>{ROLE_KEY}</AccessKeyId><SecretAccessKey>{ROLE_SECRET}</SecretAccessKey>"
           f"<SessionToken>{ROLE_TOKEN_PREFIX}{next(_sessions)}</SessionToken>"
           f"<Expiration>{expires:%Y-%m-%dT%H:%M:%SZ}</Expiration></Credentials>"
           f"<AssumedRoleUser><AssumedRoleId>AROAFAKE:{session}</AssumedRoleId>"
           f"<Arn>arn:aws:sts::123456789012:assumed-role/fake/{session}</Arn></AssumedRoleUser>"
           f"</{action}Result><ResponseMetadata><RequestId>fake-sts</RequestId></ResponseMetadata></{action}Response>")
    return web.Response(text=xml, content_type="text/xml")

"""Request authentication for the Bedrock simulator: SigV4 and Bedrock API keys.

SigV4 checks recompute the signature with botocore's own ``SigV4Auth``. The inputs are
the headers the client listed in ``SignedHeaders``, the raw request path and the body,
so a client that signs differently from the AWS SDKs fails here as it would on AWS.
The error types and messages follow what AWS services return for each failure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from botocore.auth import UNSIGNED_PAYLOAD, SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

__all__ = [
    "API_KEY_PREFIXES",
    "AuthFailure",
    "SigV4Identity",
    "verify_api_key",
    "verify_sigv4",
]

SIGNING_SERVICE = "bedrock"
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
# Long-term Bedrock API keys start with "ABSK". Short-term ones are presigned tokens
# starting with "bedrock-api-key-".
API_KEY_PREFIXES = ("ABSK", "bedrock-api-key-")

_AUTH_PARAMS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


class AuthFailure(Exception):
    """An authentication failure rendered as AWS renders it.

    ``body_key`` is the JSON key of the message: API-key failures use ``Message``.
    """

    def __init__(self, status: int, error_type: str, message: str, body_key: str = "message"):
        super().__init__(f"{error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.body_key = body_key


@dataclass(slots=True)
class SigV4Identity:
    access_key_id: str
    region: str
    service: str


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _parse_authorization(value: str) -> tuple[list[str], list[str], str]:
    if not value.startswith("AWS4-HMAC-SHA256 "):
        raise AuthFailure(
            400,
            "IncompleteSignatureException",
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm. "
            f"Authorization={value[:40]}",
        )
    params = dict(_AUTH_PARAMS.findall(value))
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if name not in params]
    if missing:
        required = " ".join(
            f"Authorization header requires '{name}' parameter." for name in missing
        )
        raise AuthFailure(400, "IncompleteSignatureException", required)
    scope = params["Credential"].split("/")
    if len(scope) != 5:
        raise AuthFailure(
            400,
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            f"keyid/date/region/service/term, got '{params['Credential']}'",
        )
    return scope, params["SignedHeaders"].split(";"), params["Signature"]


def _check_scope(scope: list[str], amz_date: str, region: str | None) -> None:
    _, scope_date, scope_region, scope_service, terminator = scope
    if terminator != "aws4_request":
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            "Credential should be scoped with a valid terminator: 'aws4_request', "
            f"not '{terminator}'.",
        )
    if scope_service != SIGNING_SERVICE:
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{SIGNING_SERVICE}'. ",
        )
    if region is not None and scope_region != region:
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{scope_region}'. ",
        )
    if scope_date != amz_date[:8]:
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
            f"HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )


def _check_clock(amz_date: str, now: dt.datetime) -> None:
    try:
        signed_at = dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise AuthFailure(
            400,
            "IncompleteSignatureException",
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See "
            "http://en.wikipedia.org/wiki/ISO_8601",
        ) from None
    earliest = now - MAX_CLOCK_SKEW
    latest = now + MAX_CLOCK_SKEW
    if signed_at < earliest:
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than {earliest.strftime(_AMZ_DATE)} "
            f"({now.strftime(_AMZ_DATE)} - 5 min.)",
        )
    if signed_at > latest:
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{latest.strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)} + 5 min.)",
        )


def _expected_signature(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    signed_headers: list[str],
    body: bytes,
    credentials: Credentials,
    scope: list[str],
    amz_date: str,
) -> str:
    signed = {}
    for name in signed_headers:
        value = _header(headers, name)
        if value is None and name != "host":
            raise AuthFailure(
                403,
                "InvalidSignatureException",
                f"The request signature we calculated does not match the signature you provided. "
                f"Signed header '{name}' is missing from the request.",
            )
        if value is not None:
            signed[name] = value
    request = AWSRequest(method=method, url=url, headers=signed, data=body)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, scope[3], scope[2])
    canonical_request = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical_request)
    return str(signer.signature(string_to_sign, request))


def verify_sigv4(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
    region: str | None = None,
    now: dt.datetime | None = None,
) -> SigV4Identity:
    """Check an ``AWS4-HMAC-SHA256`` Authorization header and return the signer's identity.

    ``url`` must carry the path exactly as the client sent it (percent-encoding
    included), because the canonical request is built from it. ``secrets`` maps access
    key ids to secret keys. ``region``, when given, is the only accepted scope region.
    Raises ``AuthFailure`` with the AWS error type and message on any mismatch.
    """
    authorization = _header(headers, "authorization")
    if authorization is None:
        raise AuthFailure(
            403, "MissingAuthenticationTokenException", "Missing Authentication Token"
        )
    scope, signed_headers, signature = _parse_authorization(authorization)
    amz_date = _header(headers, "x-amz-date")
    if amz_date is None:
        raise AuthFailure(
            400,
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
            f"Authorization={authorization[:60]}",
        )
    secret = secrets.get(scope[0])
    if secret is None:
        raise AuthFailure(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    _check_scope(scope, amz_date, region)
    _check_clock(amz_date, now or dt.datetime.now(dt.UTC))

    content_hash = _header(headers, "x-amz-content-sha256")
    if content_hash not in (None, UNSIGNED_PAYLOAD, hashlib.sha256(body).hexdigest()):
        raise AuthFailure(
            400,
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    expected = _expected_signature(
        method=method,
        url=url,
        headers=headers,
        signed_headers=signed_headers,
        body=body,
        credentials=Credentials(scope[0], secret),
        scope=scope,
        amz_date=amz_date,
    )
    if not hmac.compare_digest(expected, signature):
        raise AuthFailure(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )
    return SigV4Identity(access_key_id=scope[0], region=scope[2], service=scope[3])


def verify_api_key(authorization: str, api_keys: Collection[str]) -> str:
    """Check an ``Authorization: Bearer <Bedrock API key>`` header and return the key.

    NOTE: the error type header for API-key failures is not documented. The messages
    and the capitalised ``Message`` key are those reported by Bedrock users.
    """
    key = authorization[len("Bearer ") :].strip()
    if key in api_keys:
        return key
    if not key.startswith(API_KEY_PREFIXES):
        raise AuthFailure(
            403,
            "AccessDeniedException",
            "Invalid API Key format: Must start with pre-defined prefix",
            body_key="Message",
        )
    raise AuthFailure(
        403,
        "AccessDeniedException",
        "Authentication failed: Please make sure your API Key is valid.",
        body_key="Message",
    )

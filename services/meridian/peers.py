"""Authenticated region-to-region calls.

A forwarded request carries ``X-Meridian-Peer-Signature``: HMAC-SHA256 over method, path, body hash,
timestamp and origin region, with the peer key every region shares (Secrets Manager, replicated). The
receiver refuses a bad signature or a timestamp outside ``MAX_SKEW_SECONDS``. The caller has a timeout
and, when the target is down, retries once on the next region of the zone.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["MAX_SKEW_SECONDS", "PeerAuthError", "sign_request", "verify_request"]

MAX_SKEW_SECONDS = 30
SIGNATURE = "x-meridian-peer-signature"
TIMESTAMP = "x-meridian-peer-time"
ORIGIN = "x-meridian-peer-region"


class PeerAuthError(ValueError):
    """A region-to-region call that is not signed by a peer."""


def _mac(key: bytes, method: str, path: str, body: bytes, ts: str, origin: str) -> str:
    digest = hashlib.sha256(body).hexdigest()
    message = "\n".join((method.upper(), path, digest, ts, origin)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_request(key: bytes, method: str, path: str, body: bytes, origin: str, *, now: float | None = None) -> dict[str, str]:
    ts = str(int(now if now is not None else time.time()))
    return {SIGNATURE: _mac(key, method, path, body, ts, origin), TIMESTAMP: ts, ORIGIN: origin}


def verify_request(
    key: bytes, method: str, path: str, body: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> str:
    """Returns the calling region, or raises :class:`PeerAuthError`."""
    sig, ts, origin = headers.get(SIGNATURE), headers.get(TIMESTAMP), headers.get(ORIGIN)
    if not sig or not ts or not origin:
        raise PeerAuthError("region-to-region call without a peer signature")
    if not ts.isdigit() or abs((now if now is not None else time.time()) - int(ts)) > MAX_SKEW_SECONDS:
        raise PeerAuthError("peer signature timestamp outside the allowed skew")
    if not hmac.compare_digest(sig, _mac(key, method, path, body, ts, origin)):
        raise PeerAuthError("peer signature does not verify")
    return origin

"""Authenticated region-to-region calls.

A forwarded request carries ``X-Meridian-Peer-Signature``: HMAC-SHA256, with the peer key ring every
region shares (Secrets Manager, replicated; see :mod:`meridian.keys`), over

- the method, the path with its query, and the SHA-256 of the body;
- the signing time, the origin region, a random nonce and the key id;
- every header that changes what the receiver does (:data:`SIGNED_HEADERS`: the user's credential,
  the session token, the Idempotency-Key, the failover mark, the caller's HLC), each as ``name:value``
  (absent = empty), so none can be added, removed or changed in flight.

The receiver refuses a bad signature, a time more than :data:`MAX_AGE_SECONDS` old or more than
:data:`MAX_FUTURE_SECONDS` ahead, and a nonce it has already seen inside that window (a replay). The
nonce cache is per process; a replay that reaches another task of the region within the window is
harmless where it matters because a forwarded user creation derives the user's id from the signed
nonce (the replay collides with the first write) and orders are idempotent by key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

from meridian.keys import KeyRing

__all__ = ["MAX_AGE_SECONDS", "MAX_FUTURE_SECONDS", "NonceCache", "PeerAuthError", "SIGNED_HEADERS", "sign_request", "verify_request"]

#: How old a signed call may be when it arrives (forward timeout plus clock skew, with room).
MAX_AGE_SECONDS = 30
#: How far ahead of this host's clock a call may be dated: hosts keep time by NTP (Amazon Time Sync: well
#: under a millisecond), so a few seconds covers any honest skew.
MAX_FUTURE_SECONDS = 2
SIGNATURE = "x-meridian-peer-signature"
TIMESTAMP = "x-meridian-peer-time"
ORIGIN = "x-meridian-peer-region"
NONCE = "x-meridian-peer-nonce"
KEY_ID = "x-meridian-peer-key"
#: Headers whose value changes what the receiver does: signed, so a peer call cannot be altered.
SIGNED_HEADERS = ("authorization", "idempotency-key", "x-meridian-session", "x-meridian-failover", "x-meridian-hlc")


class PeerAuthError(ValueError):
    """A region-to-region call that is not signed by a peer, or a replay of one."""


class NonceCache:
    """Nonces seen inside the signature window; a second sight is a replay. Bounded in memory."""

    def __init__(self, *, window: float = MAX_AGE_SECONDS + MAX_FUTURE_SECONDS, limit: int = 200_000) -> None:
        self.window, self.limit = window, limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_sight(self, nonce: str, *, now: float) -> bool:
        with self._lock:
            while self._seen and (next(iter(self._seen.values())) < now - self.window or len(self._seen) >= self.limit):
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


def _mac(key: bytes, method: str, path: str, body: bytes, ts: str, origin: str, nonce: str, kid: str,
         headers: Mapping[str, str]) -> str:
    covered = [f"{name}:{headers.get(name, '')}" for name in SIGNED_HEADERS]
    message = "\n".join((method.upper(), path, hashlib.sha256(body).hexdigest(), ts, origin, nonce, kid, *covered))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign_request(ring: KeyRing, method: str, path: str, body: bytes, origin: str, *,
                 headers: Mapping[str, str] | None = None, now: float | None = None) -> dict[str, str]:
    """The signature headers for a call whose behaviour-changing headers are ``headers`` (lower-case
    names); the caller sends exactly those values with them."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    ts = f"{now if now is not None else time.time():.3f}"
    nonce = secrets.token_urlsafe(16)
    mac = _mac(ring.signing_key, method, path, body, ts, origin, nonce, ring.current, lowered)
    return {SIGNATURE: mac, TIMESTAMP: ts, ORIGIN: origin, NONCE: nonce, KEY_ID: ring.current}


def verify_request(ring: KeyRing, method: str, path: str, body: bytes, headers: Mapping[str, str], *,
                   nonces: NonceCache | None = None, now: float | None = None) -> tuple[str, str]:
    """Returns (calling region, nonce), or raises :class:`PeerAuthError`. ``headers`` must look names up
    case-insensitively (Starlette's and httpx's headers do)."""
    sig, ts, origin, nonce, kid = (headers.get(h) for h in (SIGNATURE, TIMESTAMP, ORIGIN, NONCE, KEY_ID))
    if not sig or not ts or not origin or not nonce or not kid:
        raise PeerAuthError("region-to-region call without a complete peer signature")
    now = time.time() if now is None else now
    try:
        sent = float(ts)
    except ValueError:
        raise PeerAuthError("peer signature time is not a number") from None
    if sent < now - MAX_AGE_SECONDS:
        raise PeerAuthError(f"peer signature is more than {MAX_AGE_SECONDS} s old")
    if sent > now + MAX_FUTURE_SECONDS:
        raise PeerAuthError(f"peer signature is dated more than {MAX_FUTURE_SECONDS} s ahead")
    key = ring.get(kid)
    if key is None:
        raise PeerAuthError(f"peer key {kid!r} is not accepted here (rotated out, or not rotated in yet)")
    covered = {name: headers.get(name) or "" for name in SIGNED_HEADERS}
    if not hmac.compare_digest(sig, _mac(key, method, path, body, ts, origin, nonce, kid, covered)):
        raise PeerAuthError("peer signature does not verify")
    if nonces is not None and not nonces.first_sight(nonce, now=now):
        raise PeerAuthError("peer call replayed (its nonce was already used)")
    return origin, nonce

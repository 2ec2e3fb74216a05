"""Read-your-writes session tokens: HMAC-signed, carrying where and when the session last wrote.

A token is ``base64url(json).base64url(hmac_sha256)``; the JSON names the key that signed it (``k``, a
key id of the session key ring, see :mod:`meridian.keys`), so the key rotates without ending sessions. It holds the region of the session's last write,
the highest HLC it wrote, the scope (user id or counter name) and per-table watermarks. A read presenting
it is served locally only when the local replica holds the write (see :func:`satisfied`). A forged,
malformed or expired token raises :class:`TokenError`, which the API turns into a 400/401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field

from meridian.hlc import Timestamp, Version
from meridian.keys import KeyRing

__all__ = ["SessionToken", "TokenError", "sign", "verify"]

TTL_SECONDS = 24 * 3600


class TokenError(ValueError):
    """The session token cannot be trusted."""


@dataclass(frozen=True)
class SessionToken:
    region: str
    hlc: Timestamp
    scope: str
    tables: dict[str, str] = field(default_factory=dict)  # table -> last version written there (hlc@region)
    expires_at: int = 0

    def watermark(self, table: str) -> Version | None:
        """The last version this session wrote in ``table``: its HLC and the region that executed it."""
        value = self.tables.get(table)
        return Version.decode(value) if value else None

    def after_write(self, *, region: str, hlc: Timestamp, scope: str, table: str) -> SessionToken:
        """The token after one more write; watermarks of the same scope are kept."""
        mark = Version(hlc, region)
        if scope != self.scope:
            return SessionToken(region=region, hlc=hlc, scope=scope, tables={table: mark.encode()})
        previous = self.watermark(table)
        tables = {**self.tables, table: max(mark, previous or mark).encode()}
        return SessionToken(region=region, hlc=max(hlc, self.hlc), scope=scope, tables=tables)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _ring(key: KeyRing | bytes) -> KeyRing:
    return key if isinstance(key, KeyRing) else KeyRing.single(key)


def sign(token: SessionToken, key: KeyRing | bytes, *, now: float | None = None) -> str:
    ring = _ring(key)
    expires = int((time.time() if now is None else now) + TTL_SECONDS)
    body = json.dumps(
        {"r": token.region, "h": token.hlc.encode(), "s": token.scope, "t": token.tables, "e": expires, "k": ring.current},
        separators=(",", ":"), sort_keys=True,
    ).encode()
    mac = hmac.new(ring.signing_key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def verify(text: str, key: KeyRing | bytes, *, now: float | None = None) -> SessionToken:
    ring = _ring(key)
    try:
        body_part, mac_part = text.split(".")
        body, mac = _unb64(body_part), _unb64(mac_part)
        data = json.loads(body)
        kid = data.get("k", ring.current) if isinstance(data, dict) else None
    except ValueError:
        raise TokenError("session token is malformed") from None
    secret = ring.get(kid) if isinstance(kid, str) else None
    if secret is None:
        raise TokenError("session token was signed with a key that is no longer accepted; start a new session")
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise TokenError("session token signature does not verify")
    try:
        token = SessionToken(
            region=str(data["r"]), hlc=Timestamp.decode(data["h"]), scope=str(data["s"]),
            tables={str(k): str(v) for k, v in data["t"].items()}, expires_at=int(data["e"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TokenError("session token is malformed") from None
    if token.expires_at < (time.time() if now is None else now):
        raise TokenError("session token has expired; start a new session")
    return token


def satisfied(token: SessionToken | None, *, here: str, scope: str, table: str, local: Timestamp | None) -> bool:
    """True when a read of ``table`` for ``scope`` here already sees the session's last write to it.

    Compared by version, never by "the token came from here": the session's last write *anywhere* may
    be to another table, while its write to this table happened in another region."""
    if token is None or token.scope != scope:
        return True
    mark = token.watermark(table)
    return mark is None or (local is not None and local >= mark.hlc)

"""Last-writer-wins registers on (HLC, region), and the conflict record AWS does not keep.

Every stored item carries ``version`` (its own ``hlc@region``) and ``base`` (the version it replaced, as
the writer saw it). When one version replaces another, the replaced one was *known* to the writer if it
is the new item's base; otherwise the two writes were concurrent, and the loser is recorded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meridian.hlc import Timestamp, Version

__all__ = ["RULE", "ConflictRecord", "concurrent", "conflict_between", "merge", "winner"]

RULE = "lww-hlc-region"
RETENTION_SECONDS = 90 * 24 * 3600


def _version(item: Mapping[str, Any]) -> Version:
    return Version.decode(str(item["version"]))


def winner(a: Mapping[str, Any], b: Mapping[str, Any]) -> Mapping[str, Any]:
    """The item LWW keeps: the higher (hlc, region)."""
    return a if _version(a) >= _version(b) else b


def merge(current: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> Mapping[str, Any]:
    """LWW merge: commutative, associative and idempotent over versions."""
    return incoming if current is None else winner(current, incoming)


def concurrent(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Neither write saw the other: distinct versions from different regions, neither the other's base.

    Two versions written in the same region are never concurrent: that region's replica serialized
    them, so the later one replaced the earlier even if a replica elsewhere received them out of order."""
    if a.get("version") == b.get("version"):
        return False
    if _version(a).region == _version(b).region:
        return False
    return a.get("base") != b.get("version") and b.get("base") != a.get("version")


@dataclass(frozen=True)
class ConflictRecord:
    table: str
    item_key: str
    winner: Mapping[str, Any]
    loser: Mapping[str, Any]
    detected_in: str
    detected_at_ms: int
    rule: str = RULE

    @property
    def conflict_id(self) -> str:
        """Deterministic: the same pair of versions is one conflict, however often it is seen."""
        pair = "|".join(sorted((str(self.winner["version"]), str(self.loser["version"]))))
        return hashlib.sha256(f"{self.table}|{self.item_key}|{pair}".encode()).hexdigest()[:32]

    def to_item(self) -> dict[str, Any]:
        return {
            "item_key": f"{self.table}#{self.item_key}",
            "conflict_id": self.conflict_id,
            "table": self.table,
            "rule": self.rule,
            "winner_version": str(self.winner["version"]),
            "loser_version": str(self.loser["version"]),
            "winner": dict(self.winner),
            "loser": dict(self.loser),
            "regions": sorted({_version(self.winner).region, _version(self.loser).region}),
            # Both regions detect the same conflict; as an LWW item of its own, the record converges.
            "version": Version(Timestamp(self.detected_at_ms), self.detected_in).encode(),
            "detected_in": self.detected_in,
            "detected_at": self.detected_at_ms,
            "expires_at": int(time.time()) + RETENTION_SECONDS,
        }


def conflict_between(
    table: str, item_key: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], *, region: str
) -> ConflictRecord | None:
    """A conflict record when ``new`` and ``old`` were concurrent writes, else None."""
    if old is None or not old.get("version") or not new.get("version") or not concurrent(old, new):
        return None
    keep = winner(old, new)
    lose = new if keep is old else old
    return ConflictRecord(table, item_key, keep, lose, region, int(time.time() * 1000))


def observed_overwrite(
    table: str, item_key: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], *, region: str,
    rule: str = "dynamodb-global-tables-lww",
) -> ConflictRecord | None:
    """A conflict seen *after* the store resolved it (a stream MODIFY): the new image is what was kept,
    whatever the HLC order says, so it is the winner. None when the writer had seen the old version."""
    if old is None or not old.get("version") or not new.get("version") or not concurrent(old, new):
        return None
    return ConflictRecord(table, item_key, new, old, region, int(time.time() * 1000), rule=rule)

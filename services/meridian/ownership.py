"""Who owns each strong key (the ``owner`` mechanism), and the fenced handover that moves ownership.

Outside an MRSC set, each strong key has one **owner region** that executes every write and strong read of
it (meridian.strong). Which region that is follows from the zone's **ownership map**: rendezvous hashing
over the zone's regions minus the map's ``excluded`` ones. Each region's map is one item of the ``stock``
global table, key ``__meridian_ownership__#<region>``, so every replica holds every region's map, and a
region's tasks check their own in their own replica:

- ``epoch``: raised by every handover;
- ``excluded``: regions that own nothing (evacuated ones);
- ``state``: ``active``, or ``fencing`` while a handover moves keys away from this replica's region.

**The fence lives in the owner's own replica.** Every strong write is one ``TransactWriteItems`` whose
first action is a ``ConditionCheck`` of the map in the writing region's replica: ``epoch = E AND state =
active``, where E is the epoch the writer believes. Strong reads are one ``TransactGetItems`` of the map
and the item, checked the same way. A handover first writes the next epoch, in state ``fencing``, into the
replica of every region that loses keys; from that instant no task of those regions can commit a strong
write or serve a strong read, however stale its cached map, and however many tasks it runs: DynamoDB
evaluates the condition and the write atomically in that replica. No lease and no clock is involved.

**Then a replication barrier.** Global tables resolve concurrent writes by their own timestamp, not by an
epoch, so the new owner must not write a key before it has the old owner's last write of it, or that late
write could win over the new one (or the new owner would sell units the old one already sold). After the
fence the losers' replicas are final for the keys they lose: the handover scans each loser's replica for
the items of the keys it owned and loses, and waits until each key's new owner has it at that version.

**Then publish.** The map (next epoch, ``active``) is written into every reachable replica; tasks read
their own replica's map at most :data:`MAP_TTL_SECONDS` late, and refresh at once when the fence refuses
them. Each strong item also carries the ``epoch`` it was last written under, and every write is
conditional on it being no newer than the writer's (defence in depth: no write can come from an epoch
older than the item's).

**What is refused, and when.** A loser whose replica cannot be reached cannot be fenced: the handover
stops before anything moves, and the keys stay where they are (refused while their owner is down). A
handover without the fence, or without the barrier, would trade "never oversold" for availability:
acknowledged writes of the lost owner that had not replicated would be sold again. That trade is not
offered. Between fence and publish (seconds: the barrier waits for replication) the losers' keys are
refused with 503.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from meridian.hlc import HLC, Version
from meridian.topology import Topology

__all__ = ["MAP_PREFIX", "MAP_TTL_SECONDS", "map_key", "HandoverError", "HandoverReport", "OwnershipMap", "home_owner", "owner_region",
           "read_map", "handover"]

#: The maps' keys in the ``stock`` table: one per region, ``__meridian_ownership__#<region>``, which only that
#: region's tasks check (the API refuses skus starting with ``__meridian``). Per region, so that the fence of
#: one region, replicated everywhere as every item is, fences no other.
MAP_PREFIX = "__meridian_ownership__#"


def map_key(region: str) -> dict[str, Any]:
    """The key of ``region``'s map item."""
    return {"sku": {"S": f"{MAP_PREFIX}{region}"}}
#: How stale a task's copy of the map may be before it reads it again from its own replica.
MAP_TTL_SECONDS = 2.0
ACTIVE, FENCING = "active", "fencing"
#: The strong tables: (hash key, the attribute whose value the item's owner is computed from).
OWNED_BY = {"stock": ("sku", "sku"), "reservations": ("reservation_id", "sku"), "claims": ("claim", "claim")}


def owner_region(key: str, regions: Iterable[str]) -> str:
    """Rendezvous (highest-random-weight) hashing: every region computes the same owner, and removing a
    region moves only the keys it held."""
    return max(regions, key=lambda r: hashlib.sha256(f"{r}\x00{key}".encode()).digest())


def home_owner(key: str, regions: Iterable[str]) -> str:
    """The owner at epoch 0 (no region excluded): stable whatever ownership later does, so ids derived
    from it (reservation ids) are the same before and after a handover."""
    return owner_region(key, regions)


class HandoverError(RuntimeError):
    """The handover cannot go on safely; what was done is reported, and nothing unsafe was."""


@dataclass(frozen=True)
class OwnershipMap:
    epoch: int = 0
    excluded: tuple[str, ...] = ()
    state: str = ACTIVE
    version: str = ""
    #: the excluded regions before this epoch's handover (what an unfinished one resumes from)
    previous: tuple[str, ...] = ()

    def owners(self, regions: Collection[str]) -> tuple[str, ...]:
        return tuple(r for r in regions if r not in self.excluded)

    def owner(self, key: str, regions: Collection[str]) -> str:
        return owner_region(key, self.owners(regions))

    def condition(self) -> tuple[str, dict[str, Any]]:
        """The ConditionCheck that fences a write made under this map (epoch 0: no map item yet)."""
        if self.epoch == 0:
            return "attribute_not_exists(epoch)", {}
        return "epoch = :map_epoch AND #map_state = :map_active", {
            ":map_epoch": {"N": str(self.epoch)}, ":map_active": {"S": ACTIVE}}

    def to_item(self, region: str, origin: str) -> dict[str, Any]:
        """``region``'s map item, the same in every replica it is written to (``origin``: the region whose
        replica the local replication emulation copies it from, as it copies every item from its writer)."""
        item: dict[str, Any] = {**map_key(region), "epoch": {"N": str(self.epoch)}, "state": {"S": self.state},
                                "excluded": {"L": [{"S": r} for r in self.excluded]}, "version": {"S": self.version},
                                "previous": {"L": [{"S": r} for r in self.previous]}, "origin_region": {"S": origin}}
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any] | None) -> OwnershipMap:
        if not item:
            return cls()
        return cls(epoch=int(item["epoch"]["N"]), excluded=tuple(v["S"] for v in item.get("excluded", {}).get("L", [])),
                   state=item.get("state", {}).get("S", ACTIVE), version=item.get("version", {}).get("S", ""),
                   previous=tuple(v["S"] for v in item.get("previous", {}).get("L", [])))

    def describe(self) -> str:
        out = ", ".join(self.excluded) or "none"
        return f"epoch {self.epoch} ({self.state}), excluded: {out}"


def read_map(client: Any, table: str, region: str) -> OwnershipMap:
    """``region``'s map in its own replica (strongly consistent there): what its tasks are fenced by."""
    item = client.get_item(TableName=table, Key=map_key(region), ConsistentRead=True).get("Item")
    return OwnershipMap.from_item(item)


@dataclass
class HandoverReport:
    before: OwnershipMap
    after: OwnershipMap
    moved_from: tuple[str, ...] = ()
    fenced: tuple[str, ...] = ()
    published: tuple[str, ...] = ()
    unpublished: tuple[str, ...] = ()
    items_checked: int = 0
    barrier_seconds: float = 0.0
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.after.epoch, "excluded": list(self.after.excluded), "moved_from": list(self.moved_from),
                "fenced": list(self.fenced), "published": list(self.published), "unpublished": list(self.unpublished),
                "items_checked": self.items_checked, "barrier_seconds": round(self.barrier_seconds, 3), "steps": self.steps}


def _newer_or_equal(have: str | None, want: str) -> bool:
    if not have:
        return False
    try:
        return Version.decode(have) >= Version.decode(want)
    except ValueError:
        return have == want


def handover(topology: Topology, client: Callable[[str], Any], *, exclude: Collection[str], timeout: float = 60.0,
             clock: HLC | None = None, log: Callable[[str], None] | None = None) -> HandoverReport:
    """Moves the strong keys so that the regions in ``exclude`` own none (and the others own theirs again):
    fence every region that loses keys, wait for their writes to reach the keys' new owners, publish.

    ``client(region)`` is a DynamoDB client of that region (on AWS: its regional endpoint). Raises
    :class:`HandoverError` when a loser cannot be fenced (nothing moved) or the barrier times out (the
    losers stay fenced, their keys refused, until a new run completes it)."""
    zone = topology.global_zone
    regions = zone.regions
    table = topology.table_name("stock", zone.name)
    names = {logical: topology.table_name(logical, zone.name) for logical in OWNED_BY}
    say = log or (lambda _m: None)
    unknown = sorted(set(exclude) - set(regions))
    if unknown:
        raise HandoverError(f"not regions of the stack: {', '.join(unknown)} (regions: {', '.join(regions)})")
    target_excluded = tuple(r for r in regions if r in set(exclude))
    if len(target_excluded) == len(regions):
        raise HandoverError("at least one region must own the strong keys; exclude fewer regions")

    maps: dict[str, OwnershipMap] = {}
    for region in regions:
        try:
            maps[region] = read_map(client(region), table, region)
        except (BotoCoreError, ClientError) as exc:
            say(f"{region}: map unreadable ({type(exc).__name__})")
    if not maps:
        raise HandoverError("no region's replica answered; nothing moved")
    current = max(maps.values(), key=lambda m: (m.epoch, m.state == FENCING))
    if current.state == FENCING:
        # A handover that stopped after its fence: finish it (same epoch, same target) or refuse.
        if current.excluded != target_excluded:
            raise HandoverError(f"a handover to exclude {', '.join(current.excluded) or 'none'} (epoch {current.epoch}) is "
                                "unfinished; run it again with those regions first")
        before = OwnershipMap(epoch=current.epoch - 1, excluded=current.previous)
        nxt = current
    else:
        before = current
        if before.excluded == target_excluded:
            report = HandoverReport(before=before, after=before)
            report.steps.append(f"nothing to move: {before.describe()}")
            return report
        nxt = OwnershipMap(epoch=before.epoch + 1, excluded=target_excluded, state=FENCING, version=_stamp(clock),
                           previous=before.excluded)
    old_owners, new_owners = before.owners(regions), nxt.owners(regions)
    # A region loses keys if it owned some and either is now excluded or a region it shared with comes back.
    losers = tuple(r for r in old_owners if r not in new_owners or set(new_owners) - set(old_owners))
    report = HandoverReport(before=before, after=nxt, moved_from=losers)

    # 1. Fence the losers, in their own replicas.
    for region in losers:
        if region not in maps:
            raise HandoverError(f"{region}'s replica cannot be reached, so it cannot be fenced: nothing moved; its keys stay "
                                "with it (refused while it is down) until it answers")
        try:
            client(region).put_item(TableName=table, Item=nxt.to_item(region, region),
                                    ConditionExpression="attribute_not_exists(epoch) OR epoch < :e OR (epoch = :e AND #s = :f)",
                                    ExpressionAttributeNames={"#s": "state"},
                                    ExpressionAttributeValues={":e": {"N": str(nxt.epoch)}, ":f": {"S": FENCING}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise HandoverError(f"{region}'s map moved past epoch {nxt.epoch} meanwhile (another handover); read it and "
                                    "run again") from None
            raise HandoverError(f"fencing {region} failed: {exc}") from None
        except BotoCoreError as exc:
            raise HandoverError(f"{region}'s replica cannot be reached ({type(exc).__name__}), so it cannot be fenced") from None
        report.fenced += (region,)
        say(f"fenced {region} at epoch {nxt.epoch}")
    report.steps.append(f"fenced {', '.join(report.fenced) or 'none'} at epoch {nxt.epoch}")

    # 2. Barrier: every item a loser wrote is at its new owner at that version.
    started = time.monotonic()
    pending: list[tuple[str, str, dict[str, Any], str]] = []  # (new owner, table, key, version)
    for region in losers:
        for logical, (hash_key, attr) in OWNED_BY.items():
            for item in _scan(client(region), names[logical]):
                key_value = item.get(attr, {}).get("S")
                if key_value is None or key_value.startswith(MAP_PREFIX) or "version" not in item:
                    continue
                owner = nxt.owner(key_value, regions)
                if owner == region or before.owner(key_value, regions) != region:
                    continue  # stays here, or was never this loser's to hand on
                pending.append((owner, names[logical], {hash_key: item[hash_key]}, item["version"]["S"]))
    report.items_checked = len(pending)
    while pending:
        still = []
        for owner, name, key, version in pending:
            got = client(owner).get_item(TableName=name, Key=key, ConsistentRead=True).get("Item") or {}
            if not _newer_or_equal(got.get("version", {}).get("S"), version):
                still.append((owner, name, key, version))
        pending = still
        if pending:
            if time.monotonic() - started > timeout:
                report.barrier_seconds = time.monotonic() - started
                raise HandoverError(f"{len(pending)} item(s) written by {', '.join(losers)} have not reached their new owner "
                                    f"after {timeout:.0f} s; the losers stay fenced (their keys refused); run again to finish")
            time.sleep(0.2)
    report.barrier_seconds = time.monotonic() - started
    report.steps.append(f"barrier: {report.items_checked} item(s) at their new owners in {report.barrier_seconds:.2f} s")

    # 3. Publish: active, everywhere reachable (the rest gets it by replication, newer than the fence).
    active = report.after = OwnershipMap(nxt.epoch, nxt.excluded, ACTIVE, _stamp(clock), nxt.previous)
    origin = next(r for r in regions if r in maps)
    for region in regions:  # every region's map into every replica: one that cannot be reached gets its own by replication
        try:
            db = client(region)
            for subject in regions:
                try:
                    db.put_item(TableName=table, Item=active.to_item(subject, origin),
                                ConditionExpression="attribute_not_exists(epoch) OR epoch < :e OR (epoch = :e AND #s = :f)",
                                ExpressionAttributeNames={"#s": "state"},
                                ExpressionAttributeValues={":e": {"N": str(active.epoch)}, ":f": {"S": FENCING}})
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                        raise  # else already active at this epoch (a rerun)
            report.published += (region,)
        except (BotoCoreError, ClientError):
            report.unpublished += (region,)
    report.steps.append(f"published epoch {active.epoch} in {', '.join(report.published)}"
                        + (f"; {', '.join(report.unpublished)} will get it by replication" if report.unpublished else ""))
    return report


_clock = HLC()


def _stamp(clock: HLC | None) -> str:
    """The map's version: the local replication emulation orders by it (LWW); on AWS, DynamoDB's own
    timestamps order the writes the same way, the fence before the publish."""
    return Version((clock or _clock).now(), "handover").encode()


def _scan(client: Any, table: str) -> Iterable[dict[str, Any]]:
    """Every item of a loser's replica. Not only those it wrote: a key it received in an earlier handover and
    never wrote since holds the previous owner's last write, which the new owner must have too."""
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

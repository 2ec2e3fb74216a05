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

**One at a time.** A handover claims itself first (a conditional write in the home region's replica),
and its fence and publish are conditional on that claim's id: two handovers can never publish two maps of
one epoch (a rerun with the same regions takes over a claim left by a crash).

**What is refused, and when.** A loser whose replica cannot be reached cannot be fenced, and a gainer
whose replica cannot be reached cannot receive the barrier: the handover stops before anything moves, and the keys stay where they are (refused while their owner is down). A
handover without the fence, or without the barrier, would trade "never oversold" for availability:
acknowledged writes of the lost owner that had not replicated would be sold again. That trade is not
offered. Between fence and publish (seconds: the barrier waits for replication) the losers' keys are
refused with 503.
"""

from __future__ import annotations

import contextlib
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

#: Keys of the stock table that are not skus (maps, the handovers' claim): the API refuses skus with it.
RESERVED_PREFIX = "__meridian"
#: The maps' keys in the ``stock`` table: one per region, ``__meridian_ownership__#<region>``, which only that
#: region's tasks check. Per region, so that the fence of one region, replicated everywhere as every item
#: is, fences no other.
MAP_PREFIX = f"{RESERVED_PREFIX}_ownership__#"
#: The handovers' claim, in the home region's replica only: one handover at a time (see :func:`handover`).
CLAIM_KEY = {"sku": {"S": f"{RESERVED_PREFIX}_handover__"}}
#: How stale a task's copy of the map may be before it reads it again from its own replica.
MAP_TTL_SECONDS = 2.0
ACTIVE, FENCING = "active", "fencing"
#: The strong tables: (hash key, the attribute whose value the item's owner is computed from).
OWNED_BY = {"stock": ("sku", "sku"), "reservations": ("reservation_id", "sku"), "claims": ("claim", "claim")}


def map_key(region: str) -> dict[str, Any]:
    """The key of ``region``'s map item."""
    return {"sku": {"S": f"{MAP_PREFIX}{region}"}}


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
    #: the id of the handover that wrote it (its claim, see :func:`handover`)
    handover: str = ""

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
                                "previous": {"L": [{"S": r} for r in self.previous]}, "origin_region": {"S": origin},
                                "handover": {"S": self.handover}}
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any] | None) -> OwnershipMap:
        if not item:
            return cls()
        return cls(epoch=int(item["epoch"]["N"]), excluded=tuple(v["S"] for v in item.get("excluded", {}).get("L", [])),
                   state=item.get("state", {}).get("S", ACTIVE), version=item.get("version", {}).get("S", ""),
                   previous=tuple(v["S"] for v in item.get("previous", {}).get("L", [])),
                   handover=item.get("handover", {}).get("S", ""))

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
        stamp = _stamp(clock)
        nxt = OwnershipMap(epoch=before.epoch + 1, excluded=target_excluded, state=FENCING, version=stamp,
                           previous=before.excluded, handover=stamp)
    old_owners, new_owners = before.owners(regions), nxt.owners(regions)
    # A region loses keys if it owned some and either is now excluded or a region it shared with comes back.
    losers = tuple(r for r in old_owners if r not in new_owners or set(new_owners) - set(old_owners))
    gainers = tuple(r for r in new_owners if r not in old_owners or r not in losers)
    report = HandoverReport(before=before, after=nxt, moved_from=losers)
    for region in (*losers, *gainers):
        if region not in maps:
            role = "fenced" if region in losers else "sent its new keys' last writes"
            raise HandoverError(f"{region}'s replica cannot be reached, so it cannot be {role}: nothing moved; the keys stay "
                                "where they are (refused while their owner is down) until it answers")
    nxt = _claim(topology, client, nxt, say)
    guard = {"ConditionExpression": "attribute_not_exists(epoch) OR epoch < :e OR (epoch = :e AND handover = :id)",
             "ExpressionAttributeValues": {":e": {"N": str(nxt.epoch)}, ":id": {"S": nxt.handover}}}

    # 1. Fence the losers, in their own replicas.
    for region in losers:
        try:
            client(region).put_item(TableName=table, Item=nxt.to_item(region, region), **guard)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise HandoverError(f"{region}'s map was moved by another handover meanwhile; run `meridian ownership show` "
                                    "and run again") from None
            raise HandoverError(f"fencing {region} failed: {exc}") from None
        except BotoCoreError as exc:
            raise HandoverError(f"{region}'s replica cannot be reached ({type(exc).__name__}), so it cannot be fenced; its keys "
                                "are refused until a rerun completes the handover") from None
        report.fenced += (region,)
        say(f"fenced {region} at epoch {nxt.epoch}")
    report.steps.append(f"fenced {', '.join(report.fenced) or 'none'} at epoch {nxt.epoch}")

    # 2. Barrier: every item of a key a loser owned and loses is at its new owner at that version.
    started = time.monotonic()
    try:
        pending = _handed_on(client, names, losers, before, nxt, regions)
        report.items_checked = len(pending)
        while pending:
            pending = [(owner, name, key, version) for owner, name, key, version in pending
                       if not _newer_or_equal((client(owner).get_item(TableName=name, Key=key, ConsistentRead=True).get("Item") or {})
                                              .get("version", {}).get("S"), version)]
            if pending:
                if time.monotonic() - started > timeout:
                    report.barrier_seconds = time.monotonic() - started
                    raise HandoverError(f"{len(pending)} item(s) of {', '.join(losers)} have not reached their new owner "
                                        f"after {timeout:.0f} s; the losers stay fenced (their keys refused); run again to finish")
                time.sleep(0.2)
    except (BotoCoreError, ClientError) as exc:
        raise HandoverError(f"the barrier could not read a replica ({type(exc).__name__}); the losers stay fenced (their "
                            "keys refused); run again to finish once it answers") from None
    report.barrier_seconds = time.monotonic() - started
    report.steps.append(f"barrier: {report.items_checked} item(s) at their new owners in {report.barrier_seconds:.2f} s")

    # 3. Publish: active, everywhere reachable (the rest gets it by replication, newer than the fence).
    active = report.after = OwnershipMap(nxt.epoch, nxt.excluded, ACTIVE, _stamp(clock), nxt.previous, nxt.handover)
    origin = next(r for r in regions if r in maps)
    for region in regions:  # every region's map into every replica: one that cannot be reached gets its own by replication
        try:
            db = client(region)
            for subject in regions:
                db.put_item(TableName=table, Item=active.to_item(subject, origin), **guard)
            report.published += (region,)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise HandoverError(f"{region}'s map was moved by another handover meanwhile; run `meridian ownership show`") from None
            report.unpublished += (region,)
        except BotoCoreError:
            report.unpublished += (region,)
    _release(topology, client, nxt)
    report.steps.append(f"published epoch {active.epoch} in {', '.join(report.published)}"
                        + (f"; {', '.join(report.unpublished)} will get it by replication" if report.unpublished else ""))
    return report


_clock = HLC()


def _handed_on(client: Callable[[str], Any], names: dict[str, str], losers: tuple[str, ...], before: OwnershipMap,
               nxt: OwnershipMap, regions: tuple[str, ...]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(new owner, table, key, version) of every item in a loser's replica whose key it owned and loses."""
    pending = []
    for region in losers:
        for logical, (hash_key, attr) in OWNED_BY.items():
            for item in _scan(client(region), names[logical]):
                key_value = item.get(attr, {}).get("S")
                if key_value is None or key_value.startswith(RESERVED_PREFIX) or "version" not in item:
                    continue
                owner = nxt.owner(key_value, regions)
                if owner == region or before.owner(key_value, regions) != region:
                    continue  # stays here, or was never this loser's to hand on
                pending.append((owner, names[logical], {hash_key: item[hash_key]}, item["version"]["S"]))
    return pending


def _claim(topology: Topology, client: Callable[[str], Any], nxt: OwnershipMap, say: Callable[[str], None]) -> OwnershipMap:
    """One handover at a time: a conditional write of the claim in the home region's replica (atomic there).
    A claim left running to the same regions is taken over (a rerun after a crash); another is refused."""
    home, table = topology.home_region(topology.global_zone), topology.table_name("stock", topology.global_zone.name)
    item = {**CLAIM_KEY, "epoch": {"N": str(nxt.epoch)}, "handover": {"S": nxt.handover}, "state": {"S": "running"},
            "excluded": {"L": [{"S": r} for r in nxt.excluded]}, "at": {"N": str(int(time.time() * 1000))},
            # replicated like any item (only the home replica's copy is ever checked)
            "version": {"S": _stamp(None)}, "origin_region": {"S": home}}
    try:
        db = client(home)
        try:
            db.put_item(TableName=table, Item=item,
                        ConditionExpression="attribute_not_exists(epoch) OR #s = :done OR (epoch = :e AND handover = :id)",
                        ExpressionAttributeNames={"#s": "state"},
                        ExpressionAttributeValues={":done": {"S": "done"}, ":e": {"N": str(nxt.epoch)}, ":id": {"S": nxt.handover}})
            return nxt
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
        held = db.get_item(TableName=table, Key=CLAIM_KEY, ConsistentRead=True).get("Item") or {}
    except (BotoCoreError, ClientError) as exc:
        raise HandoverError(f"handovers are claimed in {home}'s replica (one at a time), which does not answer "
                            f"({type(exc).__name__}); nothing moved") from None
    excluded = tuple(v["S"] for v in held.get("excluded", {}).get("L", []))
    if int(held.get("epoch", {}).get("N", "0")) == nxt.epoch and excluded == nxt.excluded:
        say(f"taking over the unfinished handover {held['handover']['S']} (same regions)")
        return OwnershipMap(nxt.epoch, nxt.excluded, nxt.state, held["handover"]["S"], nxt.previous, held["handover"]["S"])
    raise HandoverError(f"another handover (epoch {held.get('epoch', {}).get('N', '?')}, excluding {', '.join(excluded) or 'none'}) "
                        "is running; let it finish, or rerun it with the same regions")


def _release(topology: Topology, client: Callable[[str], Any], nxt: OwnershipMap) -> None:
    home, table = topology.home_region(topology.global_zone), topology.table_name("stock", topology.global_zone.name)
    with contextlib.suppress(BotoCoreError, ClientError):  # a claim left running: the next handover to the same regions takes it
        client(home).update_item(TableName=table, Key=CLAIM_KEY, UpdateExpression="SET #s = :done, version = :v",
                                 ConditionExpression="handover = :id", ExpressionAttributeNames={"#s": "state"},
                                 ExpressionAttributeValues={":done": {"S": "done"}, ":id": {"S": nxt.handover}, ":v": {"S": _stamp(None)}})


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

"""Strong consistency for the keys that need it: stock that is never oversold, one account per email.

Everything else in Meridian is available under partition and converges by last-writer-wins. These
keys choose the other side of CAP: a write is either linearizable or refused (503
``consistency_unavailable``), never accepted twice on two sides of a partition. Two mechanisms, chosen
per zone by the topology (:meth:`meridian.topology.Topology.mechanism`):

- ``mrsc``: the zone's regions form a DynamoDB multi-Region strong consistency set (3 replicas, or 2
  and a witness, inside one MRSC region set). Every region executes its own writes: conditional writes
  are linearizable in every replica, reads are strongly consistent, a write that meets a concurrent
  one elsewhere gets ``ReplicatedWriteConflictException`` and is retried here. A region cut off from
  the majority gets errors, which become 503s.
- ``owner``: anywhere else. Each key has one **owner region** inside the zone, the same in every region
  (rendezvous hashing: the region with the highest hash of (region, key)); every write and every read
  of the key executes there, with conditional writes on the owner's replica, and the other regions
  forward to it. An owner that cannot be reached makes its keys unavailable (503), never writable
  elsewhere: two owners would sell the same unit twice. Replication to the other replicas is the
  usual asynchronous one, which is the RPO of a lost owner region. Ownership moves only through the
  fenced handover of :mod:`meridian.ownership`: under this mechanism every write below is ONE
  ``TransactWriteItems`` behind a ``ConditionCheck`` of the region's ownership map in its own replica,
  and every strong read one ``TransactGetItems`` of map and item.

The write shapes are the same for both, and take one storage call where one is enough:

- **stock** (``stock`` table, key ``sku``): ``available``, ``reserved`` and ``active`` (the ids of the
  reservations holding units). A reservation is ONE conditional ``UpdateItem``: ``available >= q`` and
  the reservation id not yet in ``active``, then ``available -= q, reserved += q, active += {id}``.
  The id is derived from (user, Idempotency-Key): a retry finds its id in ``active`` and answers the
  same reservation; it can never take units twice. Releasing is the reverse, conditional on the id
  being in ``active``. A record of each reservation (``reservations`` table) is written after it, for
  listing and release.
- **email claims** (``claims`` table, key: an HMAC of the normalized email with the stack's claim key,
  so no address is stored outside its zone): a conditional ``PutItem`` that succeeds only if nobody,
  or the same user, holds the claim.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from meridian.ids import derived_id
from meridian.ownership import FENCING, MAP_TTL_SECONDS, OwnershipMap, home_owner, map_key, owner_region
from meridian.store import IdempotencyMismatch, Store, StoreError, from_item, to_item

__all__ = ["STRONG_TABLES", "ConsistencyUnavailable", "EmailTaken", "NotOwner", "OutOfStock", "Reservation", "StrongStore",
           "claim_key", "home_owner", "owner_region", "reservation_id_for"]

#: The tables the strong keys live in; every call to them is made here (the local run's MRSC emulation,
#: meridian_local.mrsc, relies on it: nothing else writes them).
STRONG_TABLES = ("stock", "reservations", "claims")

#: How many times a write that met a concurrent one in another MRSC replica is retried here.
CONFLICT_RETRIES = 4

#: DynamoDB error codes that mean the guarantee cannot be kept here now: a write that kept meeting concurrent
#: ones (MRSC), or a replica that cannot reach a majority of its MRSC set (writes and strong reads refused).
UNAVAILABLE_CODES = ("ReplicatedWriteConflict", "ServiceUnavailable")


class OutOfStock(ValueError):
    """Fewer units available than asked for (409)."""


class EmailTaken(ValueError):
    """Another account holds this email (409)."""


class ConsistencyUnavailable(RuntimeError):
    """The guarantee cannot be kept right now (503): refused, never weakened."""


class NotOwner(ConsistencyUnavailable):
    """This region does not own the key (any more): a handover moved it, or is moving it (503, retry)."""

    def __init__(self, message: str, owner: str | None = None) -> None:
        super().__init__(message)
        self.owner = owner


class _ConditionFailed(Exception):
    """Action ``index`` of a write had its condition fail; ``item`` is the item as it was (ALL_OLD)."""

    def __init__(self, index: int, item: dict[str, Any] | None) -> None:
        super().__init__(index)
        self.index, self.item = index, item


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    sku: str
    quantity: int
    user_id: str
    status: str = "active"

    def public(self) -> dict[str, Any]:
        return {"reservation_id": self.reservation_id, "sku": self.sku, "quantity": self.quantity, "status": self.status}


def normalize_email(email: str) -> str:
    """What makes two addresses one account: Unicode NFKC, trimmed, case-folded."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


def claim_key(email: str, key: bytes) -> str:
    """The claims table's key for an email: an HMAC, so the table holds no address (residency: the
    address itself never leaves its zone) and cannot be reversed by a dictionary without the key."""
    return hmac.new(key, normalize_email(email).encode(), hashlib.sha256).hexdigest()


def reservation_id_for(user_id: str, idempotency_key: str, home: str) -> str:
    """The one reservation a user's Idempotency-Key can make; it ends with its sku's home owner
    (:func:`meridian.ownership.home_owner`), which no handover changes: a retry after one is the same id."""
    return derived_id("rsv", home, user_id, idempotency_key)


class StrongStore:
    """The strong keys' storage calls, made in the region that executes them (the owner, or any region
    of an MRSC set). Routing — which region that is — is the API's job; under the owner mechanism
    (``fenced``) each call also proves it here: every write is one transaction fenced by the ownership map
    in this region's replica, every read one transactional read of the map and the item
    (meridian.ownership)."""

    def __init__(self, store: Store, *, fenced: bool = True, map_ttl: float = MAP_TTL_SECONDS) -> None:
        self.store = store
        self.zone = store.topology.global_zone.name
        self.regions = store.topology.global_zone.regions
        self.fenced = fenced
        self.map_ttl = map_ttl
        self._map: OwnershipMap | None = None
        self._map_read = 0.0
        # DynamoDB makes each conditional write atomic; moto (the local run, the tests) does not under
        # concurrent requests: two UpdateItems of one item can both pass their condition. Writes of one key
        # are therefore also serialized inside the process — redundant on AWS, cheap (a striped lock).
        self._locks = [threading.Lock() for _ in range(64)]

    # -- ownership ----------------------------------------------------------------------------------------
    def ownership(self, *, fresh: bool = False) -> OwnershipMap:
        """This region's copy of the ownership map, read from its own replica at most ``map_ttl`` ago."""
        if not self.fenced:
            return OwnershipMap()
        if fresh or self._map is None or time.monotonic() - self._map_read > self.map_ttl:
            item = self._call("get_item", TableName=self._table("stock"), Key=map_key(self.store.region), ConsistentRead=True).get("Item")
            self._map, self._map_read = OwnershipMap.from_item(item), time.monotonic()
        return self._map

    def map_fresh(self) -> bool:
        return not self.fenced or (self._map is not None and time.monotonic() - self._map_read <= self.map_ttl)

    def owner(self, key: str) -> str:
        """The region that owns ``key`` now, as this region's map says."""
        return self.ownership().owner(key, self.regions)

    def _owned(self, key: str, *, fresh: bool = False) -> OwnershipMap:
        """The map under which this region owns ``key``; else NotOwner (a handover moved it or moves it)."""
        current = self.ownership(fresh=fresh)
        if not fresh and (current.state == FENCING or current.owner(key, self.regions) != self.store.region):
            current = self.ownership(fresh=True)  # a copy older than a handover that gave us the key: read it again
        if current.state == FENCING:
            raise NotOwner(f"ownership of the strong keys is being handed over from {self.store.region} "
                           f"(epoch {current.epoch}); retry in a few seconds")
        owner = current.owner(key, self.regions)
        if owner != self.store.region:
            raise NotOwner(f"{owner} owns {key!r} now (epoch {current.epoch}), not {self.store.region}; retry", owner)
        return current

    # -- calls --------------------------------------------------------------------------------------------
    def _stamp(self) -> dict[str, Any]:
        """Every write carries its version (HLC@region) and origin, as every Meridian write does: the
        replication to the other replicas (emulated locally) applies the newest by the same rule."""
        return {":v": {"S": self.store._stamp(None)[1]}, ":r": {"S": self.store.region}}

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest(), "big") % len(self._locks)]

    def _table(self, logical: str) -> str:
        assert logical in STRONG_TABLES, logical
        return self.store.table(self.zone, logical)

    def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """One storage call; an MRSC replica cut off from its set's majority refuses writes and strongly
        consistent reads alike: :class:`ConsistencyUnavailable`, never a stale answer."""
        try:
            result: dict[str, Any] = self.store._call(op, **kwargs)
            return result
        except StoreError as exc:
            if any(code in str(exc) for code in UNAVAILABLE_CODES):
                raise ConsistencyUnavailable(f"strong {op} not possible now in {self.store.region}: {exc}") from exc
            raise

    def _read(self, logical: str, key: dict[str, Any], owner_key: Callable[[dict[str, Any] | None], str | None]) -> dict[str, Any] | None:
        """A strongly consistent read of one item (plain values), or None. Fenced: one TransactGetItems of
        the map and the item, so the answer is the owner's, as of a moment it owned the key."""
        if not self.fenced:
            item = self._call("get_item", TableName=self._table(logical), Key=to_item(key), ConsistentRead=True).get("Item")
            return from_item(item) if item else None
        responses = self._call("transact_get_items", TransactItems=[
            {"Get": {"TableName": self._table("stock"), "Key": map_key(self.store.region)}},
            {"Get": {"TableName": self._table(logical), "Key": to_item(key)}}])["Responses"]
        # Judged by the map read in the same transaction, never by a copy read after it: the item is the
        # owner's only if this region owned its key when both were read.
        seen = OwnershipMap.from_item(responses[0].get("Item"))
        raw = responses[1].get("Item")
        data = from_item(raw) if raw else None
        decisive = owner_key(data)
        if seen.state == FENCING:
            raise NotOwner(f"ownership of the strong keys is being handed over from {self.store.region} (epoch {seen.epoch}); retry")
        if decisive is not None and (owner := seen.owner(decisive, self.regions)) != self.store.region:
            self.ownership(fresh=True)
            raise NotOwner(f"{owner} owns {decisive!r} now (epoch {seen.epoch}), not {self.store.region}; retry", owner)
        if decisive is None and self.store.region in seen.excluded:
            raise NotOwner(f"{self.store.region} owns no strong keys now (epoch {seen.epoch}); retry")
        return data

    def _commit(self, key: str, actions: list[dict[str, Any]]) -> None:
        """The write ``actions`` (TransactWriteItems shapes) of ``key``. Fenced: ONE transaction, behind a
        ConditionCheck of the map, each action also conditional on the item's epoch; a fence that refuses
        is re-read once (the key may still be ours under the next epoch). Else (MRSC) the actions one by
        one, each retried on a replicated write conflict. :class:`_ConditionFailed` names the action whose
        own condition failed."""
        if not self.fenced:
            for index, action in enumerate(actions):
                (kind, spec), = action.items()
                op = {"Put": "put_item", "Update": "update_item", "Delete": "delete_item"}[kind]
                try:
                    self._write(op, **spec)
                except ClientError as exc:
                    raise _ConditionFailed(index, exc.response.get("Item")) from None
            return
        for attempt in range(CONFLICT_RETRIES + 1):
            current = self._owned(key, fresh=attempt > 0)
            condition, values = current.condition()
            check: dict[str, Any] = {"TableName": self._table("stock"), "Key": map_key(self.store.region), "ConditionExpression": condition}
            if values:
                check |= {"ExpressionAttributeValues": values, "ExpressionAttributeNames": {"#map_state": "state"}}
            items = [{"ConditionCheck": check}, *(_with_epoch(action, current.epoch) for action in actions)]
            try:
                self.store.client.transact_write_items(TransactItems=items)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise StoreError(f"DynamoDB transact_write_items failed in {self.store.region}: {exc}") from exc
                reasons = exc.response.get("CancellationReasons") or []
                codes = [r.get("Code", "None") for r in reasons]
                if codes and codes[0] == "ConditionalCheckFailed":
                    continue  # fenced: the map moved; read it again
                for index, reason in enumerate(reasons[1:]):
                    if reason.get("Code") == "ConditionalCheckFailed":
                        old = reason.get("Item") or {}
                        if int(old.get("epoch", {}).get("N", "0")) > current.epoch:
                            raise NotOwner(f"{key!r} was written under epoch {old['epoch']['N']}, after this region's "
                                           f"{current.epoch}; retry") from None
                        raise _ConditionFailed(index, reason.get("Item")) from None
                if "TransactionConflict" in codes and attempt < CONFLICT_RETRIES:
                    time.sleep(0.005 * 2**attempt)
                    continue
                raise ConsistencyUnavailable(f"strong write not possible now in {self.store.region}: {', '.join(codes)}") from None
            except BotoCoreError as exc:
                raise StoreError(f"DynamoDB transact_write_items in {self.store.region} is unreachable ({type(exc).__name__}); retry") from exc
        raise NotOwner(f"{self.store.region} no longer owns {key!r}: the ownership map kept moving; retry")

    def _write(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """One write; a replicated write conflict (MRSC) is retried with a short backoff.
        ConditionalCheckFailedException is the caller's to interpret."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                return self._call(op, **kwargs)
            except ConsistencyUnavailable as exc:
                if "ReplicatedWriteConflict" in str(exc) and attempt < CONFLICT_RETRIES:
                    time.sleep(0.005 * 2**attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    # -- stock ------------------------------------------------------------------------------------------
    def set_stock(self, sku: str, available: int) -> dict[str, Any]:
        with self._lock(sku):
            self._commit(sku, [{"Update": {
                "TableName": self._table("stock"), "Key": to_item({"sku": sku}),
                "UpdateExpression": "SET available = :a, reserved = if_not_exists(reserved, :zero), version = :v, origin_region = :r",
                "ExpressionAttributeValues": {**to_item({":a": available, ":zero": 0}), **self._stamp()}}}])
            stock = self.get_stock(sku)
        assert stock is not None
        return stock

    def get_stock(self, sku: str) -> dict[str, Any] | None:
        item = self._read("stock", {"sku": sku}, lambda _item: sku)
        return self._stock_view(item) if item else None

    @staticmethod
    def _stock_view(item: dict[str, Any]) -> dict[str, Any]:
        return {"sku": item["sku"], "available": int(item.get("available", 0)), "reserved": int(item.get("reserved", 0))}

    def reserve(self, user_id: str, sku: str, quantity: int, reservation_id: str) -> tuple[Reservation, bool]:
        """(reservation, created). One conditional update of the stock item takes the units, and the record
        is written with it (fenced: in the same transaction; MRSC: right after)."""
        reservation = Reservation(reservation_id=reservation_id, sku=sku, quantity=quantity, user_id=user_id)
        record: dict[str, Any] = {"TableName": self._table("reservations"), "Item": to_item(
            {"reservation_id": reservation_id, "sku": sku, "quantity": quantity, "user_id": user_id, "status": "active",
             "created_at": int(time.time() * 1000), "origin_region": self.store.region, "version": self.store._stamp(None)[1]})}
        # Never twice for one key: a released reservation's key answers the released one. Fenced: the record's
        # put is conditional in the same transaction; MRSC (no transactions): its record is read first.
        if self.fenced:
            record |= {"ConditionExpression": "attribute_not_exists(reservation_id)"}
        elif (known := self.reservation(reservation_id)) is not None:
            if (known.sku, known.quantity, known.user_id) != (sku, quantity, user_id):
                raise IdempotencyMismatch("this Idempotency-Key was used for a different reservation; use a new key")
            return known, False
        try:
            with self._lock(sku):
                self._commit(sku, [
                    {"Update": {"TableName": self._table("stock"), "Key": to_item({"sku": sku}),
                                "UpdateExpression": "SET available = available - :q, reserved = reserved + :q, version = :v, "
                                                    "origin_region = :r ADD active :ids",
                                "ConditionExpression": "available >= :q AND NOT contains(active, :id)",
                                "ExpressionAttributeValues": {":q": {"N": str(quantity)}, ":ids": {"SS": [reservation_id]},
                                                              ":id": {"S": reservation_id}, **self._stamp()},
                                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                    {"Put": record}])
            return reservation, True
        except _ConditionFailed as failed:
            old = from_item(failed.item) if failed.item else None
            if failed.index == 0:
                old = old or self._read("stock", {"sku": sku}, lambda _item: sku)
                if old is None:
                    raise OutOfStock(f"no stock of {sku!r}") from None
                if reservation_id not in set(old.get("active") or ()):
                    raise OutOfStock(f"{sku!r}: {int(old.get('available', 0))} available, {quantity} asked") from None
            # This key's reservation already holds (or held) its units: answer it again.
            stored = self.reservation(reservation_id)
            if stored is None:
                if self.fenced:
                    raise ConsistencyUnavailable(f"reservation {reservation_id} holds units but has no record here; retry") from None
                self._write("put_item", **record)  # MRSC: the record follows the units; write it now
                return reservation, False
            if (stored.sku, stored.quantity, stored.user_id) != (sku, quantity, user_id):
                raise IdempotencyMismatch("this Idempotency-Key was used for a different reservation; use a new key") from None
            return stored, False

    def reservation(self, reservation_id: str) -> Reservation | None:
        data = self._read("reservations", {"reservation_id": reservation_id}, lambda item: str(item["sku"]) if item else None)
        if not data:
            return None
        return Reservation(reservation_id=reservation_id, sku=str(data["sku"]), quantity=int(data["quantity"]),
                           user_id=str(data["user_id"]), status=str(data.get("status", "active")))

    def sku_of(self, reservation_id: str) -> str | None:
        """The sku of a reservation as this region's replica has it (eventually consistent: for routing)."""
        item = self._call("get_item", TableName=self._table("reservations"), Key=to_item({"reservation_id": reservation_id}),
                          ProjectionExpression="sku").get("Item")
        return str(item["sku"]["S"]) if item else None

    def release(self, reservation: Reservation) -> Reservation:
        """Gives the units back: conditional on the reservation still holding them, so twice is once."""
        mark = {"Update": {"TableName": self._table("reservations"), "Key": to_item({"reservation_id": reservation.reservation_id}),
                           "UpdateExpression": "SET #s = :s, version = :v, origin_region = :r", "ExpressionAttributeNames": {"#s": "status"},
                           "ExpressionAttributeValues": {**to_item({":s": "released"}), **self._stamp()}}}
        with self._lock(reservation.sku):
            try:
                self._commit(reservation.sku, [
                    {"Update": {"TableName": self._table("stock"), "Key": to_item({"sku": reservation.sku}),
                                "UpdateExpression": "SET available = available + :q, reserved = reserved - :q, version = :v, "
                                                    "origin_region = :r DELETE active :ids",
                                "ConditionExpression": "contains(active, :id)",
                                "ExpressionAttributeValues": {":q": {"N": str(reservation.quantity)}, ":ids": {"SS": [reservation.reservation_id]},
                                                              ":id": {"S": reservation.reservation_id}, **self._stamp()}}},
                    mark])
            except _ConditionFailed:  # the units were already given back: only the record is left to mark
                self._commit(reservation.sku, [mark])
        return Reservation(**{**reservation.__dict__, "status": "released"})

    # -- email claims -------------------------------------------------------------------------------------
    def claim(self, claim: str, user_id: str) -> None:
        """Holds ``claim`` for ``user_id``: free, or already this user's. Else :class:`EmailTaken`."""
        try:
            with self._lock(claim):
                self._commit(claim, [{"Put": {
                    "TableName": self._table("claims"),
                    "Item": to_item({"claim": claim, "user_id": user_id, "claimed_at": int(time.time() * 1000),
                                     "version": self.store._stamp(None)[1], "origin_region": self.store.region}),
                    "ConditionExpression": "attribute_not_exists(claim) OR user_id = :u",
                    "ExpressionAttributeValues": {":u": {"S": user_id}}}}])
        except _ConditionFailed:
            raise EmailTaken("an account with this email exists") from None


def _with_epoch(action: dict[str, Any], epoch: int) -> dict[str, Any]:
    """``action`` also records the epoch it is written under, and is refused over an item written under a
    newer one."""
    (kind, spec), = action.items()
    spec = dict(spec)
    values = {**spec.get("ExpressionAttributeValues", {}), ":item_epoch": {"N": str(epoch)}}
    guard = "(attribute_not_exists(epoch) OR epoch <= :item_epoch)"
    spec["ConditionExpression"] = f"({spec['ConditionExpression']}) AND {guard}" if "ConditionExpression" in spec else guard
    spec["ExpressionAttributeValues"] = values
    spec.setdefault("ReturnValuesOnConditionCheckFailure", "ALL_OLD")  # to tell a newer epoch from the action's own condition
    if kind == "Put":
        spec["Item"] = {**spec["Item"], "epoch": {"N": str(epoch)}}
    elif kind == "Update":
        expression = spec["UpdateExpression"]
        spec["UpdateExpression"] = expression.replace("SET ", "SET epoch = :item_epoch, ", 1) if "SET " in expression \
            else f"SET epoch = :item_epoch {expression}"
    return {kind: spec}

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
  usual asynchronous one, which is the RPO of a lost owner region.

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

import contextlib
import hashlib
import hmac
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from meridian.ids import derived_id
from meridian.store import IdempotencyMismatch, Store, StoreError, from_item, to_item

__all__ = ["STRONG_TABLES", "ConsistencyUnavailable", "EmailTaken", "OutOfStock", "Reservation", "StrongStore", "claim_key",
           "owner_region", "reservation_id_for"]

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


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    sku: str
    quantity: int
    user_id: str
    status: str = "active"

    def public(self) -> dict[str, Any]:
        return {"reservation_id": self.reservation_id, "sku": self.sku, "quantity": self.quantity, "status": self.status}


def owner_region(key: str, regions: tuple[str, ...] | list[str]) -> str:
    """Rendezvous (highest-random-weight) hashing: every region computes the same owner, and adding or
    removing a region moves only the keys that region wins or held."""
    return max(regions, key=lambda r: hashlib.sha256(f"{r}\x00{key}".encode()).digest())


def normalize_email(email: str) -> str:
    """What makes two addresses one account: Unicode NFKC, trimmed, case-folded."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


def claim_key(email: str, key: bytes) -> str:
    """The claims table's key for an email: an HMAC, so the table holds no address (residency: the
    address itself never leaves its zone) and cannot be reversed by a dictionary without the key."""
    return hmac.new(key, normalize_email(email).encode(), hashlib.sha256).hexdigest()


def reservation_id_for(user_id: str, idempotency_key: str, owner: str) -> str:
    """The one reservation a user's Idempotency-Key can make; it ends with the owner region of its sku."""
    return derived_id("rsv", owner, user_id, idempotency_key)


class StrongStore:
    """The strong keys' storage calls, made in the region that executes them (the owner, or any region
    of an MRSC set). Routing — which region that is — is the API's job."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.zone = store.topology.global_zone.name
        # DynamoDB makes each conditional write atomic; moto (the local run, the tests) does not under
        # concurrent requests: two UpdateItems of one item can both pass their condition. Writes of one key
        # are therefore also serialized inside the process — redundant on AWS, cheap (a striped lock).
        self._locks = [threading.Lock() for _ in range(64)]

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

    def _read(self, logical: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """A strongly consistent read of one item (plain values), or None."""
        item = self._call("get_item", TableName=self._table(logical), Key=to_item(key), ConsistentRead=True).get("Item")
        return from_item(item) if item else None

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
            resp = self._write("update_item", TableName=self._table("stock"), Key=to_item({"sku": sku}),
                               UpdateExpression="SET available = :a, reserved = if_not_exists(reserved, :zero), "
                                                "version = :v, origin_region = :r",
                               ExpressionAttributeValues={**to_item({":a": available, ":zero": 0}), **self._stamp()},
                               ReturnValues="ALL_NEW")
        return self._stock_view(from_item(resp["Attributes"]))

    def get_stock(self, sku: str) -> dict[str, Any] | None:
        item = self._read("stock", {"sku": sku})
        return self._stock_view(item) if item else None

    @staticmethod
    def _stock_view(item: dict[str, Any]) -> dict[str, Any]:
        return {"sku": item["sku"], "available": int(item.get("available", 0)), "reserved": int(item.get("reserved", 0))}

    def reserve(self, user_id: str, sku: str, quantity: int, reservation_id: str) -> tuple[Reservation, bool]:
        """(reservation, created). One conditional UpdateItem takes the units; the record follows."""
        reservation = Reservation(reservation_id=reservation_id, sku=sku, quantity=quantity, user_id=user_id)
        try:
            with self._lock(sku):
                self._write("update_item", TableName=self._table("stock"), Key=to_item({"sku": sku}),
                            UpdateExpression="SET available = available - :q, reserved = reserved + :q, version = :v, "
                                             "origin_region = :r ADD active :ids",
                            ConditionExpression="available >= :q AND NOT contains(active, :id)",
                            ExpressionAttributeValues={":q": {"N": str(quantity)}, ":ids": {"SS": [reservation_id]},
                                                       ":id": {"S": reservation_id}, **self._stamp()},
                            ReturnValuesOnConditionCheckFailure="ALL_OLD")
            created = True
        except ClientError as exc:
            old = from_item(exc.response["Item"]) if exc.response.get("Item") else self._read("stock", {"sku": sku})
            if old is None:
                raise OutOfStock(f"no stock of {sku!r}") from None
            if reservation_id not in set(old.get("active") or ()):
                raise OutOfStock(f"{sku!r}: {int(old.get('available', 0))} available, {quantity} asked") from None
            created = False  # this key's reservation already holds its units: answer it again
            stored = self.reservation(reservation_id)
            if stored is not None:
                if (stored.sku, stored.quantity, stored.user_id) != (sku, quantity, user_id):
                    raise IdempotencyMismatch("this Idempotency-Key was used for a different reservation; use a new key") from None
                return stored, False
        self._write("put_item", TableName=self._table("reservations"), Item=to_item(
            {"reservation_id": reservation_id, "sku": sku, "quantity": quantity, "user_id": user_id, "status": "active",
             "created_at": int(time.time() * 1000), "origin_region": self.store.region, "version": self.store._stamp(None)[1]}))
        return reservation, created

    def reservation(self, reservation_id: str) -> Reservation | None:
        data = self._read("reservations", {"reservation_id": reservation_id})
        if not data:
            return None
        return Reservation(reservation_id=reservation_id, sku=str(data["sku"]), quantity=int(data["quantity"]),
                           user_id=str(data["user_id"]), status=str(data.get("status", "active")))

    def release(self, reservation: Reservation) -> Reservation:
        """Gives the units back: conditional on the reservation still holding them, so twice is once."""
        with contextlib.suppress(ClientError), self._lock(reservation.sku):  # condition failed: already released
            self._write("update_item", TableName=self._table("stock"), Key=to_item({"sku": reservation.sku}),
                        UpdateExpression="SET available = available + :q, reserved = reserved - :q, version = :v, "
                                         "origin_region = :r DELETE active :ids",
                        ConditionExpression="contains(active, :id)",
                        ExpressionAttributeValues={":q": {"N": str(reservation.quantity)}, ":ids": {"SS": [reservation.reservation_id]},
                                                   ":id": {"S": reservation.reservation_id}, **self._stamp()})
        self._write("update_item", TableName=self._table("reservations"), Key=to_item({"reservation_id": reservation.reservation_id}),
                    UpdateExpression="SET #s = :s, version = :v, origin_region = :r", ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={**to_item({":s": "released"}), **self._stamp()})
        return Reservation(**{**reservation.__dict__, "status": "released"})

    # -- email claims -------------------------------------------------------------------------------------
    def claim(self, claim: str, user_id: str) -> None:
        """Holds ``claim`` for ``user_id``: free, or already this user's. Else :class:`EmailTaken`."""
        try:
            with self._lock(claim):
                self._write("put_item", TableName=self._table("claims"),
                            Item=to_item({"claim": claim, "user_id": user_id, "claimed_at": int(time.time() * 1000),
                                          "version": self.store._stamp(None)[1], "origin_region": self.store.region}),
                            ConditionExpression="attribute_not_exists(claim) OR user_id = :u",
                            ExpressionAttributeValues={":u": {"S": user_id}})
        except ClientError:
            raise EmailTaken("an account with this email exists") from None

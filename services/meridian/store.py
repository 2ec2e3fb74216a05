"""The service's storage: DynamoDB through a boto3 client passed in, residency enforced by construction.

A :class:`Store` belongs to one region. It resolves a (zone, table) only if that zone includes its
region — a write for zone Z from a region outside Z raises :class:`ResidencyViolation` before any
call is made. Every item carries ``version`` (``hlc@region``) and ``base`` (the version it replaced) for
last-writer-wins and the conflict audit.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from meridian.conflicts import ConflictRecord
from meridian.hlc import HLC, Timestamp, Version
from meridian.ids import derived_id, new_id, parse_id
from meridian.topology import Topology

__all__ = ["SCHEMA", "IdempotencyMismatch", "ResidencyViolation", "Store", "StoreError", "UserExists", "UserRecord", "order_id_for", "order_request_hash"]

#: The DynamoDB API calls the service makes -> the IAM actions each needs. The task role
#: (infra.layout.SERVICE_TABLE_ACTIONS) allows exactly these. Transactions only for the strong keys under
#: the owner mechanism (meridian.strong): a transaction costs two writes per item on AWS.
CALLS: dict[str, tuple[str, ...]] = {
    "DescribeTable": ("DescribeTable",), "GetItem": ("GetItem",), "PutItem": ("PutItem",), "Query": ("Query",),
    "UpdateItem": ("UpdateItem",),
    # The strong keys under the owner mechanism (meridian.strong): IAM has no action of a transaction's own;
    # it needs the actions of what the transaction does (a ConditionCheck of the map, puts and updates).
    "TransactWriteItems": ("ConditionCheckItem", "PutItem", "UpdateItem"), "TransactGetItems": ("GetItem",),
}
#: How many of a user's orders a listing reads before sorting them by time.
MAX_ORDERS_READ = 1000

#: The layout version stamped as ``schema`` on every item this release creates (docs/releases.md): regions
#: on two releases replicate to each other, so changes are additive and readers accept any version.
#: Updates set it only where it is absent (``if_not_exists``): an older release never lowers it.
SCHEMA = 1

_ser, _de = TypeSerializer(), TypeDeserializer()
_COUNTER_NAMES = {"#v": "value", "#base": "base", "#ver": "version", "#schema": "schema"}


class StoreError(RuntimeError):
    """Storage failed (throttling, unreachable replica, timeout): a 503, never a silent loss."""


class ResidencyViolation(PermissionError):
    """A zone's data asked of a region outside the zone."""


class UserExists(ValueError):
    """A user creation whose (derived) id is taken: the same creation executed twice."""


class IdempotencyMismatch(ValueError):
    """An idempotency key reused with a different request."""


def order_id_for(user_id: str, idempotency_key: str) -> str:
    """The one order a user's Idempotency-Key can ever create: derived, and in the user's home region."""
    return derived_id("ord", parse_id(user_id).region, user_id, idempotency_key)


def order_request_hash(user_id: str, item: str, qty: int) -> str:
    """What makes two requests with one Idempotency-Key the same request."""
    return hashlib.sha256(json.dumps([user_id, item, qty]).encode()).hexdigest()


def to_item(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in data.items() if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):  # a DynamoDB set has no order: the same set reads the same everywhere
        return sorted(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    email: str
    name: str
    zone: str
    home_region: str
    version: str

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> UserRecord:
        return cls(str(item["user_id"]), str(item["email"]), str(item["name"]), str(item["zone"]),
                   str(item["home_region"]), str(item["version"]))

    @property
    def hlc(self) -> Timestamp:
        return Version.decode(self.version).hlc


class Store:
    def __init__(self, *, client: Any, topology: Topology, region: str, clock: HLC | None = None) -> None:
        self.client = client
        self.topology = topology
        self.region = region
        self.clock = clock or HLC()
        self._tables = topology.tables_in_region(region)
        self._global = topology.global_zone.name
        #: (zone, logical table) -> physical name, for the pairs resolved here once (the topology is fixed
        #: for the store's life): a request does not search the topology again. Refusals are never cached.
        self._resolved: dict[tuple[str, str], str] = {}

    # -- residency --------------------------------------------------------------------------------------
    def table(self, zone: str, table: str) -> str:
        """The physical table for ``zone`` here, or ResidencyViolation if this region is outside the zone."""
        resolved = self._resolved.get((zone, table))
        if resolved is not None:
            return resolved
        spec = self.topology.table(table)
        zone_name = self._global if spec.scope == "global" else zone
        names = self._tables.get(zone_name)
        if names is None or table not in names:
            raise ResidencyViolation(f"region {self.region} is outside residency zone {zone_name!r}; it holds no {table} for it")
        self._resolved[(zone, table)] = names[table]
        return names[table]

    def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                raise
            raise StoreError(f"DynamoDB {op} failed in {self.region}: {code or exc}") from exc
        except BotoCoreError as exc:
            # Unreachable endpoint, connect or read timeout, closed connection: storage is unavailable.
            raise StoreError(f"DynamoDB {op} in {self.region} is unreachable ({type(exc).__name__}); retry") from exc

    def _stamp(self, base: str | None) -> tuple[Timestamp, str, str | None]:
        hlc = self.clock.now()
        return hlc, Version(hlc, self.region).encode(), base

    def observe(self, version: str | None) -> None:
        """Receive rule of the HLC for a version read from a replica."""
        if version:
            self.clock.update(Version.decode(version).hlc)

    # -- directory ----------------------------------------------------------------------------------------
    def directory_get(self, user_id: str) -> dict[str, Any] | None:
        table = self.table(self._global, "directory")
        item = self._call("get_item", TableName=table, Key=to_item({"user_id": user_id})).get("Item")
        return from_item(item) if item else None

    # -- users ----------------------------------------------------------------------------------------------
    def create_user(self, *, email: str, name: str, zone: str, failover: bool = False,
                    derived_from: str | None = None, user_id: str | None = None) -> tuple[UserRecord, Timestamp]:
        """``derived_from`` (a forwarded call's signed nonce) makes the id a function of the call, so the
        same call executed twice collides (:class:`UserExists`) instead of creating two users."""
        users = self.table(zone, "users")
        directory = self.table(zone, "directory")
        user_id = user_id or self.new_user_id(derived_from)
        hlc, version, _ = self._stamp(None)
        item = {"user_id": user_id, "email": email, "name": name, "zone": zone, "home_region": self.region,
                "version": version, "base": None, "origin_region": self.region, "failover": failover,
                "updated_at": int(time.time() * 1000), "schema": SCHEMA}
        try:
            self._call("put_item", TableName=users, Item=to_item(item), ConditionExpression="attribute_not_exists(user_id)")
        except ClientError:
            raise UserExists(f"user {user_id} exists") from None
        # The directory holds pointers only: no profile field leaves the zone.
        self._call("put_item", TableName=directory, Item=to_item(
            {"user_id": user_id, "home_region": self.region, "zone": zone, "version": version, "origin_region": self.region,
             "schema": SCHEMA}))
        return UserRecord.from_item(item), hlc

    def new_user_id(self, derived_from: str | None = None) -> str:
        return derived_id("usr", self.region, derived_from) if derived_from else new_id("usr", self.region)

    def get_user(self, zone: str, user_id: str) -> dict[str, Any] | None:
        item = self._call("get_item", TableName=self.table(zone, "users"), Key=to_item({"user_id": user_id}), ConsistentRead=True).get("Item")
        if not item:
            return None
        data = from_item(item)
        self.observe(data.get("version"))
        return data

    def user_update_request(self, zone: str, user_id: str, changes: Mapping[str, Any], *, failover: bool = False) -> tuple[Timestamp, dict[str, Any]]:
        """The one UpdateItem a profile update is: ``base`` takes the stored version atomically
        (right-hand sides of SET see the item before the update), and it applies only if newer under LWW."""
        fields = {k: v for k, v in changes.items() if v is not None}
        fields.update(origin_region=self.region, failover=failover, updated_at=int(time.time() * 1000))
        names = {f"#f{i}": k for i, k in enumerate(fields)} | {"#base": "base", "#version": "version", "#id": "user_id", "#schema": "schema"}
        hlc, version, _ = self._stamp(None)
        values = {f":f{i}": _ser.serialize(v) for i, v in enumerate(fields.values())} | {":v": _ser.serialize(version),
                                                                                          ":schema": _ser.serialize(SCHEMA)}
        sets = [f"#f{i} = :f{i}" for i in range(len(fields))] + ["#base = #version", "#version = :v",
                                                                 "#schema = if_not_exists(#schema, :schema)"]
        return hlc, {
            "TableName": self.table(zone, "users"), "Key": to_item({"user_id": user_id}), "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": "attribute_exists(#id) AND #version < :v", "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values, "ReturnValues": "ALL_NEW",
        }

    def update_user(self, zone: str, user_id: str, changes: Mapping[str, Any], *, failover: bool = False) -> tuple[dict[str, Any], Timestamp]:
        for _ in range(3):
            hlc, request = self.user_update_request(zone, user_id, changes, failover=failover)
            try:
                return from_item(self._call("update_item", **request)["Attributes"]), hlc
            except ClientError:
                # Missing user, or a replicated version from a clock ahead of ours: read it (the HLC
                # receive rule moves our clock past it) and try again.
                if self.get_user(zone, user_id) is None:
                    raise KeyError(user_id) from None
        raise StoreError(f"user {user_id} is being updated concurrently; retry")

    # -- orders ------------------------------------------------------------------------------------------
    def create_order(self, zone: str, user_id: str, *, item: str, qty: int, idempotency_key: str) -> tuple[dict[str, Any], bool, Timestamp]:
        """Returns (order, created). Exactly once by construction (D11): the order's id is a function of
        (user, Idempotency-Key) carrying the user's home region, and the order is ONE conditional PutItem
        (``attribute_not_exists``), no pre-read and no transaction. A duplicate — concurrent here, a retry
        after a timeout, the same key executed in another region and replicated here — collides with the
        first execution on the same item: the failed condition returns the stored order (``ALL_OLD``),
        which is answered again if it is the same request, or refused (:class:`IdempotencyMismatch`) if the
        key was used for a different one. Two regions that both executed the key during a partition wrote
        the same item: replication keeps one of the two versions (LWW), never two orders."""
        orders = self.table(zone, "orders")
        request_hash = order_request_hash(user_id, item, qty)
        order_id = order_id_for(user_id, idempotency_key)
        hlc, version, _ = self._stamp(None)
        order = {"user_id": user_id, "order_id": order_id, "item": item, "qty": qty, "idempotency_key": idempotency_key,
                 "request_hash": request_hash, "created_region": self.region, "created_at": int(time.time() * 1000),
                 "version": version, "origin_region": self.region, "schema": SCHEMA}
        try:
            self._call("put_item", TableName=orders, Item=to_item(order), ConditionExpression="attribute_not_exists(order_id)",
                       ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise StoreError(f"DynamoDB PutItem failed in {self.region}: {exc}") from exc
            old = exc.response.get("Item")
            if not old:  # an emulator that does not return ALL_OLD: read the item that won
                old = self._call("get_item", TableName=orders, ConsistentRead=True,
                                 Key=to_item({"user_id": user_id, "order_id": order_id})).get("Item")
            if not old:
                raise StoreError("order write collided with an item that is gone; retry with the same Idempotency-Key") from None
            stored = from_item(old)
            if stored.get("request_hash") != request_hash:
                raise IdempotencyMismatch("this Idempotency-Key was used for a different order; use a new key") from None
            self.observe(str(stored["version"]))
            return stored, False, Version.decode(str(stored["version"])).hlc
        return order, True, hlc

    def list_orders(self, zone: str, user_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first by ``created_at``. Order ids are derived from the Idempotency-Key (not time-ordered),
        so the user's orders are read (up to ``MAX_ORDERS_READ``) and sorted here."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table(zone, "orders"), "KeyConditionExpression": "user_id = :u",
                                  "ExpressionAttributeValues": {":u": _ser.serialize(user_id)}}
        while len(items) < MAX_ORDERS_READ:
            resp = self._call("query", **kwargs)
            items += [from_item(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        # The version (hlc@region) breaks ties of the same millisecond in the order they were written.
        items.sort(key=lambda o: (int(o.get("created_at", 0)), str(o.get("version", ""))), reverse=True)
        return items[:limit]

    # -- counters (per-region shards: a G-counter that global tables cannot break) ------------------------
    def increment(self, name: str, by: int) -> tuple[Timestamp, int]:
        """ADD to this region's shard: ONE UpdateItem, which answers the shard's new value
        (``ReturnValues=UPDATED_NEW``); the total over the shards is a read (:meth:`counter`), not part of
        every increment. Returns (version's HLC, this shard's value after the increment). The version only
        moves forward (condition), so replicas apply the shard's updates in order; ``base`` is the version
        replaced, so each is a successor, not a conflict."""
        table = self.table(self._global, "counters")
        key = {"name": {"S": name}, "shard": {"S": self.region}}
        for _ in range(5):
            hlc, version, _ = self._stamp(None)
            try:
                resp = self._call("update_item", TableName=table, Key=key,
                                  UpdateExpression="ADD #v :by SET #base = if_not_exists(#ver, :none), #ver = :ver, origin_region = :r, "
                                                   "#schema = if_not_exists(#schema, :schema)",
                                  ConditionExpression="attribute_not_exists(#ver) OR #ver < :ver",
                                  ExpressionAttributeNames=_COUNTER_NAMES,
                                  ExpressionAttributeValues={":by": {"N": str(by)}, ":ver": {"S": version},
                                                             ":r": {"S": self.region}, ":none": {"S": ""}, ":schema": {"N": str(SCHEMA)}},
                                  ReturnValues="UPDATED_NEW")
                return hlc, int(resp["Attributes"]["value"]["N"])
            except ClientError:
                current = self._call("get_item", TableName=table, Key=key, ConsistentRead=True).get("Item")
                if current is not None and current.get("version", {}).get("S") == version:
                    # This very write landed and the client's own retry of it (a timeout) was refused by the
                    # condition: it is done. Adding again would count one increment twice.
                    return hlc, int(current["value"]["N"])
                # A concurrent increment here stamped a later version first: adopt it and try again.
                self.observe(str(from_item(current)["version"]) if current else None)
        raise StoreError(f"counter {name} is contended; retry")

    def counter(self, name: str) -> dict[str, Any]:
        table = self.table(self._global, "counters")
        resp = self._call("query", TableName=table, KeyConditionExpression="#n = :n", ExpressionAttributeNames={"#n": "name"},
                          ExpressionAttributeValues={":n": _ser.serialize(name)}, ConsistentRead=True)
        shards = {str(i["shard"]): int(i.get("value", 0)) for i in map(from_item, resp.get("Items", []))}
        return {"name": name, "value": sum(shards.values()), "shards": shards}

    # -- conflicts ------------------------------------------------------------------------------------------
    def record_conflict(self, zone: str, record: ConflictRecord) -> bool:
        """Idempotent: the same conflict seen twice is one record. Returns True when newly recorded."""
        try:
            self._call("put_item", TableName=self.table(zone, "conflicts"), Item=to_item({**record.to_item(), "schema": SCHEMA}),
                       ConditionExpression="attribute_not_exists(conflict_id)")
            return True
        except ClientError:
            return False

    # -- health ------------------------------------------------------------------------------------------
    def ready(self) -> list[str]:
        """Problems with this region's own replicas (empty when ready). Never asks another region."""
        problems = []
        for zone, tables in self._tables.items():
            for logical, physical in tables.items():
                try:
                    status = self.client.describe_table(TableName=physical)["Table"].get("TableStatus")
                    if status not in ("ACTIVE", "UPDATING"):
                        problems.append(f"{zone}/{logical}: {status}")
                except ClientError as exc:
                    problems.append(f"{zone}/{logical}: {exc.response.get('Error', {}).get('Code')}")
                except Exception as exc:  # noqa: BLE001 - unreachable endpoint, DNS, timeouts
                    problems.append(f"{zone}/{logical}: {type(exc).__name__}")
        return problems

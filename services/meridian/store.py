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
from botocore.exceptions import ClientError

from meridian.conflicts import ConflictRecord
from meridian.hlc import HLC, Timestamp, Version
from meridian.ids import new_id
from meridian.topology import Topology

__all__ = ["IdempotencyMismatch", "ResidencyViolation", "Store", "StoreError", "UserRecord"]

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: The DynamoDB API calls this module makes -> the IAM action each needs (a transaction's Puts need
#: PutItem). The task role (infra.layout.SERVICE_TABLE_ACTIONS) allows exactly these.
CALLS = {"DescribeTable": "DescribeTable", "GetItem": "GetItem", "PutItem": "PutItem", "Query": "Query",
         "TransactWriteItems": "PutItem", "UpdateItem": "UpdateItem"}

_ser, _de = TypeSerializer(), TypeDeserializer()


class StoreError(RuntimeError):
    """Storage failed (throttling, unreachable replica): a 503, never a silent loss."""


class ResidencyViolation(PermissionError):
    """A zone's data asked of a region outside the zone."""


class IdempotencyMismatch(ValueError):
    """An idempotency key reused with a different request."""


def to_item(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in data.items() if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
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

    # -- residency --------------------------------------------------------------------------------------
    def table(self, zone: str, table: str) -> str:
        """The physical table for ``zone`` here, or ResidencyViolation if this region is outside the zone."""
        spec = self.topology.table(table)
        zone_name = self.topology.global_zone.name if spec.scope == "global" else zone
        names = self._tables.get(zone_name)
        if names is None or table not in names:
            raise ResidencyViolation(f"region {self.region} is outside residency zone {zone_name!r}; it holds no {table} for it")
        return names[table]

    def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                raise
            raise StoreError(f"DynamoDB {op} failed in {self.region}: {code or exc}") from exc

    def _stamp(self, base: str | None) -> tuple[Timestamp, str, str | None]:
        hlc = self.clock.now()
        return hlc, Version(hlc, self.region).encode(), base

    def observe(self, version: str | None) -> None:
        """Receive rule of the HLC for a version read from a replica."""
        if version:
            self.clock.update(Version.decode(version).hlc)

    # -- directory ----------------------------------------------------------------------------------------
    def directory_get(self, user_id: str) -> dict[str, Any] | None:
        table = self.table(self.topology.global_zone.name, "directory")
        item = self._call("get_item", TableName=table, Key=to_item({"user_id": user_id})).get("Item")
        return from_item(item) if item else None

    # -- users ----------------------------------------------------------------------------------------------
    def create_user(self, *, email: str, name: str, zone: str, failover: bool = False) -> tuple[UserRecord, Timestamp]:
        users = self.table(zone, "users")
        directory = self.table(zone, "directory")
        user_id = new_id("usr", self.region)
        hlc, version, _ = self._stamp(None)
        item = {"user_id": user_id, "email": email, "name": name, "zone": zone, "home_region": self.region,
                "version": version, "base": None, "origin_region": self.region, "failover": failover,
                "updated_at": int(time.time() * 1000)}
        self._call("put_item", TableName=users, Item=to_item(item), ConditionExpression="attribute_not_exists(user_id)")
        # The directory holds pointers only: no profile field leaves the zone.
        self._call("put_item", TableName=directory, Item=to_item(
            {"user_id": user_id, "home_region": self.region, "zone": zone, "version": version, "origin_region": self.region}))
        return UserRecord.from_item(item), hlc

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
        names = {f"#f{i}": k for i, k in enumerate(fields)} | {"#base": "base", "#version": "version", "#id": "user_id"}
        hlc, version, _ = self._stamp(None)
        values = {f":f{i}": _ser.serialize(v) for i, v in enumerate(fields.values())} | {":v": _ser.serialize(version)}
        sets = [f"#f{i} = :f{i}" for i in range(len(fields))] + ["#base = #version", "#version = :v"]
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
        """Returns (order, created). The same key again returns the first order, never a second one."""
        orders, idem = self.table(zone, "orders"), self.table(zone, "idempotency")
        request_hash = hashlib.sha256(json.dumps([user_id, item, qty]).encode()).hexdigest()
        key = f"{user_id}#{idempotency_key}"
        existing = self._replay(zone, key, request_hash)
        if existing is not None:
            return existing[0], False, existing[1]
        hlc, version, _ = self._stamp(None)
        order_id = new_id("ord", self.region)
        order = {"user_id": user_id, "order_id": order_id, "item": item, "qty": qty, "idempotency_key": idempotency_key,
                 "created_region": self.region, "created_at": int(time.time() * 1000), "version": version,
                 "origin_region": self.region}
        marker = {"key": key, "order_id": order_id, "user_id": user_id, "request_hash": request_hash, "version": version,
                  "origin_region": self.region, "expires_at": int(time.time()) + IDEMPOTENCY_TTL_SECONDS}
        try:
            self._call("transact_write_items", TransactItems=[
                {"Put": {"TableName": idem, "Item": to_item(marker), "ConditionExpression": "attribute_not_exists(#k)",
                         "ExpressionAttributeNames": {"#k": "key"}}},
                {"Put": {"TableName": orders, "Item": to_item(order), "ConditionExpression": "attribute_not_exists(order_id)"}},
            ])
        except ClientError:
            replay = self._replay(zone, key, request_hash)
            if replay is None:
                raise StoreError("order write was cancelled; retry with the same Idempotency-Key") from None
            return replay[0], False, replay[1]
        return order, True, hlc

    def _replay(self, zone: str, key: str, request_hash: str) -> tuple[dict[str, Any], Timestamp] | None:
        found = self._call("get_item", TableName=self.table(zone, "idempotency"), Key=to_item({"key": key}), ConsistentRead=True).get("Item")
        if not found:
            return None
        marker = from_item(found)
        if marker["request_hash"] != request_hash:
            raise IdempotencyMismatch("this Idempotency-Key was used for a different order; use a new key")
        order = self._call("get_item", TableName=self.table(zone, "orders"), ConsistentRead=True,
                           Key=to_item({"user_id": marker["user_id"], "order_id": marker["order_id"]})).get("Item")
        if not order:
            raise StoreError("idempotent order not readable yet; retry")
        data = from_item(order)
        return data, Version.decode(str(data["version"])).hlc

    def list_orders(self, zone: str, user_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        resp = self._call("query", TableName=self.table(zone, "orders"), KeyConditionExpression="user_id = :u",
                          ExpressionAttributeValues={":u": _ser.serialize(user_id)}, ScanIndexForward=False, Limit=limit)
        return [from_item(i) for i in resp.get("Items", [])]

    # -- counters (per-region shards: a G-counter that global tables cannot break) ------------------------
    def increment(self, name: str, by: int) -> Timestamp:
        """ADD to this region's shard. The version only moves forward (condition), so replicas apply the
        shard's updates in order; ``base`` is the version replaced, so each is a successor, not a conflict."""
        table = self.table(self.topology.global_zone.name, "counters")
        key = to_item({"name": name, "shard": self.region})
        for _ in range(5):
            hlc, version, _ = self._stamp(None)
            try:
                self._call("update_item", TableName=table, Key=key,
                           UpdateExpression="ADD #v :by SET #base = if_not_exists(#ver, :none), #ver = :ver, origin_region = :r",
                           ConditionExpression="attribute_not_exists(#ver) OR #ver < :ver",
                           ExpressionAttributeNames={"#v": "value", "#base": "base", "#ver": "version"},
                           ExpressionAttributeValues={":by": _ser.serialize(by), ":ver": _ser.serialize(version),
                                                      ":r": _ser.serialize(self.region), ":none": _ser.serialize("")})
                return hlc
            except ClientError:
                # A concurrent increment here stamped a later version first: adopt it and try again.
                current = self._call("get_item", TableName=table, Key=key, ConsistentRead=True).get("Item")
                self.observe(str(from_item(current)["version"]) if current else None)
        raise StoreError(f"counter {name} is contended; retry")

    def counter(self, name: str) -> dict[str, Any]:
        table = self.table(self.topology.global_zone.name, "counters")
        resp = self._call("query", TableName=table, KeyConditionExpression="#n = :n", ExpressionAttributeNames={"#n": "name"},
                          ExpressionAttributeValues={":n": _ser.serialize(name)}, ConsistentRead=True)
        shards = {str(i["shard"]): int(i.get("value", 0)) for i in map(from_item, resp.get("Items", []))}
        return {"name": name, "value": sum(shards.values()), "shards": shards}

    # -- conflicts ------------------------------------------------------------------------------------------
    def record_conflict(self, zone: str, record: ConflictRecord) -> bool:
        """Idempotent: the same conflict seen twice is one record. Returns True when newly recorded."""
        try:
            self._call("put_item", TableName=self.table(zone, "conflicts"), Item=to_item(record.to_item()),
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

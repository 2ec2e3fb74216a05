"""EMULATION of DynamoDB global-table replication (moto accepts replica settings and replicates nothing).

Follows AWS's documented semantics for multi-Region eventually consistent (MREC) global tables:
- every replica's stream is read, and each item written *in that region* (``origin_region``) is applied
  to the table's other replicas after a configurable lag (AWS: "typically within a second", no SLA);
- conflicting writes resolve last-writer-wins per item; here on the item's ``version`` (hlc@region)
  with a conditional put, and every concurrent overwrite is recorded with the library's conflict
  records (AWS keeps no such record);
- delivery between two partitioned regions, or to or from a failed region, is held, never dropped,
  and resumes in order when the link heals;
- an item is only ever copied to the regions in its table's replica set.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from meridian.conflicts import conflict_between
from meridian.store import from_item, to_item
from meridian.topology import Topology
from meridian_local.applier import NO_RETRIES, Applied

#: Tables whose items are updated after creation: LWW with a conditional put, one item at a time.
MUTABLE = {"users", "counters", "conflicts"}


@dataclass
class Delivery:
    due: float
    detected: float
    table: str
    source: str
    target: str
    event: str
    keys: dict[str, Any]
    image: dict[str, Any] | None


@dataclass
class PairStats:
    delivered: int = 0
    lag_samples: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def lag_p50_ms(self) -> float | None:
        if not self.lag_samples:
            return None
        ordered = sorted(self.lag_samples)
        return ordered[len(ordered) // 2] * 1000


class Replicator:
    def __init__(self, applied: Applied, topology: Topology, *, lag: float = 0.5, max_poll: float = 0.5) -> None:
        self.applied, self.topology = applied, topology
        self.lag, self.max_poll = lag, max_poll
        self.failed: set[str] = set()
        self.partitions: set[frozenset[str]] = set()
        self.queue: deque[Delivery] = deque()
        self.stats: dict[tuple[str, str], PairStats] = defaultdict(PairStats)
        self.conflicts_recorded = 0
        self.ignored = 0
        self.enqueued: dict[str, int] = defaultdict(int)  # table -> deliveries queued
        self.errors: deque[str] = deque(maxlen=50)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clients: dict[tuple[str, str], Any] = {}
        self._zone_of = {topology.table_name(s.name, z.name): z.name for s in topology.tables for z in topology.table_zones(s)}
        self._logical = {topology.table_name(s.name, z.name): s.name for s in topology.tables for z in topology.table_zones(s)}
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="replicator-apply")

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = boto3.client(service, region_name=region, endpoint_url=self.applied.endpoint, config=NO_RETRIES,
                                              aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
        return self._clients[key]

    # -- control ---------------------------------------------------------------------------------------
    def blocked(self, a: str, b: str) -> bool:
        return a in self.failed or b in self.failed or frozenset((a, b)) in self.partitions

    def held(self) -> int:
        with self._lock:
            return sum(1 for d in self.queue if self.blocked(d.source, d.target))

    def start(self) -> None:
        streams = []
        for table, regions in self.applied.tables.items():
            for region in regions:
                if len(regions) > 1:
                    streams.append((table, region))
        self._threads = [
            threading.Thread(target=self._poll_loop, args=(streams,), name="replicator-poll", daemon=True),
            threading.Thread(target=self._deliver_loop, name="replicator-deliver", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- reading streams ------------------------------------------------------------------------------
    def _iterator(self, table: str, region: str) -> str | None:
        streams = self.client("dynamodbstreams", region)
        arn = self.client("dynamodb", region).describe_table(TableName=table)["Table"]["LatestStreamArn"]
        shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        if not shards:
            return None
        return str(streams.get_shard_iterator(StreamArn=arn, ShardId=shards[-1]["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"])

    def _poll_loop(self, streams: list[tuple[str, str]]) -> None:
        iterators: dict[tuple[str, str], str | None] = {}
        next_poll = {s: 0.0 for s in streams}
        idle = {s: 0.05 for s in streams}
        while not self._stop.is_set():
            now = time.monotonic()
            for stream in streams:
                if next_poll[stream] > now or self._stop.is_set():
                    continue
                table, region = stream
                try:
                    if iterators.get(stream) is None:
                        iterators[stream] = self._iterator(table, region)
                    it = iterators[stream]
                    if it is None:
                        continue
                    resp = self.client("dynamodbstreams", region).get_records(ShardIterator=it, Limit=1000)
                    iterators[stream] = resp.get("NextShardIterator")
                    records = resp.get("Records", [])
                except ClientError as exc:
                    self.errors.append(f"{table}@{region}: {exc.response.get('Error', {}).get('Code')}")
                    iterators[stream] = None
                    records = []
                except Exception as exc:  # noqa: BLE001 - the emulator keeps going and reports
                    self.errors.append(f"{table}@{region}: {type(exc).__name__}")
                    records = []
                self._enqueue(table, region, records)
                # Busy streams are polled every 50 ms; idle ones back off to max_poll (CPU on 2 cores).
                idle[stream] = 0.05 if records else min(self.max_poll, idle[stream] * 2)
                next_poll[stream] = time.monotonic() + idle[stream]
            self._stop.wait(0.02)

    def _enqueue(self, table: str, region: str, records: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        replicas = self.applied.tables[table]
        for record in records:
            data = record["dynamodb"]
            image = from_item(data["NewImage"]) if "NewImage" in data else None
            old = from_item(data["OldImage"]) if "OldImage" in data else None
            written_by = (image if record["eventName"] != "REMOVE" else old or {}) or {}
            if "origin_region" not in written_by:
                # Every Meridian write stamps origin_region. moto's UpdateItem also emits a key-only
                # record before the real one; replicating that would overwrite a replica with an
                # empty item, so such records are counted and skipped.
                self.ignored += 1
                continue
            if written_by["origin_region"] != region:
                continue  # arrived here by replication: the origin region's stream carries it
            for target in replicas:
                if target == region:
                    continue
                self.enqueued[table] += 1
                with self._lock:
                    self.queue.append(Delivery(now + self.lag, now, table, region, target, record["eventName"],
                                               from_item(data["Keys"]), image))

    # -- applying --------------------------------------------------------------------------------------
    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            ready: list[Delivery] = []
            with self._lock:
                keep: deque[Delivery] = deque()
                blocked_pairs: set[tuple[str, str]] = set()
                for d in self.queue:
                    pair = (d.source, d.target)
                    # FIFO per pair: once one delivery of a pair waits, the later ones wait too.
                    if pair in blocked_pairs or d.due > now or self.blocked(d.source, d.target):
                        blocked_pairs.add(pair)
                        keep.append(d)
                    else:
                        ready.append(d)
                self.queue = keep
            # Deliveries of one item to one replica stay in order; different items go in parallel.
            groups: dict[tuple[str, str, str], list[Delivery]] = defaultdict(list)
            batches: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
            for d in ready:
                if self._logical.get(d.table) in MUTABLE or d.image is None:
                    groups[(d.target, d.table, json.dumps(d.keys, sort_keys=True, default=str))].append(d)
                else:
                    batches[(d.target, d.table)].append(d)
            work = [*groups.values()]
            for items in batches.values():
                work += [items[i : i + 25] for i in range(0, len(items), 25)]
            failed = [d for result in self._pool.map(self._apply_work, work) for d in result]
            if failed:
                with self._lock:
                    self.queue.extendleft(reversed(failed))  # held for a retry, never dropped
            self._stop.wait(0.01 if ready else 0.02)

    def _apply_work(self, group: list[Delivery]) -> list[Delivery]:
        first = group[0]
        if self._logical.get(first.table) in MUTABLE or first.image is None:
            return self._apply_group(group)
        return self._apply_batch(group)

    def _apply_batch(self, batch: list[Delivery]) -> list[Delivery]:
        """Items no one ever updates (orders, idempotency markers, directory pointers, conflict
        records): one BatchWriteItem per 25, the same content whichever copy lands last."""
        first = batch[0]
        unique = {json.dumps(d.keys, sort_keys=True, default=str): d for d in batch}
        try:
            client = self.client("dynamodb", first.target)
            pending: dict[str, Any] = {first.table: [{"PutRequest": {"Item": to_item(d.image or {})}} for d in unique.values()]}
            for _ in range(5):
                pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break
            if pending:
                raise RuntimeError("unprocessed items after 5 tries")
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"batch {first.table} {first.source}->{first.target}: {exc}")
            return batch
        now = time.monotonic()
        for d in batch:
            stats = self.stats[(d.source, d.target)]
            stats.delivered += 1
            stats.lag_samples.append(now - d.detected)
        return []

    def _apply_group(self, group: list[Delivery]) -> list[Delivery]:
        for i, d in enumerate(group):
            try:
                self._apply(d)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"apply {d.table} {d.source}->{d.target}: {exc}")
                return group[i:]
        return []

    def _apply(self, d: Delivery) -> None:
        assert d.target in self.applied.tables[d.table], "never outside the replica set"
        client = self.client("dynamodb", d.target)
        if d.event == "REMOVE" or d.image is None:
            client.delete_item(TableName=d.table, Key=to_item(d.keys))
        elif "version" in d.image:
            hash_key = self.applied.keys[d.table][0]
            try:
                resp = client.put_item(
                    TableName=d.table, Item=to_item(d.image), ReturnValues="ALL_OLD",
                    ConditionExpression="attribute_not_exists(#k) OR #v < :v",
                    ExpressionAttributeNames={"#k": hash_key, "#v": "version"},
                    ExpressionAttributeValues={":v": {"S": str(d.image["version"])}},
                )
                old = from_item(resp["Attributes"]) if resp.get("Attributes") else None
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                existing = client.get_item(TableName=d.table, Key=to_item(d.keys), ConsistentRead=True).get("Item")
                old = from_item(existing) if existing else None
            self._audit(d, old)
        else:
            client.put_item(TableName=d.table, Item=to_item(d.image))
        stats = self.stats[(d.source, d.target)]
        stats.delivered += 1
        stats.lag_samples.append(time.monotonic() - d.detected)

    def _audit(self, d: Delivery, old: dict[str, Any] | None) -> None:
        assert d.image is not None
        zone, logical = self._zone_of.get(d.table), self._logical.get(d.table)
        if zone is None or logical in (None, "conflicts"):
            return
        key = "#".join(str(d.keys[k]) for k in sorted(d.keys))
        record = conflict_between(logical or d.table, key, old, d.image, region=d.target)
        if record is None:
            return
        conflicts = self.topology.table_name("conflicts", zone)  # zone of the table: the global zone for the directory
        try:
            self.client("dynamodb", d.target).put_item(
                TableName=conflicts, Item=to_item({**record.to_item(), "origin_region": d.target}),
                ConditionExpression="attribute_not_exists(conflict_id)",
            )
            self.conflicts_recorded += 1
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    # -- status ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self.queue)
        return {
            "lag": self.lag,
            "pending": pending,
            "held": self.held(),
            "failed": sorted(self.failed),
            "partitions": sorted(sorted(p) for p in self.partitions),
            "conflicts_recorded": self.conflicts_recorded,
            "enqueued": dict(self.enqueued),
            "ignored_without_origin": self.ignored,
            "pairs": {f"{a}->{b}": {"delivered": s.delivered, "lag_p50_ms": s.lag_p50_ms()} for (a, b), s in sorted(self.stats.items())},
            "errors": list(self.errors)[-5:],
        }

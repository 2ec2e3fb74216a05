"""EMULATION of DynamoDB global-table replication (moto accepts replica settings and replicates nothing).

Follows AWS's documented semantics for multi-Region eventually consistent (MREC) global tables:
- every replica's stream is read, and each item written *in that region* (``origin_region``) is applied
  to the table's other replicas after a configurable lag (AWS: "typically within a second", no SLA);
- conflicting writes resolve last-writer-wins per item; here on the item's ``version`` (hlc@region)
  with a conditional put, for every item kind (profiles, orders, idempotency markers, directory
  pointers, counter shards, conflict records) — an unconditional put would let the two replicas swap
  each other's versions and diverge for good. Every concurrent overwrite is recorded with the
  library's conflict records (AWS keeps no such record), except two executions of the same request
  (same order, same ``request_hash``), which are one order: counted as ``duplicates_merged``;
- delivery between two partitioned regions, or to or from a failed region, is held, never dropped,
  and resumes in order when the link heals;
- an item is only ever copied to the regions in its table's replica set.

A stream read is never trusted blindly: each stream's cursor checks that sequence numbers follow on
(moto numbers records consecutively), and an idle stream is verified every ``verify_interval``: the
stream and its shard still exist, the last record read is still there with the same event id, and a
fresh iterator finds nothing the cursor's iterator misses. moto's TransactWriteItems, for one, replaces
a table (and its stream shard) with a copy when a transaction is cancelled: iterators then read a shard
nobody writes any more, and records already read can be rewritten with other writes. Any such *gap* is
reported (``gaps`` in the status, the game day's ``stream_gaps`` check), the cursor is repositioned, and
the table is *resynced*: every replica is scanned and each item's LWW winner delivered to the replicas
that lack it, so what the stream lost is repaired from the tables — never a silent stall.
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
from meridian.hlc import Version
from meridian.store import from_item, to_item
from meridian.topology import Topology
from meridian_local.applier import NO_RETRIES, Applied

#: Gap kinds the stream cursors report.
GAP_KINDS = ("sequence_skipped", "sequence_reset", "history_rewritten", "iterator_stale", "shard_gone", "stream_replaced",
             "trimmed")


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
    resync: bool = False
    #: the item as DynamoDB JSON, written as it is: types kept (a string set stays a set, not a list)
    raw: dict[str, Any] | None = None


@dataclass
class PairStats:
    delivered: int = 0
    lag_samples: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def lag_p50_ms(self) -> float | None:
        if not self.lag_samples:
            return None
        ordered = sorted(self.lag_samples)
        return ordered[len(ordered) // 2] * 1000


@dataclass
class Gap:
    """A stretch of a stream the replicator could not read in order: reported, then repaired by a resync."""

    at: float
    table: str
    region: str
    kind: str
    detail: str
    repaired: int | None = None  # deliveries the resync queued (None: resync not finished)

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "table": self.table, "region": self.region, "kind": self.kind, "detail": self.detail,
                "repaired": self.repaired}


#: moto numbers a stream record from the shard's length read *before* appending it, without a lock: under
#: concurrent writes two records can share a number, or a number can lag its record's place by the number
#: of writers in flight (the record itself is never lost). Labels that lag by at most this are in order.
LABEL_LAG = 64

#: Records per GetRecords call (AWS's maximum); a poll that returns fewer has read the shard to its end.
READ_LIMIT = 1000


@dataclass
class Cursor:
    """Where the replicator is in one replica's stream, and what it last read there.

    With ``contiguous`` numbering (moto) ``last_seq`` is the *position* of the last record read (the shard's
    first sequence number plus the records before it), which is what moto's iterators address; elsewhere
    it is the record's sequence number."""

    table: str
    region: str
    arn: str | None = None
    shard_id: str | None = None
    start_seq: int | None = None
    iterator: str | None = None
    last_seq: int | None = None
    last_event: str | None = None  # None: nothing read on this shard yet
    read: int = 0
    last_read_at: float = 0.0
    verified_at: float = 0.0
    checks: int = 0
    read_to_end_at: float = 0.0  # monotonic start of the last poll that read the shard to its end

    def at_start(self, shard_id: str, start_seq: int | None, *, contiguous: bool = True) -> None:
        """Positioned before the shard's first record."""
        self.shard_id, self.start_seq, self.last_event = shard_id, start_seq, None
        self.last_seq = start_seq - 1 if contiguous and start_seq is not None else None

    def advance(self, records: list[dict[str, Any]], *, contiguous: bool = True) -> list[tuple[str, str]]:
        """Move past ``records``; returns the (kind, detail) of every gap seen in their sequence numbers."""
        gaps = []
        for record in records:
            label = int(record["dynamodb"]["SequenceNumber"])
            position = label
            if self.last_seq is not None and contiguous:
                position = self.last_seq + 1
                if label > position:
                    gaps.append(("sequence_skipped", f"sequence numbers {position}..{label - 1} never read ({label - position} records)"))
                    position = label
                elif label < position - LABEL_LAG:
                    gaps.append(("sequence_reset", f"sequence number {label} at position {position}: the shard was reset"))
                    position = label
            elif self.last_seq is not None and label <= self.last_seq:
                gaps.append(("sequence_reset", f"sequence number {label} after {self.last_seq}: the shard was reset"))
            self.last_seq, self.last_event = position, str(record.get("eventID", ""))
            self.read += 1
        if records:
            self.last_read_at = time.time()
        return gaps

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard_id, "position": str(self.last_seq) if self.last_seq is not None else None,
                "records_read": self.read, "last_read_at": self.last_read_at or None, "verified_at": self.verified_at or None}


class Replicator:
    def __init__(self, applied: Applied, topology: Topology, *, lag: float = 0.5, max_poll: float = 0.5,
                 verify_interval: float = 2.0, contiguous: bool = True, exclude: frozenset[str] = frozenset()) -> None:
        self.applied, self.topology = applied, topology
        #: tables replicated by someone else (the MRSC emulation writes every reachable replica itself)
        self.exclude = exclude
        self.lag, self.max_poll, self.verify_interval, self.contiguous = lag, max_poll, verify_interval, contiguous
        self.failed: set[str] = set()
        self.partitions: set[frozenset[str]] = set()
        self.queue: deque[Delivery] = deque()
        self.stats: dict[tuple[str, str], PairStats] = defaultdict(PairStats)
        self.conflicts_recorded = 0
        self.duplicates_merged = 0
        self.ignored = 0
        self.unversioned = 0
        self.iterator_renewals = 0
        self.in_flight = 0
        self.enqueued: dict[str, int] = defaultdict(int)  # table -> deliveries queued
        self.errors: deque[str] = deque(maxlen=50)
        self.gaps: list[Gap] = []
        self.cursors: dict[tuple[str, str], Cursor] = {}
        self._resyncing: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._nudged = 0.0  # monotonic time of the last drain request (the poller then polls every stream at once)
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
                if len(regions) > 1 and table not in self.exclude:
                    streams.append((table, region))
        self.cursors = {s: Cursor(*s) for s in streams}
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
    def _shards(self, cursor: Cursor) -> tuple[str, dict[str, int | None]]:
        """The table's current stream ARN and its shards (id -> first sequence number), oldest first."""
        arn = str(self.client("dynamodb", cursor.region).describe_table(TableName=cursor.table)["Table"]["LatestStreamArn"])
        shards = self.client("dynamodbstreams", cursor.region).describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        out: dict[str, int | None] = {}
        for sh in shards:
            start = sh.get("SequenceNumberRange", {}).get("StartingSequenceNumber")
            out[str(sh["ShardId"])] = int(start) if start is not None else None
        return arn, out

    def _get_iterator(self, cursor: Cursor, kind: str, seq: int | None = None) -> str:
        kw: dict[str, Any] = {"StreamArn": cursor.arn, "ShardId": cursor.shard_id, "ShardIteratorType": kind}
        if seq is not None:
            kw["SequenceNumber"] = str(seq)
        return str(self.client("dynamodbstreams", cursor.region).get_shard_iterator(**kw)["ShardIterator"])

    def _records(self, cursor: Cursor, iterator: str, limit: int = READ_LIMIT) -> tuple[list[dict[str, Any]], str | None]:
        resp = self.client("dynamodbstreams", cursor.region).get_records(ShardIterator=iterator, Limit=limit)
        return list(resp.get("Records", [])), resp.get("NextShardIterator")

    def _from_start(self, cursor: Cursor) -> None:
        cursor.at_start(str(cursor.shard_id), cursor.start_seq, contiguous=self.contiguous)
        cursor.iterator = self._get_iterator(cursor, "TRIM_HORIZON")

    def _open(self, cursor: Cursor) -> None:
        """(Re)open the cursor's iterator: after the last record read, or from the start of a new stream."""
        arn, shards = self._shards(cursor)
        if not shards:
            return
        if cursor.arn is not None and arn != cursor.arn:
            old = cursor.arn
            cursor.arn, cursor.shard_id = arn, None
            self._gap(cursor, "stream_replaced", f"stream {old.rsplit('/', 1)[-1]} replaced by {arn.rsplit('/', 1)[-1]}")
        elif cursor.shard_id is not None and cursor.shard_id not in shards:
            gone, cursor.shard_id = cursor.shard_id, None
            self._gap(cursor, "shard_gone", f"shard {gone} is no longer in the stream")
        cursor.arn = arn
        cursor.verified_at = time.monotonic()
        if cursor.shard_id is None:
            cursor.shard_id = list(shards)[-1]
            cursor.start_seq = shards[cursor.shard_id]
            self._from_start(cursor)
        elif cursor.last_event is None:
            self._from_start(cursor)
        else:
            at, trimmed = self._at_last(cursor)
            if trimmed:
                self._from_start(cursor)
                self._gap(cursor, "trimmed", "the stream trimmed records the cursor had not read")
            elif self._unchanged(cursor, at):
                cursor.iterator = self._get_iterator(cursor, "AFTER_SEQUENCE_NUMBER", cursor.last_seq)
            else:
                self._rewritten(cursor, at)

    def _at_last(self, cursor: Cursor) -> tuple[list[dict[str, Any]], bool]:
        """The last record read and the one after it, as the shard holds them now; and whether the records
        up to it were trimmed (then nothing is returned)."""
        assert cursor.last_seq is not None
        try:
            records, _ = self._records(cursor, self._get_iterator(cursor, "AT_SEQUENCE_NUMBER", cursor.last_seq), limit=2)
            return records, False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") == "TrimmedDataAccessException":
                return [], True
            raise

    def _unchanged(self, cursor: Cursor, at: list[dict[str, Any]]) -> bool:
        return bool(at) and at[0].get("eventID") == cursor.last_event

    def _rewritten(self, cursor: Cursor, at: list[dict[str, Any]]) -> None:
        """The last record read is gone or replaced: the stream's history was rewritten under the cursor.
        Move to the shard's end first, then report (the resync it starts scans the tables afterwards, so
        nothing written in between is missed)."""
        last = cursor.last_seq
        what = "is gone" if not at else "now holds another write"
        self._skip_to_end(cursor)
        self._gap(cursor, "history_rewritten", f"record at {last} (already read) {what}: the stream was rewritten "
                                               "(moto restores a copy of a table when a transaction is cancelled)")

    def _skip_to_end(self, cursor: Cursor) -> None:
        self._from_start(cursor)
        iterator = cursor.iterator
        while iterator is not None:
            records, following = self._records(cursor, iterator)
            if not records:
                break
            cursor.advance(records, contiguous=self.contiguous)
            iterator = following
        cursor.iterator = iterator or self._get_iterator(cursor, "LATEST")

    def _verify(self, cursor: Cursor) -> list[dict[str, Any]]:
        """An idle stream: is it idle, or is the cursor reading a shard nobody writes any more? Returns
        records the cursor's own iterator still had (a write that raced the check)."""
        cursor.verified_at = time.monotonic()
        cursor.checks += 1
        # Streams and shards are replaced rarely (stream disabled and enabled, shard closed): checked 1 time
        # in 5; the record checks below catch a shard replaced under the cursor every time.
        if cursor.checks % 5 == 0:
            arn, shards = self._shards(cursor)
            if arn != cursor.arn or cursor.shard_id not in shards:
                cursor.iterator = None
                self._open(cursor)  # reports stream_replaced / shard_gone
                return []
        if cursor.last_event is None:
            fresh = self._get_iterator(cursor, "TRIM_HORIZON")
            ahead, _ = self._records(cursor, fresh, limit=1)
        else:
            at, trimmed = self._at_last(cursor)
            if trimmed:
                self._from_start(cursor)
                self._gap(cursor, "trimmed", "the stream trimmed records the cursor had not read")
                return []
            if not self._unchanged(cursor, at):
                self._rewritten(cursor, at)
                return []
            ahead = at[1:]
            fresh = self._get_iterator(cursor, "AFTER_SEQUENCE_NUMBER", cursor.last_seq) if ahead else ""
        if not ahead or cursor.iterator is None:
            return []
        # The shard has a record after the cursor's position: the cursor's own iterator must see it too.
        records, following = self._records(cursor, cursor.iterator)
        if records:
            cursor.iterator = following
            return records
        cursor.iterator = fresh
        self._gap(cursor, "iterator_stale", f"the shard has records after position {cursor.last_seq} that the cursor's iterator "
                                            "does not return: it reads a shard nobody writes any more (replaced under it)")
        return []

    def _poll(self, cursor: Cursor) -> list[dict[str, Any]]:
        if cursor.iterator is None:
            self._open(cursor)
            if cursor.iterator is None:
                return []
        try:
            records, cursor.iterator = self._records(cursor, cursor.iterator)
        except ClientError as exc:
            # Expired (AWS: 15 minutes) or unknown to the server: reopen after the last record read; _open
            # checks that record is still there, so a renewal that skipped something is a gap.
            code = exc.response.get("Error", {}).get("Code", "")
            self.iterator_renewals += 1
            self.errors.append(f"{cursor.table}@{cursor.region}: iterator renewed after {code or 'an error'}")
            cursor.iterator = None
            self._open(cursor)
            return []
        if not records and time.monotonic() - cursor.verified_at >= self.verify_interval:
            records = self._verify(cursor)
        for kind, detail in cursor.advance(records, contiguous=self.contiguous):
            self._gap(cursor, kind, detail)
        return records

    def _poll_loop(self, streams: list[tuple[str, str]]) -> None:
        next_poll = {s: 0.0 for s in streams}
        idle = {s: 0.05 for s in streams}
        nudged = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self._nudged > nudged:  # a drain is waiting: poll every stream now, not after its back-off
                nudged = self._nudged
                next_poll = dict.fromkeys(streams, 0.0)
            for stream in streams:
                if next_poll[stream] > now or self._stop.is_set():
                    continue
                table, region = stream
                records: list[dict[str, Any]] = []
                started, to_end = time.monotonic(), False
                try:
                    records = self._poll(self.cursors[stream])
                    # Fewer than a page: everything written before ``started`` has been read.
                    to_end = self.cursors[stream].iterator is not None and len(records) < READ_LIMIT
                except ClientError as exc:
                    self.errors.append(f"{table}@{region}: {exc.response.get('Error', {}).get('Code')}")
                    self.cursors[stream].iterator = None
                except Exception as exc:  # noqa: BLE001 - the emulator keeps going and reports
                    self.errors.append(f"{table}@{region}: {type(exc).__name__}: {exc}")
                    self.cursors[stream].iterator = None
                self._enqueue(table, region, records)
                if to_end:  # only once what it read is queued: a drain then waits for it to be applied
                    self.cursors[stream].read_to_end_at = started
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
                                               from_item(data["Keys"]), image, raw=data.get("NewImage")))

    # -- gaps and resync -------------------------------------------------------------------------------
    def _gap(self, cursor: Cursor, kind: str, detail: str) -> None:
        gap = Gap(time.time(), cursor.table, cursor.region, kind, detail)
        with self._lock:
            self.gaps.append(gap)
        self.errors.append(f"GAP {kind} in {cursor.table}@{cursor.region}: {detail}")
        self.resync(cursor.table, gap)

    def resync(self, table: str, gap: Gap | None = None) -> None:
        """Repair ``table`` from its replicas, in the background: scan every replica, and deliver each item's
        LWW winner (its highest version) to every replica that lacks it or holds an older version."""
        with self._lock:
            if table in self._resyncing:
                if gap is not None:
                    gap.repaired = 0  # covered by the resync already running
                return
            self._resyncing.add(table)
        threading.Thread(target=self._resync, args=(table, gap), name=f"replicator-resync-{table}", daemon=True).start()

    def _resync(self, table: str, gap: Gap | None) -> None:
        try:
            time.sleep(0.05)  # let a burst of gaps on the same table share this scan
            key_names = [k for k in self.applied.keys[table] if k]
            raws: dict[tuple[str, str], Any] = {}
            replicas = {region: self._scan(table, region, raws) for region in self.applied.tables[table]}
            best: dict[str, tuple[Version, str, dict[str, Any]]] = {}
            for region, items in replicas.items():
                for key, item in items.items():
                    if "version" not in item:
                        continue
                    version = Version.decode(str(item["version"]))
                    if key not in best or version > best[key][0]:
                        best[key] = (version, region, item)
            now, queued = time.monotonic(), []
            for key, (version, holder, item) in best.items():
                for region, items in replicas.items():
                    have = items.get(key)
                    if region == holder or (have is not None and "version" in have and Version.decode(str(have["version"])) >= version):
                        continue
                    queued.append(Delivery(now, now, table, holder, region, "MODIFY", {k: item[k] for k in key_names}, item, resync=True,
                                           raw=raws.get((holder, key))))
            with self._lock:
                self.queue.extend(queued)
            if gap is not None:
                gap.repaired = len(queued)
        except Exception as exc:  # noqa: BLE001 - reported; the next gap retries
            self.errors.append(f"resync {table}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._resyncing.discard(table)

    def _scan(self, table: str, region: str, raws: dict[tuple[str, str], Any] | None = None) -> dict[str, dict[str, Any]]:
        client, out = self.client("dynamodb", region), {}
        key_names = [k for k in self.applied.keys[table] if k]
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            resp = client.scan(**kwargs)
            for raw in resp.get("Items", []):
                item = from_item(raw)
                key = json.dumps([item.get(k) for k in key_names], default=str)
                out[key] = item
                if raws is not None:
                    raws[(region, key)] = raw  # what a resync writes: the item with its types
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

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
                self.in_flight = len(ready)
            # Deliveries of one item to one replica stay in order; different items go in parallel.
            groups: dict[tuple[str, str, str], list[Delivery]] = defaultdict(list)
            for d in ready:
                groups[(d.target, d.table, json.dumps(d.keys, sort_keys=True, default=str))].append(d)
            failed = [d for result in self._pool.map(self._apply_group, groups.values()) for d in result]
            with self._lock:
                if failed:
                    self.queue.extendleft(reversed(failed))  # held for a retry, never dropped
                self.in_flight = 0
            self._stop.wait(0.01 if ready else 0.02)

    def _apply_group(self, group: list[Delivery]) -> list[Delivery]:
        for i, d in enumerate(group):
            try:
                self._apply(d)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"apply {d.table} {d.source}->{d.target}: {exc}")
                return group[i:]
        return []

    def _apply(self, d: Delivery) -> None:
        """Last-writer-wins for every item kind: the put applies only where the replica has no version of
        the item or an older one, so each replica ends with the highest (hlc, region) whatever the order of
        arrival (an unconditional put would make two replicas swap their versions and diverge for good)."""
        assert d.target in self.applied.tables[d.table], "never outside the replica set"
        client = self.client("dynamodb", d.target)
        hash_key = self.applied.keys[d.table][0]
        if d.event == "REMOVE" or d.image is None:
            client.delete_item(TableName=d.table, Key=to_item(d.keys))
        elif "version" in d.image:
            try:
                resp = client.put_item(
                    TableName=d.table, Item=d.raw or to_item(d.image), ReturnValues="ALL_OLD",
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
            # No version to order by (not a Meridian write): copied where absent, never over anything.
            self.unversioned += 1
            try:
                client.put_item(TableName=d.table, Item=d.raw or to_item(d.image), ConditionExpression="attribute_not_exists(#k)",
                                ExpressionAttributeNames={"#k": hash_key})
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
        stats = self.stats[(d.source, d.target)]
        stats.delivered += 1
        stats.lag_samples.append(time.monotonic() - d.detected)

    def _audit(self, d: Delivery, old: dict[str, Any] | None) -> None:
        assert d.image is not None
        zone, logical = self._zone_of.get(d.table), self._logical.get(d.table)
        if zone is None or logical in (None, "conflicts"):
            return
        if old is not None and old.get("version") != d.image.get("version") and old.get("request_hash") is not None \
                and old.get("request_hash") == d.image.get("request_hash"):
            # The same request executed in two regions (same derived id, same content): one order whose
            # two versions LWW merges. Nothing a client was told is lost, so it is not a conflict.
            self.duplicates_merged += 1
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

    # -- drain ---------------------------------------------------------------------------------------------
    def read_through(self, regions: set[str] | None = None, timeout: float = 30.0) -> list[str]:
        """Wait until every stream (of ``regions``, default all) has been read to its end by a poll that began
        after this call: every write made before it has then been read and queued. Returns the streams still
        unread at ``timeout`` (empty: done). A barrier, where sleeping a poll interval is a guess a busy
        machine breaks."""
        started = time.monotonic()
        self._nudged = started
        deadline = started + timeout
        while True:
            with self._lock:
                unread = sorted(f"{t}@{r}" for (t, r), c in self.cursors.items()
                                if (regions is None or r in regions) and c.read_to_end_at < started)
            if not unread or time.monotonic() >= deadline or self._stop.is_set():
                return unread
            time.sleep(0.02)

    def drain(self, timeout: float = 30.0) -> dict[str, Any]:
        """Returns once every write made before the call has been read from its stream (``read_through``) and
        every delivery so read has been applied (``pending`` 0). A queue that is empty only because the poller
        has not read a stream yet does not count. Held deliveries (a partition, a failed region) keep it
        waiting until ``timeout``; then ``drained`` is false and the reason is given."""
        started = time.monotonic()
        unread = self.read_through(timeout=timeout)
        while True:
            pending = self.status()["pending"]
            if not unread and pending == 0:
                return {"drained": True, "seconds": round(time.monotonic() - started, 3)}
            if unread or time.monotonic() - started >= timeout or self._stop.is_set():
                return {"drained": False, "seconds": round(time.monotonic() - started, 3), "unread_streams": unread[:10],
                        "pending": pending, "held": self.held()}
            time.sleep(0.05)

    # -- status ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self.queue) + self.in_flight
            gaps = [g.to_json() for g in self.gaps]
            resyncing = sorted(self._resyncing)
        return {
            "lag": self.lag,
            "excluded": sorted(self.exclude),
            # Queued or being applied, plus a resync still scanning: 0 means caught up with what was read.
            "pending": pending + len(resyncing),
            "held": self.held(),
            "failed": sorted(self.failed),
            "partitions": sorted(sorted(p) for p in self.partitions),
            "conflicts_recorded": self.conflicts_recorded,
            "duplicates_merged": self.duplicates_merged,
            "enqueued": dict(self.enqueued),
            "ignored_without_origin": self.ignored,
            "unversioned": self.unversioned,
            "pairs": {f"{a}->{b}": {"delivered": s.delivered, "lag_p50_ms": s.lag_p50_ms()} for (a, b), s in sorted(self.stats.items())},
            # Never a silent stall: every gap a stream cursor found, and whether its resync ran.
            "gaps": len(gaps),
            "gap_events": gaps[-20:],
            "resyncing": resyncing,
            "iterator_renewals": self.iterator_renewals,
            "streams": {f"{t}@{r}": c.to_json() for (t, r), c in sorted(self.cursors.items())},
            "errors": list(self.errors)[-5:],
        }

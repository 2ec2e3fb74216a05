"""EMULATION of DynamoDB multi-Region strong consistency (MRSC) for the local run's strong tables.

moto keeps one independent table per replica region and replicates nothing; the replication emulator
(meridian_local.replicator) is asynchronous, so it cannot keep MRSC's promise. This emulator does, for
the tables of a zone whose strong mechanism is ``mrsc`` (``Topology.mechanism``): it is an HTTP server
speaking DynamoDB's JSON protocol (``POST /`` with ``X-Amz-Target: DynamoDB_20120810.<Op>``), so the
region services reach it through an ordinary boto3 client (``MERIDIAN_STRONG_ENDPOINT_URL``, which
``meridian.api.app.app_from_env`` gives the strong keys' store). One server serves every region: the
calling region is the one the request is signed for (the SigV4 credential scope
``…/<region>/dynamodb/aws4_request``), which is also how moto picks the replica.

What AWS documents, and what is emulated (V2globaltables_HowItWorks.html, "Multi-Region strong consistency"):

- "Item changes in an MRSC global table replica are synchronously replicated to at least one other Region
  before the write operation returns a successful response": a write (PutItem, UpdateItem, DeleteItem) is
  executed on the calling region's replica, its resulting item (or its deletion) is copied at once to every
  other replica the caller can reach, and it is acknowledged only if a majority of the set has it. The set
  is the zone's replicas plus the table's witness, which stores no table but votes and keeps the change
  data it acknowledged ("a witness contains data written to global table replicas"), so that a replica
  can be caught up from it.
- "Strongly consistent read operations on any MRSC replica always return the latest version of an item;
  conditional writes always evaluate the condition expression against the latest version": operations
  are serialized per item across regions, and a replica that missed writes (cut off, or its region
  failed) is caught up from a reachable member that holds the latest version before it serves a strong
  read or executes a write of that item; a background pass catches up the rest once it is reachable again.
- "A write operation fails with a ReplicatedWriteConflictException when it attempts to modify an item that
  is already being modified in another Region"; "writes that fail with the ReplicatedWriteConflictException
  can be retried": a write that finds the item held by another region's write in flight gets that exception
  (HTTP 400, ``__type`` ``com.amazonaws.dynamodb.v20120810#ReplicatedWriteConflictException``, the shape of
  ErrorHandling.html; botocore models it as retryable). A write from the same region waits its turn.
- A region that cannot reach a majority of the set gets an error for writes and strongly consistent reads;
  nothing is executed. The documentation found does not name the error an isolated MRSC replica returns:
  the emulation answers DynamoDB's documented ``ServiceUnavailable`` (HTTP 503, "DynamoDB is currently
  unavailable", retry; ErrorHandling.html), which ``meridian.strong.StrongStore`` turns into 503
  ``consistency_unavailable``. Eventually consistent reads are served by the local replica, as on AWS.
- "Global tables configured for MRSC do not support transaction operations, and will return an error":
  transactions, batches, queries and scans naming an MRSC table are refused (ValidationException); the
  strong keys use none of them.

Reachability is the local run's emulated network: the edge's partitions and failed regions
(``Edge.linked``); a failed region neither calls nor acknowledges. Tables that are not MRSC pass through to
the caller's replica untouched (the asynchronous replicator carries them); the replicator leaves the MRSC
tables alone. What differs from AWS: one process orders every operation (no Paxos between regions, no
cross-region latency of its own: the edge's injected delay does not apply to these calls), a conflict is
decided by "in flight here" rather than by AWS's internal protocol, and the witness's change data lives in
this process's memory.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from meridian.strong import STRONG_TABLES
from meridian.topology import Topology

__all__ = ["MrscEmulator", "MrscTable", "Refused", "mrsc_tables"]

#: Single-item operations the emulation orders; anything else naming an MRSC table is refused.
ITEM_OPS = ("GetItem", "PutItem", "UpdateItem", "DeleteItem")
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/dynamodb/aws4_request")
_FORWARDED = ("authorization", "x-amz-target", "x-amz-date", "x-amz-security-token", "content-type", "user-agent")
_RETURNED = ("content-type", "x-amzn-requestid", "x-amz-crc32")

#: Refusals counted in the status.
_COUNTED = {"ReplicatedWriteConflictException": "conflicts", "ServiceUnavailable": "unavailable"}

Response = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class MrscTable:
    """One MRSC global table: its replicas (regions holding it) and its witness (votes, holds no table)."""

    name: str
    replicas: tuple[str, ...]
    witness: str | None
    key_names: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        return self.replicas + ((self.witness,) if self.witness else ())

    @property
    def majority(self) -> int:
        return len(self.members) // 2 + 1


def mrsc_tables(topology: Topology) -> dict[str, MrscTable]:
    """The strong keys' tables whose mechanism is ``mrsc``, by physical name."""
    out: dict[str, MrscTable] = {}
    for logical in STRONG_TABLES:
        spec = topology.table(logical)
        keys = tuple(k.name for k in (spec.hash_key, spec.range_key) if k is not None)
        for zone in topology.table_zones(spec):
            if topology.mechanism(spec, zone) == "mrsc":
                name = topology.table_name(logical, zone.name)
                out[name] = MrscTable(name=name, replicas=zone.regions, witness=spec.witness_region, key_names=keys)
    return out


class Refused(Exception):
    """An operation answered with a DynamoDB error: executed nowhere, except an InternalServerError (unknown)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> Response:
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}", "message": str(self)}).encode()
        return self.status, {"Content-Type": "application/x-amz-json-1.0"}, body


@dataclass
class _Item:
    """One item's place in the order: its lock, the region whose write holds it, who has its latest version."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    writer: str | None = None
    #: members holding the latest version; None: never written here (every replica agrees)
    holders: frozenset[str] | None = None
    witness_image: dict[str, Any] | None = None  # the witness's change data: the latest item it acknowledged


class MrscEmulator:
    """``linked(a, b)``: the emulated network lets a reach b. ``client(region)``: a boto3 DynamoDB client of
    that region's replica (moto). ``endpoint``: moto itself, where the callers' requests are executed."""

    def __init__(self, tables: dict[str, MrscTable], *, endpoint: str, client: Callable[[str], Any],
                 linked: Callable[[str, str], bool], catch_up_every: float = 0.2) -> None:
        self.tables, self.endpoint, self.linked = tables, endpoint, linked
        self._client_of = client
        self._clients: dict[str, Any] = {}
        self.catch_up_every = catch_up_every
        self.http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self._items: dict[tuple[str, str], _Item] = {}
        #: (table, region) -> keys (json -> key) whose latest version that replica lacks
        self._stale: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._mutex = threading.Lock()
        self.counts = dict.fromkeys(("writes", "strong_reads", "conflicts", "unavailable", "caught_up"), 0)
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.emulator = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, name="mrsc-http", daemon=True).start()
        threading.Thread(target=self._catch_up_loop, name="mrsc-catch-up", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.http.close()

    def status(self) -> dict[str, Any]:
        with self._mutex:
            stale = {f"{t}@{r}": len(keys) for (t, r), keys in self._stale.items() if keys}
            counts = dict(self.counts)
        return {"url": self.url if self._server else None, **counts, "stale": stale,
                "tables": {t.name: {"replicas": list(t.replicas), "witness": t.witness} for t in self.tables.values()}}

    # -- the protocol --------------------------------------------------------------------------------------
    def handle(self, headers: dict[str, str], body: bytes) -> Response:
        """One DynamoDB JSON request from a region's service: emulated if it touches an MRSC table."""
        op = headers.get("x-amz-target", "").rpartition(".")[2]
        scope = _SCOPE.search(headers.get("authorization", ""))
        try:
            if scope is None:
                raise Refused(400, "MissingAuthenticationTokenException", "sign the request (SigV4): its scope names the calling region")
            request = json.loads(body or b"{}")
            named = _tables_named(request) & set(self.tables)
            if not named:
                return self._execute(headers, body)
            if op not in ITEM_OPS:
                raise Refused(400, "ValidationException", f"{op} is not supported on the MRSC table(s) {sorted(named)} "
                                                          "(this emulation orders single-item operations)")
            table = self.tables[request["TableName"]]
            region = scope.group(1)
            if op == "GetItem":
                if not request.get("ConsistentRead"):
                    return self._execute(headers, body)  # eventually consistent: the local replica, as on AWS
                return self._strong(table, region, _key(table, request), headers, body, write=False)
            return self._strong(table, region, _key(table, request), headers, body, write=True)
        except Refused as refused:
            if refused.code in _COUNTED:
                self._count(_COUNTED[refused.code])
            return refused.response()

    def _strong(self, table: MrscTable, region: str, key: dict[str, Any], headers: dict[str, str], body: bytes, *, write: bool) -> Response:
        kid = _kid(key)
        item = self._item(table.name, kid)
        self._enter(item, region, write=write)
        try:
            reachable = self._reachable(table, region)
            self._catch_up(table, region, kid, key, item, reachable)
            status, out_headers, out = self._execute(headers, body)
            if write and status == 200:  # a refused condition changed nothing
                self._replicate(table, region, kid, key, item, reachable)
            self._count("writes" if write else "strong_reads")
            return status, out_headers, out
        finally:
            item.writer = None
            item.lock.release()

    def _count(self, what: str) -> None:
        with self._mutex:
            self.counts[what] += 1

    # -- ordering --------------------------------------------------------------------------------------
    def _item(self, table: str, kid: str) -> _Item:
        with self._mutex:
            return self._items.setdefault((table, kid), _Item())

    @staticmethod
    def _enter(item: _Item, region: str, *, write: bool) -> None:
        """Take the item's turn. A write that meets another region's write in flight is refused at once
        (ReplicatedWriteConflictException); reads, and writes from the same region, wait."""
        if not item.lock.acquire(blocking=False):
            if write and item.writer not in (None, region):
                raise Refused(400, "ReplicatedWriteConflictException",
                              f"the item is being modified by a request in another Region ({item.writer})")
            item.lock.acquire()
        item.writer = region if write else None

    def _reachable(self, table: MrscTable, region: str) -> set[str]:
        """The members ``region`` reaches now (itself included); a majority, or ServiceUnavailable."""
        if region not in table.replicas:
            raise Refused(400, "ResourceNotFoundException", f"{region} holds no replica of {table.name}")
        reachable = {m for m in table.members if m == region or self.linked(region, m)}
        if len(reachable) < table.majority:
            raise Refused(503, "ServiceUnavailable", f"{region} cannot reach a majority of the MRSC set of {table.name} "
                                                     f"({len(reachable)} of {len(table.members)}): strong reads and writes are "
                                                     "unavailable here until it can")
        return reachable

    # -- replicas --------------------------------------------------------------------------------------
    def client(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = self._client_of(region)
        return self._clients[region]

    def _execute(self, headers: dict[str, str], body: bytes) -> Response:
        """The request itself, on the replica of the region it is signed for (moto reads the same scope)."""
        resp = self.http.post(self.endpoint + "/", content=body, headers={k: v for k, v in headers.items() if k in _FORWARDED})
        return resp.status_code, {k: v for k, v in resp.headers.items() if k.lower() in _RETURNED}, resp.content

    def _read(self, table: MrscTable, member: str, key: dict[str, Any], item: _Item) -> dict[str, Any] | None:
        if member == table.witness:
            return item.witness_image
        found: dict[str, Any] | None = self.client(member).get_item(TableName=table.name, Key=key, ConsistentRead=True).get("Item")
        return found

    def _store(self, table: MrscTable, member: str, key: dict[str, Any], image: dict[str, Any] | None, item: _Item) -> None:
        if member == table.witness:
            item.witness_image = image
        elif image is None:
            self.client(member).delete_item(TableName=table.name, Key=key)
        else:
            self.client(member).put_item(TableName=table.name, Item=image)

    def _replicate(self, table: MrscTable, region: str, kid: str, key: dict[str, Any], item: _Item, reachable: set[str]) -> None:
        """The write's result, copied synchronously to every reachable member; the rest are stale. Executed
        here but held by fewer than a majority (a replica failed to take it): InternalServerError, an
        outcome the caller cannot know, as AWS's 500."""
        image = self._read(table, region, key, item)
        holders = {region}
        for member in reachable - {region}:
            try:
                self._store(table, member, key, image, item)
                holders.add(member)
            except (BotoCoreError, ClientError):
                continue  # stale: caught up later
        self._held_by(table, kid, key, item, frozenset(holders))
        if len(holders) < table.majority:
            raise Refused(500, "InternalServerError", f"the write executed in {region} reached {len(holders)} of "
                                                      f"{len(table.members)} members of the MRSC set; retry")

    def _held_by(self, table: MrscTable, kid: str, key: dict[str, Any], item: _Item, holders: frozenset[str]) -> None:
        item.holders = holders
        with self._mutex:
            for replica in table.replicas:
                stale = self._stale.setdefault((table.name, replica), {})
                if replica in holders:
                    stale.pop(kid, None)
                else:
                    stale[kid] = key

    def _catch_up(self, table: MrscTable, region: str, kid: str, key: dict[str, Any], item: _Item, reachable: set[str]) -> None:
        """Before ``region`` serves the item: copy its latest version from a reachable holder if it lacks it.
        Any majority holds a member of the last write's majority, so a holder is reachable."""
        if item.holders is None or region in item.holders:
            return
        source = next(iter(sorted(item.holders & reachable, key=lambda m: m == table.witness)), None)
        if source is None:
            raise Refused(503, "ServiceUnavailable", f"no member {region} reaches holds the latest version of this item")
        self._store(table, region, key, self._read(table, source, key, item), item)
        self._held_by(table, kid, key, item, item.holders | {region})
        self._count("caught_up")

    def _catch_up_loop(self) -> None:
        """A replica back from a partition or a failure is brought up to date without waiting for traffic."""
        while not self._stop.wait(self.catch_up_every):
            with self._mutex:
                pending = [(t, r, dict(keys)) for (t, r), keys in self._stale.items() if keys]
            for table_name, region, keys in pending:
                table = self.tables[table_name]
                for kid, key in keys.items():
                    item = self._item(table_name, kid)
                    with item.lock:
                        try:
                            self._catch_up(table, region, kid, key, item, self._reachable(table, region))
                        except (Refused, BotoCoreError, ClientError):
                            break  # not back yet (or moto not answering): the next pass tries again


def _tables_named(request: dict[str, Any]) -> set[str]:
    """Every table a request names: its TableName, a batch's RequestItems, a transaction's items."""
    named = {str(request["TableName"])} if "TableName" in request else set()
    named |= set(request.get("RequestItems") or {})
    for entry in request.get("TransactItems") or ():
        named |= {str(action["TableName"]) for action in entry.values() if isinstance(action, dict) and "TableName" in action}
    return named


def _key(table: MrscTable, request: dict[str, Any]) -> dict[str, Any]:
    source = request["Item"] if "Item" in request else request.get("Key") or {}
    missing = [k for k in table.key_names if k not in source]
    if missing:
        raise Refused(400, "ValidationException", f"the provided key element does not match the schema of {table.name}: {missing} missing")
    return {k: source[k] for k in table.key_names}


def _kid(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as botocore's connection pool expects."""

    protocol_version = "HTTP/1.1"
    server: Any

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, headers, out = self.server.emulator.handle({k.lower(): v for k, v in self.headers.items()}, body)
        except Exception as exc:  # noqa: BLE001 - answered as DynamoDB answers its own faults
            status, headers, out = Refused(500, "InternalServerError", f"MRSC emulation: {type(exc).__name__}: {exc}").response()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's signature
        """Quiet: the supervisor's log is for events, not requests."""

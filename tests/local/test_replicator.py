"""The replication emulator against a real moto server: LWW for every item kind, and stream gaps found,
reported and repaired (never a silent stall)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from meridian.store import from_item, to_item
from meridian.topology import Topology, load_topology
from meridian_local import moto_server
from meridian_local.applier import NO_RETRIES, Applied
from meridian_local.replicator import Cursor, Replicator

pytestmark = pytest.mark.slow

A, B = "eu-west-1", "eu-central-1"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = moto_server.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield url
    proc.kill()
    proc.wait(10)


class Env:
    """Two regions of one zone, their tables (each test gets its own stack name, so its own tables)."""

    def __init__(self, endpoint: str, stack: str) -> None:
        self.endpoint = endpoint
        self.topology: Topology = load_topology({"regions": [A, B], "residencyZones": {"eu": [A, B]}}, stack=stack)
        self.applied = Applied(endpoint=endpoint)
        for logical in ("orders", "idempotency", "conflicts", "directory"):
            zone = "eu" if logical != "directory" else self.topology.global_zone.name
            name = self.topology.table_name(logical, zone)
            spec = self.topology.table(logical)
            keys = [{"AttributeName": spec.hash_key.name, "KeyType": "HASH"}]
            if spec.range_key:
                keys.append({"AttributeName": spec.range_key.name, "KeyType": "RANGE"})
            for region in (A, B):
                self.client(region).create_table(
                    TableName=name, KeySchema=keys, BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[{"AttributeName": k.name, "AttributeType": k.type} for k in spec.key_attributes() if k.name in {x["AttributeName"] for x in keys}],
                    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
            self.applied.tables[name] = [A, B]
            self.applied.keys[name] = (spec.hash_key.name, spec.range_key.name if spec.range_key else None)
        self.replicator = Replicator(self.applied, self.topology, lag=0.02, max_poll=0.1, verify_interval=0.2)

    def name(self, logical: str) -> str:
        return self.topology.table_name(logical, "eu" if logical != "directory" else self.topology.global_zone.name)

    def client(self, region: str) -> Any:
        return boto3.client("dynamodb", region_name=region, endpoint_url=self.endpoint, config=NO_RETRIES,
                            aws_access_key_id="t", aws_secret_access_key="t")

    def get(self, region: str, logical: str, key: dict[str, Any]) -> dict[str, Any] | None:
        item = self.client(region).get_item(TableName=self.name(logical), Key=to_item(key)).get("Item")
        return from_item(item) if item else None

    def until(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"not reached in {timeout} s; replicator status: {self.replicator.status()}")


@pytest.fixture
def env(endpoint: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    e = Env(endpoint, stack="r" + str(abs(hash(request.node.name)) % 10**8))
    yield e
    e.replicator.stop()


@pytest.fixture
def plain_env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    """On moto's own server (the local run's, meridian_local.moto_main, runs transactions without moto's table swap)."""
    proc, url = moto_server.start(tmp_path / "moto.log", plain=True)
    e = Env(url, stack="p" + str(abs(hash(request.node.name)) % 10**8))
    yield e
    e.replicator.stop()
    proc.kill()
    proc.wait(10)


def marker(version: str, region: str, **extra: Any) -> dict[str, Any]:
    return {"key": "usr_x#k1", "order_id": "ord_1", "request_hash": "h", "version": version, "origin_region": region, **extra}


class TestLastWriterWinsForEveryKind:
    @pytest.mark.parametrize("logical", ["idempotency", "orders", "directory"])
    def test_replicas_written_on_both_sides_converge(self, env: Env, logical: str) -> None:
        """Both regions wrote the item; each receives the other's version. The higher (hlc, region) wins in
        both replicas — an unconditional put would swap them and leave the replicas diverged for good."""
        key = {"idempotency": {"key": "usr_x#k1"}, "orders": {"user_id": "usr_x", "order_id": "ord_1"},
               "directory": {"user_id": "usr_x"}}[logical]
        low, high = f"{int(time.time() * 1000):013d}.000000@{A}", f"{int(time.time() * 1000) + 1:013d}.000000@{B}"
        env.client(A).put_item(TableName=env.name(logical), Item=to_item({**key, "version": low, "origin_region": A, "side": "a"}))
        env.client(B).put_item(TableName=env.name(logical), Item=to_item({**key, "version": high, "origin_region": B, "side": "b"}))
        env.replicator.start()
        env.until(lambda: sum(s.delivered for s in env.replicator.stats.values()) >= 2 and env.replicator.status()["pending"] == 0)
        assert env.get(A, logical, key) == env.get(B, logical, key)
        assert (env.get(A, logical, key) or {})["version"] == high

    def test_same_order_executed_in_two_regions_is_merged_not_a_conflict(self, env: Env) -> None:
        """The same request (same request_hash) executed on both sides of a partition: one order, the LWW
        winner in both replicas, counted as a merged duplicate and not recorded as a conflict."""
        key = {"user_id": "usr_x", "order_id": "ord_Z1"}
        for i, region in enumerate((A, B)):
            version = f"{int(time.time() * 1000) + i:013d}.000000@{region}"
            env.client(region).put_item(TableName=env.name("orders"), Item=to_item(
                {**key, "item": "lamp", "qty": 1, "request_hash": "same", "idempotency_key": "k", "created_region": region,
                 "version": version, "origin_region": region}))
        env.replicator.start()
        env.until(lambda: env.replicator.duplicates_merged >= 2 and env.replicator.status()["pending"] == 0)
        assert env.get(A, "orders", key) == env.get(B, "orders", key)
        assert env.replicator.conflicts_recorded == 0
        assert env.client(A).scan(TableName=env.name("conflicts"))["Items"] == []


class TestTypes:
    def test_a_replica_gets_the_item_with_its_types(self, env: Env) -> None:
        """A string set stays a string set (the strong keys' stock item adds reservation ids to one: a list
        there made the next owner's ADD fail after a handover)."""
        table = env.name("idempotency")
        env.replicator.start()
        item = {**to_item(marker("0000000000001.000000@" + A, A, key="typed")), "ids": {"SS": ["a", "b"]}, "n": {"N": "3"}}
        env.client(A).put_item(TableName=table, Item=item)
        env.until(lambda: env.get(B, "idempotency", {"key": "typed"}) is not None)
        got = env.client(B).get_item(TableName=table, Key={"key": {"S": "typed"}})["Item"]
        assert got["ids"] == {"SS": ["a", "b"]} and got["n"] == {"N": "3"}
        env.client(B).update_item(TableName=table, Key={"key": {"S": "typed"}}, UpdateExpression="ADD ids :c",
                                  ExpressionAttributeValues={":c": {"SS": ["c"]}})


class TestStreamGaps:
    def test_cancelled_transaction_stall_is_reported_and_repaired(self, plain_env: Env) -> None:
        """moto alone swaps the stream shard when a transaction is cancelled: the emulator reports the stale
        iterator as a gap (status and errors) and the writes after it still replicate."""
        env = plain_env
        table = env.name("idempotency")
        env.replicator.start()
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000001.000000@" + A, A, key="before")))
        env.until(lambda: env.get(B, "idempotency", {"key": "before"}) is not None)
        with pytest.raises(ClientError, match="TransactionCanceled"):
            env.client(A).transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": {"key": {"S": "before"}},
                                                                       "ConditionExpression": "attribute_not_exists(#k)",
                                                                       "ExpressionAttributeNames": {"#k": "key"}}}])
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000002.000000@" + A, A, key="after")))
        env.until(lambda: env.get(B, "idempotency", {"key": "after"}) is not None)
        status = env.replicator.status()
        assert status["gaps"] >= 1 and status["gap_events"][0]["kind"] == "iterator_stale"
        assert status["gap_events"][0]["table"] == table and status["gap_events"][0]["region"] == A
        assert any("GAP" in e for e in env.replicator.errors)

    def test_rewritten_history_is_reported_and_replication_continues(self, env: Env) -> None:
        """The record last read is no longer the one in the shard (a rollback erased it and another write took its
        sequence number): reported as history_rewritten, the cursor moves to the shard's end, replication goes on."""
        table = env.name("idempotency")
        env.replicator.start()
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000001.000000@" + A, A, key="one")))
        env.until(lambda: env.get(B, "idempotency", {"key": "one"}) is not None)
        cursor = env.replicator.cursors[(table, A)]
        cursor.last_event = "an-event-the-shard-no-longer-has"
        env.until(lambda: any(g.kind == "history_rewritten" for g in env.replicator.gaps))
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000002.000000@" + A, A, key="two")))
        env.until(lambda: env.get(B, "idempotency", {"key": "two"}) is not None)

    def test_shard_gone_is_reported(self, env: Env) -> None:
        table = env.name("idempotency")
        env.replicator.start()
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000001.000000@" + A, A, key="one")))
        env.until(lambda: env.get(B, "idempotency", {"key": "one"}) is not None)
        env.replicator.cursors[(table, A)].shard_id = "shardId-that-closed"
        env.until(lambda: any(g.kind == "shard_gone" for g in env.replicator.gaps))
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000002.000000@" + A, A, key="two")))
        env.until(lambda: env.get(B, "idempotency", {"key": "two"}) is not None)

    def test_expired_iterator_is_renewed_after_the_last_record(self, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        """An expired iterator is renewed after the last record read: counted, not a gap, nothing skipped or lost."""
        table = env.name("idempotency")
        env.replicator.start()
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000001.000000@" + A, A, key="one")))
        env.until(lambda: env.get(B, "idempotency", {"key": "one"}) is not None)
        original = env.replicator._records
        expired: list[str] = []

        def records(cursor: Cursor, iterator: str, limit: int = 1000) -> Any:
            if cursor.table == table and cursor.region == A and not expired:
                expired.append(iterator)
                raise ClientError({"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}}, "GetRecords")
            return original(cursor, iterator, limit)

        monkeypatch.setattr(env.replicator, "_records", records)
        env.until(lambda: env.replicator.iterator_renewals == 1)
        env.client(A).put_item(TableName=table, Item=to_item(marker("0000000000002.000000@" + A, A, key="two")))
        env.until(lambda: env.get(B, "idempotency", {"key": "two"}) is not None)
        assert env.replicator.gaps == []

    def test_concurrent_writers_are_no_gap(self, env: Env) -> None:
        """8 writers at once (moto then numbers some records alike): every item replicates, and no gap is reported."""
        from concurrent.futures import ThreadPoolExecutor

        table = env.name("idempotency")
        env.replicator.start()

        def write(w: int) -> None:
            client = env.client(A)
            for i in range(25):
                client.put_item(TableName=table, Item=to_item(marker(f"{i + 1:013d}.{w:06d}@{A}", A, key=f"w{w}-{i}")))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(8)))
        env.until(lambda: len(env.client(B).scan(TableName=table)["Items"]) == 200, timeout=20)
        assert env.replicator.gaps == [], [g.to_json() for g in env.replicator.gaps]

    def test_resync_repairs_a_replica_from_the_others(self, env: Env) -> None:
        """An item a replica lost (here: present only in B, stamped as A's write, so no stream carries it) is
        copied back by the resync a gap starts."""
        key = {"key": "lost-in-a"}
        env.client(B).put_item(TableName=env.name("idempotency"), Item=to_item(marker("0000000000005.000000@" + A, A, **key)))
        env.replicator.start()
        env.replicator.resync(env.name("idempotency"))
        env.until(lambda: env.get(A, "idempotency", key) is not None)
        assert env.get(A, "idempotency", key) == env.get(B, "idempotency", key)


class TestCursor:
    @staticmethod
    def records(*seqs: int) -> list[dict[str, Any]]:
        return [{"eventID": f"e{s}", "dynamodb": {"SequenceNumber": str(s)}} for s in seqs]

    def test_consecutive_sequence_numbers_are_no_gap(self) -> None:
        cursor = Cursor("t", A)
        assert cursor.advance(self.records(10, 11, 12)) == [] and cursor.last_seq == 12 and cursor.last_event == "e12"

    def test_skip_and_reset_are_gaps(self) -> None:
        cursor = Cursor("t", A)
        cursor.at_start("s", 1000)
        cursor.advance(self.records(1000))
        assert [k for k, _ in cursor.advance(self.records(1004))] == ["sequence_skipped"] and cursor.last_seq == 1004
        assert [k for k, _ in cursor.advance(self.records(10))] == ["sequence_reset"] and cursor.last_seq == 10

    def test_moto_concurrent_numbering_is_no_gap(self) -> None:
        """moto numbers concurrent writes from a length read before appending: 10, 10, 12 (or 11, 10) are
        three records in order, not a reset and a skip. The cursor counts positions, not labels."""
        cursor = Cursor("t", A)
        cursor.at_start("s", 10)
        assert cursor.advance(self.records(10, 10, 12)) == [] and cursor.last_seq == 12
        assert cursor.advance(self.records(13, 12, 15)) == [] and cursor.last_seq == 15
        assert cursor.last_event == "e15"

    def test_non_contiguous_streams_only_check_order(self) -> None:
        """AWS numbers records increasingly but not consecutively: there only a reset is a gap."""
        cursor = Cursor("t", A)
        assert cursor.advance(self.records(10, 50, 90), contiguous=False) == []
        assert [k for k, _ in cursor.advance(self.records(20), contiguous=False)] == ["sequence_reset"]


class TestDrain:
    """``drain`` is a barrier on what was written before it, not a look at a queue that may be empty only
    because the poller has not read the stream yet (the guess a busy machine broke)."""

    def orders(self, n: int, region: str) -> list[dict[str, Any]]:
        at = int(time.time() * 1000)
        return [{"user_id": "usr_d", "order_id": f"ord_{i}", "version": f"{at:013d}.{i:06d}@{region}", "origin_region": region}
                for i in range(n)]

    def test_waits_for_writes_its_poller_has_not_read(self, endpoint: str) -> None:
        env = Env(endpoint, stack="drain1")
        env.replicator = Replicator(env.applied, env.topology, lag=0.3, max_poll=5.0, verify_interval=60)
        env.replicator.start()
        try:
            time.sleep(2.5)  # every stream idle and backed off to polling every 1.6 s or more
            items = self.orders(20, A)
            for item in items:
                env.client(A).put_item(TableName=env.name("orders"), Item=to_item(item))
            result = env.replicator.drain(timeout=15)
            assert result["drained"], result
            missing = [i["order_id"] for i in items if env.get(B, "orders", {"user_id": "usr_d", "order_id": i["order_id"]}) is None]
            assert missing == []
        finally:
            env.replicator.stop()

    def test_held_deliveries_are_not_drained(self, endpoint: str) -> None:
        env = Env(endpoint, stack="drain2")
        env.replicator.partitions.add(frozenset((A, B)))
        env.replicator.start()
        try:
            env.client(A).put_item(TableName=env.name("orders"), Item=to_item(self.orders(1, A)[0]))
            result = env.replicator.drain(timeout=1.5)
            assert not result["drained"] and result["held"] == 1, result
            env.replicator.partitions.clear()
            assert env.replicator.drain(timeout=15)["drained"]
            assert env.get(B, "orders", {"user_id": "usr_d", "order_id": "ord_0"}) is not None
        finally:
            env.replicator.stop()

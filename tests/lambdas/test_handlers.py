"""The three Lambdas with real event shapes: moto for DynamoDB, botocore's Stubber for Global Accelerator and
CloudWatch (each request checked against the real service model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from infra.components.functions import lambda_environment
from infra.render import render_values
from lambdas import runtime
from meridian.evacuation import (
    AUTOMATIC,
    DIAL_METRIC,
    EVACUATED_METRIC,
    EVACUATION_NAMESPACE,
    REFUSED_METRIC,
    Dials,
    EvacuationRecord,
    Evacuations,
    Records,
    plan_evacuation,
    should_restore,
)
from meridian.hlc import Timestamp, Version
from meridian.topology import load_topology

CONFIG = {"regions": ["us-east-1", "eu-west-1", "eu-central-1"], "residencyZones": {"eu": ["eu-west-1", "eu-central-1"]}}
TOPOLOGY = load_topology(CONFIG, stack="fn")


@dataclass
class FakeContext:
    function_name: str = "meridian-fn-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:meridian-fn-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment the program gives the functions in eu-west-1 (Powertools' service name included)."""
    for name, value in lambda_environment(TOPOLOGY, "eu-west-1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    runtime.topology.cache_clear()
    runtime.client.cache_clear()
    yield
    runtime.topology.cache_clear()
    runtime.client.cache_clear()


def v(wall: int, region: str) -> str:
    return Version(Timestamp(wall), region).encode()


class TestReplicationCanary:
    def test_heartbeats_and_emf(self, env: None, make_tables: Any, capsys: pytest.CaptureFixture[str]) -> None:
        """eu-west-1 writes a heartbeat in each of its tables and reads eu-central-1's; metrics go out as EMF."""
        from lambdas.replication_canary import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            client = boto3.client("dynamodb", region_name="eu-west-1")
            # A heartbeat eu-central-1 wrote (as replication would have delivered it) 3 s ago.
            import time

            written = int(time.time() * 1000) - 3000
            client.put_item(TableName="meridian-fn-eu-users", Item={"user_id": {"S": "__meridian_heartbeat__#eu-central-1"},
                            "written_at": {"N": str(written)}, "origin_region": {"S": "eu-central-1"}})
            handler.SEEN.clear()
            out = handler.lambda_handler({"version": "0", "source": "aws.events", "detail-type": "Scheduled Event",
                                          "resources": ["arn:aws:events:eu-west-1:123456789012:rule/x"], "detail": {}}, FakeContext())
            assert 2.5 < out["worst_staleness_s"]["eu-central-1"] < 30
            own = client.get_item(TableName="meridian-fn-eu-orders",
                                  Key={"user_id": {"S": "__meridian_heartbeat__#eu-west-1"}, "order_id": {"S": "__heartbeat__"}})
            assert own["Item"]["origin_region"]["S"] == "eu-west-1"
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        names = {m["Name"] for e in emf for d in e["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
        assert {"HeartbeatStalenessSeconds", "ReplicationLagSeconds"} <= names
        # The worst staleness, without SourceRegion: the series the heartbeat alarm watches (Powertools adds `service`).
        alarm_series = [e for e in emf if e["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["ReceivingRegion", "service"]]]
        assert alarm_series and alarm_series[0]["ReceivingRegion"] == "eu-west-1" and alarm_series[0]["service"] == "meridian"


def stream_event(table: str, old: dict[str, Any], new: dict[str, Any], seq: str = "111") -> dict[str, Any]:
    ser = boto3.dynamodb.types.TypeSerializer()
    return {"Records": [{
        "eventID": "1", "eventName": "MODIFY", "eventVersion": "1.1", "eventSource": "aws:dynamodb", "awsRegion": "eu-west-1",
        "dynamodb": {"ApproximateCreationDateTime": 1.7e9, "Keys": {"user_id": {"S": new["user_id"]}},
                     "NewImage": {k: ser.serialize(x) for k, x in new.items()}, "OldImage": {k: ser.serialize(x) for k, x in old.items()},
                     "SequenceNumber": seq, "SizeBytes": 100, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "eventSourceARN": f"arn:aws:dynamodb:eu-west-1:123456789012:table/{table}/stream/2026-01-01T00:00:00.000",
    }]}


class TestConflictAuditor:
    def test_concurrent_overwrite_recorded_once(self, env: None, make_tables: Any) -> None:
        """A MODIFY from eu-central-1 replacing a version it had not seen is one conflict, even redelivered."""
        from lambdas.conflict_auditor import handler

        old = {"user_id": "u1", "name": "west", "version": v(100, "eu-west-1"), "origin_region": "eu-west-1"}
        new = {"user_id": "u1", "name": "central", "version": v(101, "eu-central-1"), "base": v(50, "eu-west-1"), "origin_region": "eu-central-1"}
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            event = stream_event("meridian-fn-eu-users", old, new)
            assert handler.lambda_handler(event, FakeContext()) == {"batchItemFailures": []}
            assert handler.lambda_handler(event, FakeContext()) == {"batchItemFailures": []}
            items = boto3.client("dynamodb", region_name="eu-west-1").scan(TableName="meridian-fn-eu-conflicts")["Items"]
            assert len(items) == 1
            item = items[0]
            assert item["winner_version"]["S"] == new["version"] and item["loser_version"]["S"] == old["version"]
            assert item["rule"]["S"] == "dynamodb-global-tables-lww" and item["item_key"]["S"] == "users#u1"

    def test_successor_and_local_writes_are_not_conflicts(self, env: None, make_tables: Any) -> None:
        from lambdas.conflict_auditor import handler

        old = {"user_id": "u1", "version": v(100, "eu-west-1"), "origin_region": "eu-west-1"}
        seen = {"user_id": "u1", "version": v(101, "eu-central-1"), "base": v(100, "eu-west-1"), "origin_region": "eu-central-1"}
        local = {"user_id": "u1", "version": v(102, "eu-west-1"), "origin_region": "eu-west-1"}
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            handler.lambda_handler(stream_event("meridian-fn-eu-users", old, seen), FakeContext())
            handler.lambda_handler(stream_event("meridian-fn-eu-users", old, local), FakeContext())
            assert boto3.client("dynamodb", region_name="eu-west-1").scan(TableName="meridian-fn-eu-conflicts")["Items"] == []

    def test_failure_reported_for_retry(self, env: None, make_tables: Any) -> None:
        """Without its conflicts table the record fails and is reported in batchItemFailures."""
        from lambdas.conflict_auditor import handler

        old = {"user_id": "u1", "version": v(100, "eu-west-1"), "origin_region": "eu-west-1"}
        new = {"user_id": "u1", "version": v(101, "eu-central-1"), "origin_region": "eu-central-1"}
        with mock_aws():
            assert handler.lambda_handler(stream_event("meridian-fn-eu-users", old, new, seq="42"), FakeContext()) == {
                "batchItemFailures": [{"itemIdentifier": "42"}]}


ACC = "arn:aws:globalaccelerator::123456789012:accelerator/1234abcd-abcd-1234-abcd-1234abcdefgh"
LISTENER = f"{ACC}/listener/0123abcd"


def ga_stub(dials: dict[str, float], stub: Stubber | None = None, client: Any = None) -> tuple[Any, Stubber]:
    """A Global Accelerator client whose next listing answers ``dials`` (checked against GA's real model)."""
    if client is None:
        client = boto3.client("globalaccelerator", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(client)
    assert stub is not None
    stub.add_response("list_accelerators", {"Accelerators": [{"AcceleratorArn": ACC, "Name": "meridian-fn"}]})
    stub.add_response("list_listeners", {"Listeners": [{"ListenerArn": LISTENER}]}, {"AcceleratorArn": ACC})
    stub.add_response("list_endpoint_groups", {"EndpointGroups": [
        {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{r}", "EndpointGroupRegion": r, "TrafficDialPercentage": d} for r, d in dials.items()
    ]}, {"ListenerArn": LISTENER})
    return client, stub


def dial_update(stub: Stubber, region: str, dial: float) -> None:
    stub.add_response("update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{region}", "TrafficDialPercentage": dial})


def alarm_event(state: str) -> dict[str, Any]:
    return {"source": "aws.cloudwatch", "alarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:meridian-fn-eu-west-1-evacuate",
            "accountId": "123456789012", "time": "2026-11-21T10:00:00.000+0000", "region": "eu-west-1",
            "alarmData": {"alarmName": "meridian-fn-eu-west-1-evacuate", "state": {"value": state, "reason": "test", "timestamp": "2026-11-21T10:00:00.000+0000"},
                          "previousState": {"value": "OK"}, "configuration": {"alarmRule": "ALARM(a) AND ALARM(b)"}}}


ALL_IN = {"us-east-1": 100, "eu-west-1": 100, "eu-central-1": 100}


def records(region: str = "eu-west-1") -> Records:
    """The evacuation records through ``region``'s replica of the directory table (moto)."""
    return Records(boto3.client("dynamodb", region_name=region), TOPOLOGY)


def evacuation_points(stdout: str) -> list[tuple[str, dict[str, str], float]]:
    """(metric, dimensions, value) of every Meridian/Evacuation EMF document printed."""
    out = []
    for line in stdout.splitlines():
        if '"CloudWatchMetrics"' not in line:
            continue
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            if directive["Namespace"] != EVACUATION_NAMESPACE:
                continue
            for metric in directive["Metrics"]:
                dims = {d: doc[d] for d in directive["Dimensions"][0]}
                out.append((metric["Name"], dims, float(doc[metric["Name"]][0] if isinstance(doc[metric["Name"]], list) else doc[metric["Name"]])))
    return out


EU_WEST = {"Region": "eu-west-1", "service": "meridian"}


class TestAutomaticEvacuation:
    """The composite alarm's action takes the region out of both entry points, record first."""

    def test_alarm_evacuates_both_entry_points(self, env: None, make_tables: Any, capsys: pytest.CaptureFixture[str]) -> None:
        """Record (who: the evacuator, why: the alarm), Evacuated=1 for Route 53, then the dial to 0 (GA's model checks it)."""
        from lambdas.evacuator import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            client, stub = ga_stub(ALL_IN)
            dial_update(stub, "eu-west-1", 0)
            with stub:
                out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), records=records(), now=1000.0)
            stub.assert_no_pending_responses()
            record = records().get("eu-west-1")
        assert out["allowed"] and out["action"] == "evacuate" and out["dial_to"] == 0 and out["evacuated"]
        assert record is not None and record.evacuated and record.automatic and record.at == 1000.0
        assert "meridian-fn-eu-west-1-evacuate" in record.reason
        assert (EVACUATED_METRIC, EU_WEST, 1.0) in evacuation_points(capsys.readouterr().out)

    def test_zone_unserved_on_route53_is_refused(self, env: None, make_tables: Any, capsys: pytest.CaptureFixture[str]) -> None:
        """eu-central-1 is evacuated by record (its dial still 100): evacuating eu-west-1 would leave zone eu
        out of the latency name. Refused: no record, no metric, no dial call."""
        from lambdas.evacuator import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            records().put(EvacuationRecord("eu-central-1", True, "manual:alice", "bad deploy", 900.0))
            client, stub = ga_stub(ALL_IN)
            with stub:
                out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), records=records(), now=1000.0)
            stub.assert_no_pending_responses()
            assert records().get("eu-west-1") is None
        assert not out["allowed"] and "'eu'" in out["reason"] and "latency name" in out["reason"]
        points = evacuation_points(capsys.readouterr().out)
        assert (REFUSED_METRIC, EU_WEST, 1.0) in points and not [p for p in points if p[0] == EVACUATED_METRIC]

    def test_zone_unserved_on_the_accelerator_is_refused(self, env: None, make_tables: Any) -> None:
        """eu-central-1's dial is 0: evacuating eu-west-1 would leave eu without a region on the accelerator."""
        from lambdas.evacuator import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            client, stub = ga_stub({**ALL_IN, "eu-central-1": 0})
            with stub:
                out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), records=records())
            assert records().get("eu-west-1") is None
        assert not out["allowed"] and "Global Accelerator" in out["reason"] and out["dial_to"] == 100

    def test_accelerator_api_down_still_evacuates_on_the_data_plane(self, env: None, make_tables: Any, capsys: pytest.CaptureFixture[str]) -> None:
        """us-west-2 does not answer: the record and the metric (the Route 53 path) still take the region out."""
        from lambdas.evacuator import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            client = boto3.client("globalaccelerator", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
            stub = Stubber(client)
            stub.add_client_error("list_accelerators", "ServiceUnavailableException", "us-west-2 is having a day", 503)
            with stub:
                out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), records=records())
            assert records().get("eu-west-1").evacuated  # type: ignore[union-attr]
        assert out["allowed"] and out["dial_to"] is None and "us-west-2" in out["dial_note"]
        assert (EVACUATED_METRIC, EU_WEST, 1.0) in evacuation_points(capsys.readouterr().out)

    def test_never_takes_over_a_manual_evacuation(self, env: None, make_tables: Any) -> None:
        """An operator evacuated first: the alarm keeps the operator's record (so the reconcile will not end it)."""
        from lambdas.evacuator import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            manual = EvacuationRecord("eu-west-1", True, "manual:alice", "region-wide DNS trouble", 900.0)
            records().put(manual)
            client, stub = ga_stub({**ALL_IN, "eu-west-1": 0})
            with stub:
                out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), records=records(), now=1000.0)
            assert records().get("eu-west-1") == manual
        assert out["allowed"] and out["by"] == "manual:alice"

    def test_ok_alarm_does_not_restore_at_once(self, env: None, make_tables: Any) -> None:
        from lambdas.evacuator import handler

        client, _ = ga_stub({})
        out = handler.handle(alarm_event("OK"), dials=Dials(client, "meridian-fn"), records=records())
        assert out["action"] == "none" and "cooling" in out["reason"]

    def test_unknown_event(self, env: None, make_tables: Any) -> None:
        from lambdas.evacuator import handler

        client, _ = ga_stub({})
        with pytest.raises(ValueError, match="unknown event"):
            handler.handle({"hello": 1}, dials=Dials(client, "meridian-fn"), records=records())


class TestReconcile:
    """Every minute: the record becomes the metric, the dial follows an evacuation, and only the evacuator's
    own evacuations end on their own."""

    def test_serving_region_publishes_zero_and_its_dial(self, env: None, make_tables: Any, capsys: pytest.CaptureFixture[str]) -> None:
        """No record: Evacuated=0 (the alarm stays OK, not INSUFFICIENT_DATA) and the dial for the dashboard."""
        from lambdas.evacuator import handler

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            client, stub = ga_stub(ALL_IN)
            with stub:
                out = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), records=records())
        assert out["action"] == "none" and not out["evacuated"]
        points = evacuation_points(capsys.readouterr().out)
        assert (EVACUATED_METRIC, EU_WEST, 0.0) in points and (DIAL_METRIC, EU_WEST, 100.0) in points

    def test_manual_evacuation_is_never_restored(self, env: None, make_tables: Any, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        """An operator's evacuation, the region's alarm OK for hours: the reconcile keeps it (Evacuated=1, dial 0)."""
        from lambdas.evacuator import handler

        monkeypatch.setattr(handler, "_alarm_state", lambda region: ("OK", 0.0))
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            records().put(EvacuationRecord("eu-west-1", True, "manual:alice", "data repair", 100.0))
            client, stub = ga_stub({**ALL_IN, "eu-west-1": 0})
            with stub:
                out = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), records=records(), now=100_000.0)
            stub.assert_no_pending_responses()
            assert records().get("eu-west-1").evacuated  # type: ignore[union-attr]
        assert out["action"] == "none" and "meridian restore eu-west-1" in out["reason"]
        assert (EVACUATED_METRIC, EU_WEST, 1.0) in evacuation_points(capsys.readouterr().out)

    def test_restores_its_own_evacuation_after_cooling(self, env: None, make_tables: Any, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
        from lambdas.evacuator import handler

        monkeypatch.setattr(handler, "_alarm_state", lambda region: ("OK", 1000.0))
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            records().put(EvacuationRecord("eu-west-1", True, AUTOMATIC, "alarm", 900.0))
            client, stub = ga_stub({**ALL_IN, "eu-west-1": 0})
            with stub:
                early = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), records=records(), now=1060.0)
            assert early["action"] == "none" and "cooling" in early["reason"] and early["evacuated"]
            client, stub = ga_stub({**ALL_IN, "eu-west-1": 0})
            ga_stub({**ALL_IN, "eu-west-1": 0}, stub, client)  # the restore reads the dials again
            dial_update(stub, "eu-west-1", 100)
            with stub:
                late = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), records=records(), now=1601.0)
            stub.assert_no_pending_responses()
            record = records().get("eu-west-1")
        assert late["action"] == "restore" and late["dial_to"] == 100 and not late["evacuated"]
        assert record is not None and not record.evacuated and record.restored_by == AUTOMATIC and record.by == AUTOMATIC
        assert evacuation_points(capsys.readouterr().out)[-1] == (EVACUATED_METRIC, EU_WEST, 0.0)

    def test_dial_follows_the_record(self, env: None, make_tables: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Evacuated while us-west-2 was down (dial still 100): the next reconcile sets it to 0."""
        from lambdas.evacuator import handler

        monkeypatch.setattr(handler, "_alarm_state", lambda region: ("ALARM", 900.0))
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            records().put(EvacuationRecord("eu-west-1", True, AUTOMATIC, "alarm", 900.0))
            client, stub = ga_stub(ALL_IN)
            dial_update(stub, "eu-west-1", 0)
            with stub:
                out = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), records=records(), now=1000.0)
            stub.assert_no_pending_responses()
        assert out["dial_from"] == 100 and out["dial_to"] == 0

    def test_restore_only_the_evacuation_it_read(self, env: None, make_tables: Any) -> None:
        """An operator re-evacuated between the reconcile's read and its write: the conditional write keeps theirs."""
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            read = EvacuationRecord("eu-west-1", True, AUTOMATIC, "alarm", 900.0)
            records().put(read)
            records().put(EvacuationRecord("eu-west-1", True, "manual:alice", "still bad", 950.0))
            published: list[tuple[str, str, float]] = []
            evacuations = Evacuations(TOPOLOGY, records=records(), dials=None, publish=lambda *p: published.append(p))
            change = evacuations.restore("eu-west-1", by=AUTOMATIC, only_if=read)
            assert records().get("eu-west-1").by == "manual:alice"  # type: ignore[union-attr]
        assert change.action == "none" and change.evacuated and published == []

    def test_alarm_state_is_read_from_the_composite_alarm(self, env: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """DescribeAlarms as CloudWatch's model takes it: the region's composite alarm, by name and type."""
        from datetime import UTC, datetime

        from lambdas.evacuator import handler

        cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(cloudwatch)
        stub.add_response("describe_alarms", {"CompositeAlarms": [{
            "AlarmName": "meridian-fn-eu-west-1-evacuate", "StateValue": "OK",
            "StateUpdatedTimestamp": datetime(2026, 11, 21, 10, 0, tzinfo=UTC)}]},
            {"AlarmNames": ["meridian-fn-eu-west-1-evacuate"], "AlarmTypes": ["CompositeAlarm"]})
        with monkeypatch.context() as patched, stub:
            patched.setattr(runtime, "client", lambda service, region=None: cloudwatch)
            state, since = handler._alarm_state("eu-west-1")
        assert state == "OK" and since == datetime(2026, 11, 21, 10, 0, tzinfo=UTC).timestamp()


class TestWithoutAccelerator:
    def test_latency_name_is_the_only_path(self, env: None, make_tables: Any) -> None:
        """A stack without Global Accelerator: the record and the metric, no dial, nothing to report about one."""
        topology = load_topology({**CONFIG, "globalAccelerator": False}, stack="fn")
        with mock_aws():
            make_tables(topology, "eu-west-1")
            published: list[tuple[str, str, float]] = []
            evacuations = Evacuations(topology, records=Records(boto3.client("dynamodb", region_name="eu-west-1"), topology),
                                      dials=None, publish=lambda *p: published.append(p))
            change = evacuations.evacuate("eu-west-1", by="manual:alice", reason="test", now=1.0)
        assert change.allowed and change.dial_to is None and change.dial_note == ""
        assert published == [(EVACUATED_METRIC, "eu-west-1", 1)]


class TestRecords:
    def test_round_trip_and_conditions(self, env: None, make_tables: Any) -> None:
        """A record reads back as written; `unless_evacuated` refuses to overwrite an evacuation."""
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            first = EvacuationRecord("eu-central-1", True, "manual:alice", "why", 1234.5)
            assert records().put(first) and records().get("eu-central-1") == first
            assert not records().put(EvacuationRecord("eu-central-1", True, AUTOMATIC, "alarm", 2000.0), unless_evacuated=True)
            restored = EvacuationRecord("eu-central-1", False, "manual:alice", "why", 1234.5, "manual:bob", 3000.0)
            assert records().put(restored, only_if=first) and records().get("eu-central-1") == restored
            assert set(records().all()) == {"eu-central-1"}
            item = boto3.client("dynamodb", region_name="eu-west-1").get_item(
                TableName="meridian-fn-directory", Key={"user_id": {"S": "__meridian_evacuation__#eu-central-1"}})["Item"]
        # Nothing the conflict auditor would read as a versioned write.
        assert "version" not in item and "origin_region" not in item


REGIONS = ["us-east-1", "eu-west-1", "eu-central-1"]


class TestEvacuationRules:
    @given(st.dictionaries(st.sampled_from(REGIONS), st.integers(0, 100), min_size=3),
           st.sets(st.sampled_from(REGIONS)), st.sampled_from(REGIONS))
    def test_never_leaves_a_zone_unserved_on_either_entry_point(self, dials: dict[str, int], evacuated: set[str], region: str) -> None:
        """Property: allowed exactly when every zone of the region keeps another region that is not evacuated
        (Route 53) and, among those, one whose dial is above 0 (Global Accelerator)."""
        allowed, _ = plan_evacuation(TOPOLOGY, region, dials, evacuated=evacuated)
        out = evacuated | {region}
        served = all(
            any(r not in out for r in z.regions) and any(r not in out and dials[r] > 0 for r in z.regions)
            for z in TOPOLOGY.zones_of(region)
        )
        assert allowed == served

    def test_without_an_accelerator_only_route53_counts(self) -> None:
        assert plan_evacuation(TOPOLOGY, "eu-west-1", None, evacuated={"us-east-1"})[0]
        assert not plan_evacuation(TOPOLOGY, "eu-west-1", None, evacuated={"eu-central-1"})[0]

    @given(st.sampled_from(["OK", "ALARM", "INSUFFICIENT_DATA"]), st.floats(0, 5000), st.floats(0, 5000))
    def test_hysteresis(self, state: str, since: float, elapsed: float) -> None:
        ok, _ = should_restore(alarm_state=state, ok_since_s=since, now_s=since + elapsed, cooling_s=600)
        assert ok == (state == "OK" and elapsed >= 600)


class TestRolesMatchCalls:
    """Each function's IAM role (infra.layout) allows exactly the API calls its code makes."""

    @staticmethod
    def record(client: Any, calls: set[str]) -> None:
        prefix = {"dynamodb": "dynamodb", "globalaccelerator": "globalaccelerator", "cloudwatch": "cloudwatch"}[client.meta.service_model.service_name]
        client.meta.events.register("before-call.*.*", lambda model, **_: calls.add(f"{prefix}:{model.name}"))

    def test_canary_and_auditor(self, env: None, make_tables: Any) -> None:
        from infra import layout
        from lambdas.conflict_auditor import handler as auditor
        from lambdas.replication_canary import handler as canary

        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            calls: set[str] = set()
            self.record(runtime.client("dynamodb"), calls)
            canary.lambda_handler({"source": "aws.events"}, FakeContext())
            assert calls == set(layout.CANARY_TABLE_ACTIONS)
            calls.clear()
            old = {"user_id": "u1", "version": v(100, "eu-west-1"), "origin_region": "eu-west-1"}
            new = {"user_id": "u1", "version": v(101, "eu-central-1"), "origin_region": "eu-central-1"}
            auditor.lambda_handler(stream_event("meridian-fn-eu-users", old, new), FakeContext())
            # Reading the stream is Lambda's event source mapping, done with the role's stream actions.
            assert calls == set(layout.AUDITOR_TABLE_ACTIONS)

    def test_evacuator(self, env: None, make_tables: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Evacuation, reconcile and restore together call exactly what the role allows (the metric goes out as
        EMF through the log group: no PutMetricData)."""
        from datetime import UTC, datetime

        from infra import layout
        from lambdas.evacuator import handler

        calls: set[str] = set()
        with mock_aws():
            make_tables(TOPOLOGY, "eu-west-1")
            dynamodb = runtime.client("dynamodb")
            self.record(dynamodb, calls)
            client, stub = ga_stub(ALL_IN)
            dial_update(stub, "eu-west-1", 0)
            for _ in range(2):  # the reconcile, then its restore, read the dials
                ga_stub({**ALL_IN, "eu-west-1": 0}, stub, client)
            dial_update(stub, "eu-west-1", 100)
            self.record(client, calls)
            cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
            cw_stub = Stubber(cloudwatch)
            cw_stub.add_response("describe_alarms", {"CompositeAlarms": [{"StateValue": "OK", "StateUpdatedTimestamp": datetime(2020, 1, 1, tzinfo=UTC)}]})
            self.record(cloudwatch, calls)
            with monkeypatch.context() as patched, stub, cw_stub:
                patched.setattr(runtime, "client", lambda service, region=None: {"cloudwatch": cloudwatch, "dynamodb": dynamodb}[service])
                t0 = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
                first = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), now=t0)
                out = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), now=t0 + 10_000)
        assert first["action"] == "evacuate" and out["action"] == "restore", (first, out)
        allowed = (set(layout.EVACUATOR_ACCELERATOR_ACTIONS) | set(layout.EVACUATOR_DISCOVERY_ACTIONS)
                   | set(layout.EVACUATOR_RECORD_ACTIONS))
        assert calls == allowed


def emitted_series(stdout: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    """(namespace, metric) -> the dimension sets (name -> value) of every EMF document printed."""
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in stdout.splitlines():
        if '"CloudWatchMetrics"' not in line:
            continue
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                for dims in directive["Dimensions"]:
                    out.setdefault((directive["Namespace"], metric["Name"]), []).append({d: doc[d] for d in dims})
    return out


class TestAlarmedMetrics:
    """Every alarm on a metric the Lambdas publish watches a series they actually emit: same namespace, name
    and exactly the same dimensions (one missing or extra and CloudWatch has no data for the alarm)."""

    def test_alarm_dimensions_equal_emitted_dimensions(
        self, env: None, make_tables: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import time

        from lambdas.conflict_auditor import handler as auditor
        from lambdas.evacuator import handler as evacuator
        from lambdas.replication_canary import handler as canary

        region = "eu-west-1"
        plan = render_values(CONFIG, stack="fn")
        assert plan.topology == TOPOLOGY
        functions = {r.inputs["name"]: r for r in plan.in_region(region) if r.type == "aws:lambda/function:Function"}
        capsys.readouterr()

        def deployed_env(function: str) -> None:
            for name, value in functions[f"meridian-fn-{function}"].inputs["environment"]["variables"].items():
                monkeypatch.setenv(name, value)

        with mock_aws():
            make_tables(TOPOLOGY, region)
            client = boto3.client("dynamodb", region_name=region)
            client.put_item(TableName="meridian-fn-eu-users", Item={"user_id": {"S": "__meridian_heartbeat__#eu-central-1"},
                            "written_at": {"N": str(int(time.time() * 1000) - 3000)}, "origin_region": {"S": "eu-central-1"}})
            deployed_env("replication-canary")
            canary.SEEN.clear()
            canary.lambda_handler({"source": "aws.events"}, FakeContext())
            deployed_env("conflict-auditor")
            old = {"user_id": "u1", "version": v(100, region), "origin_region": region}
            new = {"user_id": "u1", "version": v(101, "eu-central-1"), "origin_region": "eu-central-1"}
            auditor.lambda_handler(stream_event("meridian-fn-eu-users", old, new), FakeContext())
            deployed_env("evacuator")
            client, stub = ga_stub(ALL_IN)
            dial_update(stub, "eu-west-1", 0)
            with stub:
                evacuator.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"), records=records())
        emitted = emitted_series(capsys.readouterr().out)
        assert ("Meridian/Replication", "Conflicts") in emitted and ("Meridian/Evacuation", "Evacuated") in emitted

        checked = []
        for alarm in plan.in_region(region):
            if alarm.type != "aws:cloudwatch/metricAlarm:MetricAlarm":
                continue
            watched = [(alarm.inputs.get("namespace"), alarm.inputs.get("metricName"), alarm.inputs.get("dimensions") or {})]
            watched += [(q["metric"]["namespace"], q["metric"]["metricName"], q["metric"].get("dimensions") or {})
                        for q in alarm.inputs.get("metricQueries") or [] if q.get("metric")]
            for namespace, metric, dims in watched:
                if namespace is None or namespace.startswith("AWS/"):
                    continue
                assert (namespace, metric) in emitted, f"{alarm.name} watches {namespace}/{metric}, which no Lambda emits"
                assert dims in emitted[(namespace, metric)], f"{alarm.name}: {dims} not among emitted {emitted[(namespace, metric)]}"
                checked.append(alarm.name)
        assert {"eu-west-1-heartbeat-stale", "eu-west-1-evacuated", "eu-west-1-conflict-rate"} <= set(checked)

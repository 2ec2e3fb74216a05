"""The three Lambdas with real event shapes: moto for DynamoDB, botocore's Stubber for Global Accelerator."""

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
from meridian.evacuation import Dials, plan_evacuation, should_restore
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


def ga_stub(dials: dict[str, float]) -> tuple[Any, Stubber]:
    client = boto3.client("globalaccelerator", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response("list_accelerators", {"Accelerators": [{"AcceleratorArn": ACC, "Name": "meridian-fn"}]})
    stub.add_response("list_listeners", {"Listeners": [{"ListenerArn": LISTENER}]}, {"AcceleratorArn": ACC})
    stub.add_response("list_endpoint_groups", {"EndpointGroups": [
        {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{r}", "EndpointGroupRegion": r, "TrafficDialPercentage": d} for r, d in dials.items()
    ]}, {"ListenerArn": LISTENER})
    return client, stub


def alarm_event(state: str) -> dict[str, Any]:
    return {"source": "aws.cloudwatch", "alarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:meridian-fn-eu-west-1-evacuate",
            "accountId": "123456789012", "time": "2026-11-21T10:00:00.000+0000", "region": "eu-west-1",
            "alarmData": {"alarmName": "meridian-fn-eu-west-1-evacuate", "state": {"value": state, "reason": "test", "timestamp": "2026-11-21T10:00:00.000+0000"},
                          "previousState": {"value": "OK"}, "configuration": {"alarmRule": "ALARM(a) AND ALARM(b)"}}}


class TestEvacuator:
    def test_alarm_sets_dial_to_zero(self, env: None, make_tables: Any) -> None:
        """The request is checked against the real Global Accelerator model by the Stubber."""
        from lambdas.evacuator import handler

        client, stub = ga_stub({"us-east-1": 100, "eu-west-1": 100, "eu-central-1": 100})
        stub.add_response("update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/eu-west-1", "TrafficDialPercentage": 0})
        with stub:
            out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"))
        stub.assert_no_pending_responses()
        assert out["allowed"] and out["dial_to"] == 0 and out["action"] == "evacuate"

    def test_last_serving_region_of_a_zone_is_refused(self, env: None, make_tables: Any) -> None:
        """eu-central-1 already at 0: evacuating eu-west-1 would leave eu unserved; refused, no update call."""
        from lambdas.evacuator import handler

        client, stub = ga_stub({"us-east-1": 100, "eu-west-1": 100, "eu-central-1": 0})
        with stub:
            out = handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"))
        assert not out["allowed"] and "'eu'" in out["reason"] and out["dial_to"] == 100

    def test_reconcile_restores_after_cooling(self, env: None, make_tables: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from lambdas.evacuator import handler

        monkeypatch.setattr(handler, "_alarm_state", lambda region: ("OK", 1000.0))
        client, stub = ga_stub({"us-east-1": 100, "eu-west-1": 0, "eu-central-1": 100})
        with stub:
            early = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), now=1000.0 + 60)
        assert early["action"] == "none" and "cooling" in early["reason"]
        client, stub = ga_stub({"us-east-1": 100, "eu-west-1": 0, "eu-central-1": 100})
        stub.add_response("list_accelerators", {"Accelerators": [{"AcceleratorArn": ACC, "Name": "meridian-fn"}]})
        stub.add_response("list_listeners", {"Listeners": [{"ListenerArn": LISTENER}]}, {"AcceleratorArn": ACC})
        stub.add_response("list_endpoint_groups", {"EndpointGroups": [{"EndpointGroupArn": f"{LISTENER}/endpoint-group/eu-west-1",
                                                                       "EndpointGroupRegion": "eu-west-1", "TrafficDialPercentage": 0}]}, {"ListenerArn": LISTENER})
        stub.add_response("update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/eu-west-1", "TrafficDialPercentage": 100})
        with stub:
            late = handler.handle({"action": "reconcile"}, dials=Dials(client, "meridian-fn"), now=1000.0 + 601)
        assert late["action"] == "restore" and late["dial_to"] == 100

    def test_ok_alarm_does_not_restore_at_once(self, env: None, make_tables: Any) -> None:
        from lambdas.evacuator import handler

        client, stub = ga_stub({})
        out = handler.handle(alarm_event("OK"), dials=Dials(client, "meridian-fn"))
        assert out["action"] == "none" and "cooling" in out["reason"]

    def test_unknown_event(self, env: None, make_tables: Any) -> None:
        from lambdas.evacuator import handler

        client, _ = ga_stub({})
        with pytest.raises(ValueError, match="unknown event"):
            handler.handle({"hello": 1}, dials=Dials(client, "meridian-fn"))


class TestEvacuationRules:
    @given(st.dictionaries(st.sampled_from(["us-east-1", "eu-west-1", "eu-central-1"]), st.integers(0, 100), min_size=3),
           st.sampled_from(["us-east-1", "eu-west-1", "eu-central-1"]))
    def test_never_leaves_a_zone_unserved(self, dials: dict[str, int], region: str) -> None:
        """Property: whenever evacuation is allowed, every zone of the region keeps a region with dial > 0."""
        allowed, _ = plan_evacuation(TOPOLOGY, region, dials)
        after = {**dials, region: 0}
        served = all(any(after[r] > 0 for r in z.regions) for z in TOPOLOGY.zones_of(region))
        assert allowed == served

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

    def test_evacuator(self, env: None, make_tables: Any) -> None:
        from infra import layout
        from lambdas.evacuator import handler

        client, stub = ga_stub({"us-east-1": 100, "eu-west-1": 100, "eu-central-1": 100})
        stub.add_response("update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/eu-west-1", "TrafficDialPercentage": 0})
        calls: set[str] = set()
        self.record(client, calls)
        with stub:
            handler.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"))
        allowed = set(layout.EVACUATOR_ACCELERATOR_ACTIONS) | set(layout.EVACUATOR_DISCOVERY_ACTIONS)
        assert calls <= allowed and "globalaccelerator:UpdateEndpointGroup" in calls
        assert allowed - calls == {"cloudwatch:DescribeAlarms"}, "DescribeAlarms is used by the reconcile path"


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
        client, stub = ga_stub({"us-east-1": 100, "eu-west-1": 100, "eu-central-1": 100})
        stub.add_response("update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/eu-west-1", "TrafficDialPercentage": 0})
        with stub:
            evacuator.handle(alarm_event("ALARM"), dials=Dials(client, "meridian-fn"))
        emitted = emitted_series(capsys.readouterr().out)
        assert ("Meridian/Replication", "Conflicts") in emitted and ("Meridian/Replication", "Evacuated") in emitted

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
        assert "eu-west-1-heartbeat-stale" in checked

"""`meridian evacuate`, `restore` and `evacuations` against AWS as its real models take it: botocore Stubbers
for Global Accelerator, CloudWatch and STS (each request checked against the service model and against the
exact parameters expected), moto for the directory table that holds the evacuation records. No Route 53
call is expected anywhere: the latency name follows the Evacuated metric on Route 53's data plane."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from meridian.evacuation import AUTOMATIC, EvacuationRecord, Records
from meridian.topology import Topology, load_topology
from meridian_cli import evacuate as cli
from meridian_cli.main import main

CONFIG = {"regions": ["us-east-1", "eu-west-1", "eu-central-1"], "residencyZones": {"eu": ["eu-west-1", "eu-central-1"]}}
TOPOLOGY = load_topology(CONFIG, stack="fn")
STACK_FILE = """config:
  meridian:regions: [us-east-1, eu-west-1, eu-central-1]
  meridian:residencyZones:
    eu: [eu-west-1, eu-central-1]
"""
ACC = "arn:aws:globalaccelerator::123456789012:accelerator/1234abcd-abcd-1234-abcd-1234abcdefgh"
LISTENER = f"{ACC}/listener/0123abcd"
ALICE = "arn:aws:iam::123456789012:user/alice"
ALL_IN = {"us-east-1": 100.0, "eu-west-1": 100.0, "eu-central-1": 100.0}


def _stubbed(service: str, region: str) -> tuple[Any, Stubber]:
    client = boto3.client(service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")
    return client, Stubber(client)


@dataclass
class FakeAWS:
    """The clients `meridian evacuate` gets: a stubbed one per (service, region), moto's DynamoDB."""

    stubs: dict[tuple[str, str], tuple[Any, Stubber]] = field(default_factory=dict)

    def stub(self, service: str, region: str) -> Stubber:
        if (service, region) not in self.stubs:
            self.stubs[(service, region)] = _stubbed(service, region)
        return self.stubs[(service, region)][1]

    def client(self, service: str, region: str) -> Any:
        if service == "dynamodb":
            return boto3.client("dynamodb", region_name=region)
        self.stub(service, region)
        return self.stubs[(service, region)][0]

    def dials(self, dials: dict[str, float]) -> None:
        ga = self.stub("globalaccelerator", "us-west-2")
        ga.add_response("list_accelerators", {"Accelerators": [{"AcceleratorArn": ACC, "Name": "meridian-fn"}]})
        ga.add_response("list_listeners", {"Listeners": [{"ListenerArn": LISTENER}]}, {"AcceleratorArn": ACC})
        ga.add_response("list_endpoint_groups", {"EndpointGroups": [
            {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{r}", "EndpointGroupRegion": r, "TrafficDialPercentage": d}
            for r, d in dials.items()]}, {"ListenerArn": LISTENER})

    def dial_set(self, region: str, dial: float) -> None:
        self.stub("globalaccelerator", "us-west-2").add_response(
            "update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{region}", "TrafficDialPercentage": dial})

    def metric(self, region: str, value: float) -> None:
        """PutMetricData exactly as the alarm (and the evacuator's EMF) name the series."""
        self.stub("cloudwatch", region).add_response("put_metric_data", {}, {"Namespace": "Meridian/Evacuation", "MetricData": [{
            "MetricName": "Evacuated", "Dimensions": [{"Name": "Region", "Value": region}, {"Name": "service", "Value": "meridian"}],
            "Value": value, "Unit": "None"}]})

    def identity(self, via: str = "us-east-1") -> None:
        self.stub("sts", via).add_response("get_caller_identity", {"UserId": "AIDA", "Account": "123456789012", "Arn": ALICE})

    def records(self, region: str = "us-east-1") -> Records:
        return Records(boto3.client("dynamodb", region_name=region), TOPOLOGY)

    def done(self) -> None:
        for _, stub in self.stubs.values():
            stub.assert_no_pending_responses()


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    path = tmp_path / "Pulumi.fn.yaml"
    path.write_text(STACK_FILE)
    return path


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, make_tables: Callable[[Topology, str], None]) -> Iterator[FakeAWS]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    fake = FakeAWS()
    monkeypatch.setattr(cli, "_client", fake.client)
    with mock_aws():
        make_tables(TOPOLOGY, "us-east-1")
        for _, stub in fake.stubs.values():
            stub.activate()
        yield fake


def run(fake: FakeAWS, *argv: str) -> int:
    for _, stub in fake.stubs.values():
        stub.activate()
    try:
        return main(list(argv))
    finally:
        for _, stub in fake.stubs.values():
            stub.deactivate()


class TestEvacuate:
    def test_record_metric_then_dial(self, aws: FakeAWS, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Who (the caller's identity), why and when are recorded through us-east-1; Evacuated=1 goes to eu-west-1's
        CloudWatch; the dial goes to 0. No Route 53 call."""
        aws.dials(ALL_IN)  # the preview
        aws.dials(ALL_IN)  # the change
        aws.identity()
        aws.metric("eu-west-1", 1)
        aws.dial_set("eu-west-1", 0)
        code = run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--reason", "5xx after release", "--yes")
        out = capsys.readouterr().out
        assert code == 0, out
        aws.done()
        record = aws.records().get("eu-west-1")  # written through the default --via, us-east-1
        assert record is not None and record.evacuated and record.by == f"manual:{ALICE}" and record.reason == "5xx after release"
        assert "no Route 53 API call" in out and "accelerator dial 0" in out
        assert not [k for k in aws.stubs if k[0] == "route53"]

    def test_zone_left_unserved_is_refused(self, aws: FakeAWS, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """eu-central-1 is already out (by record): evacuating eu-west-1 would leave zone eu unserved. Nothing is written."""
        aws.records().put(EvacuationRecord("eu-central-1", True, "manual:bob", "repair", 1000.0))
        aws.dials({**ALL_IN, "eu-central-1": 0})
        code = run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--reason", "x", "--yes")
        assert code == 1 and "'eu'" in capsys.readouterr().out
        aws.done()
        assert aws.records().get("eu-west-1") is None

    def test_dry_run_changes_nothing(self, aws: FakeAWS, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
        aws.dials(ALL_IN)
        assert run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--dry-run") == 0
        out = capsys.readouterr().out
        assert "dry run: nothing changed" in out and "dial 100 -> 0" in out
        aws.done()
        assert aws.records().get("eu-west-1") is None

    def test_reason_is_required(self, aws: FakeAWS, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--yes") == 2
        assert "--reason" in capsys.readouterr().err

    def test_accelerator_api_down_still_evacuates_the_latency_name(self, aws: FakeAWS, stack: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
        """us-west-2 does not answer: record and metric still go out; the command says the dial did not move."""
        ga = aws.stub("globalaccelerator", "us-west-2")
        for _ in range(2):
            ga.add_client_error("list_accelerators", "ServiceUnavailableException", "unavailable", 503)
        aws.identity()
        aws.metric("eu-west-1", 1)
        code = run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--reason", "x", "--yes")
        out = capsys.readouterr().out
        assert code == 0, out
        aws.done()
        assert "warning: Global Accelerator's API (us-west-2)" in out and "evacuator sets the dial to 0" in out
        assert aws.records().get("eu-west-1").evacuated  # type: ignore[union-attr]

    def test_takes_over_an_automatic_evacuation(self, aws: FakeAWS, stack: Path) -> None:
        """The evacuator's evacuation becomes the operator's: the reconcile will no longer end it."""
        aws.records().put(EvacuationRecord("eu-west-1", True, AUTOMATIC, "alarm", 1000.0))
        aws.dials({**ALL_IN, "eu-west-1": 0})
        aws.dials({**ALL_IN, "eu-west-1": 0})
        aws.identity()
        aws.metric("eu-west-1", 1)
        assert run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--reason", "keep it out", "--yes") == 0
        aws.done()
        record = aws.records().get("eu-west-1")
        assert record is not None and record.by == f"manual:{ALICE}" and record.reason == "keep it out"

    def test_unknown_via_region(self, aws: FakeAWS, stack: Path) -> None:
        assert run(aws, "evacuate", "eu-west-1", "--config", str(stack), "--via", "ap-south-1", "--dry-run") == 2


class TestRestore:
    def test_ends_a_manual_evacuation(self, aws: FakeAWS, stack: Path) -> None:
        """Record restored (the evacuation's who and why kept), Evacuated=0, dial back to its configured value."""
        aws.records().put(EvacuationRecord("eu-west-1", True, "manual:bob", "repair", 1000.0))
        aws.dials({**ALL_IN, "eu-west-1": 0})
        aws.dials({**ALL_IN, "eu-west-1": 0})
        aws.identity()
        aws.metric("eu-west-1", 0)
        aws.dial_set("eu-west-1", 100)
        assert run(aws, "restore", "eu-west-1", "--config", str(stack), "--yes") == 0
        aws.done()
        record = aws.records().get("eu-west-1")
        assert record is not None and not record.evacuated and record.by == "manual:bob" and record.restored_by == f"manual:{ALICE}"


class TestEvacuations:
    def test_lists_records_alarms_and_dials(self, aws: FakeAWS, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
        aws.records().put(EvacuationRecord("eu-west-1", True, "manual:bob", "repair", 1000.0))
        aws.dials({**ALL_IN, "eu-west-1": 0})
        for region in TOPOLOGY.regions:
            cw = aws.stub("cloudwatch", region)
            evacuated = "ALARM" if region == "eu-west-1" else "OK"
            cw.add_response("describe_alarms", {"MetricAlarms": [
                {"AlarmName": f"meridian-fn-{region}-evacuated", "StateValue": evacuated},
                {"AlarmName": f"meridian-fn-{region}-heartbeat-stale", "StateValue": "ALARM" if region == "eu-west-1" else "OK"},
            ]}, {"AlarmNamePrefix": f"meridian-fn-{region}-", "AlarmTypes": ["MetricAlarm", "CompositeAlarm"]})
            cw.add_response("describe_alarms", {"MetricAlarms": []},
                            {"AlarmNamePrefix": f"meridian-fn-replication-{region}-to-", "AlarmTypes": ["MetricAlarm", "CompositeAlarm"]})
        assert run(aws, "evacuations", "--config", str(stack)) == 0
        aws.done()
        out = capsys.readouterr().out
        assert "eu-west-1: EVACUATED; meridian-fn-eu-west-1-evacuated ALARM; dial 0; evacuated by manual:bob" in out
        assert "in ALARM: meridian-fn-eu-west-1-heartbeat-stale" in out
        assert "us-east-1: serving" in out

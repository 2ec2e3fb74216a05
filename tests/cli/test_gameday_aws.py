"""`meridian gameday --target aws`: the AWS calls of the game day against the real botocore models.

FIS, CloudWatch, STS and Global Accelerator are botocore Stubbers on real clients (each request checked
against the service model and against the exact parameters expected; each response against the model's
output shape); the evacuation records live in moto's DynamoDB, as in tests/cli/test_evacuate_cli.py. The
last class runs the same target interface on a real local run: a region lost and restored, a replication
pause, and the driver's game day through :class:`LocalTarget`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws
from stacks import THREE_REGIONS

from meridian.topology import Topology, load_topology
from meridian_cli import evacuate, gameday_aws
from meridian_cli.gameday_aws import TargetGameDay
from meridian_cli.gameday_targets import AwsTarget, Fault, LocalTarget, Target, TargetError, stack_outputs
from meridian_cli.local_cmds import start_local, stop_local
from meridian_cli.main import main

CONFIG = {"regions": ["us-east-1", "eu-west-1", "eu-central-1"], "residencyZones": {"eu": ["eu-west-1", "eu-central-1"]}}
TOPOLOGY = load_topology(CONFIG, stack="gd")
ACC = "arn:aws:globalaccelerator::123456789012:accelerator/1234abcd-abcd-1234-abcd-1234abcdefgh"
LISTENER = f"{ACC}/listener/0123abcd"
OUTPUTS: dict[str, Any] = {
    "apiUrl": "https://api.example.com",
    "regions": {r: {"url": f"https://{r}.api.example.com"} for r in CONFIG["regions"]},
    "fisTemplates": {"eu-west-1": {"pause_replication": "EXTpause1", "disrupt_connectivity": "EXTcut1", "disrupt_peer": "eu-central-1"}},
}
EXP = "EXPabc123"
START = time.time()


def experiment(status: str, reason: str = "", error: str = "") -> dict[str, Any]:
    """GetExperiment's answer in the model's shape."""
    state: dict[str, Any] = {"status": status, **({"reason": reason} if reason else {}), **({"error": {"code": error}} if error else {})}
    return {"experiment": {"id": EXP, "experimentTemplateId": "EXTpause1", "state": state}}


@dataclass
class FakeAWS:
    stubs: dict[tuple[str, str], tuple[Any, Stubber]] = field(default_factory=dict)

    def stub(self, service: str, region: str) -> Stubber:
        if (service, region) not in self.stubs:
            client = boto3.client(service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")
            self.stubs[(service, region)] = (client, Stubber(client))
            self.stubs[(service, region)][1].activate()
        return self.stubs[(service, region)][1]

    def client(self, service: str, region: str) -> Any:
        if service == "dynamodb":
            return boto3.client("dynamodb", region_name=region)  # moto
        self.stub(service, region)
        return self.stubs[(service, region)][0]

    def done(self) -> None:
        for _, stub in self.stubs.values():
            stub.assert_no_pending_responses()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, make_tables: Callable[[Topology, str], None]) -> Iterator[FakeAWS]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    fake = FakeAWS()
    monkeypatch.setattr(evacuate, "_client", fake.client)  # the evacuation's clients: the same fakes
    with mock_aws():
        make_tables(TOPOLOGY, "us-east-1")
        yield fake


def target(fake: FakeAWS, outputs: dict[str, Any] | None = None) -> AwsTarget:
    return AwsTarget(TOPOLOGY, outputs or OUTPUTS, clients=fake.client, sleep=lambda _s: None, run_id="run1")


def started(fis: Stubber, template: str = "EXTpause1", kind: str = "pause-replication") -> None:
    fis.add_response("start_experiment", {"experiment": {"id": EXP, "experimentTemplateId": template, "state": {"status": "initiating"}}},
                     {"clientToken": f"meridian-run1-{kind}-eu-west-1", "experimentTemplateId": template,
                      "tags": {"meridian:stack": "gd", "meridian:gameday": "run1", "meridian:fault": kind}})


class TestExperiments:
    def test_pause_replication_starts_the_declared_template_waits_then_stops_it(self, aws: FakeAWS) -> None:
        fis = aws.stub("fis", "eu-west-1")
        started(fis)
        fis.add_response("get_experiment", experiment("initiating"), {"id": EXP})
        fis.add_response("get_experiment", experiment("running"), {"id": EXP})
        t = target(aws)
        fault = t.pause_replication("eu-west-1", 60)
        assert (fault.kind, fault.region, fault.experiment_id, fault.outcome) == ("pause-replication", "eu-west-1", EXP, "running")
        fis.add_response("get_experiment", experiment("running"), {"id": EXP})
        fis.add_response("stop_experiment", {"experiment": {"id": EXP, "state": {"status": "stopping"}}}, {"id": EXP})
        fis.add_response("get_experiment", experiment("stopping"), {"id": EXP})
        fis.add_response("get_experiment", experiment("stopped", "Experiment stopped by user"), {"id": EXP})
        ended = t.end(fault)
        assert ended.outcome == "ended" and ended.ended_at is not None
        aws.done()

    def test_disrupt_connectivity_uses_its_template_and_reports_the_peer(self, aws: FakeAWS) -> None:
        fis = aws.stub("fis", "eu-west-1")
        started(fis, "EXTcut1", "disrupt-connectivity")
        fis.add_response("get_experiment", experiment("running"), {"id": EXP})
        fault = target(aws).disrupt_connectivity("eu-west-1", 30)
        assert fault.peer == "eu-central-1" and fault.detail == f"FIS experiment {EXP} of template EXTcut1"
        aws.done()

    def test_a_failed_experiment_is_reported_with_its_reason(self, aws: FakeAWS) -> None:
        fis = aws.stub("fis", "eu-west-1")
        started(fis)
        fis.add_response("get_experiment", experiment("failed", "Target resolution failed", "InvalidTarget"), {"id": EXP})
        with pytest.raises(TargetError, match=r"EXPabc123 \(pause-replication in eu-west-1\) failed: Target resolution failed; InvalidTarget"):
            target(aws).pause_replication("eu-west-1", 60)
        aws.done()

    def test_stop_condition_ends_it_and_the_game_day_does_not_stop_it_again(self, aws: FakeAWS) -> None:
        fis = aws.stub("fis", "eu-west-1")
        fault = Fault("pause-replication", "eu-west-1", START, "FIS experiment", experiment_id=EXP)
        fis.add_response("get_experiment", experiment("stopped", "Experiment stopped by stop condition."), {"id": EXP})
        t = target(aws)
        assert t.poll(fault).outcome == "stopped-by-condition"
        assert fault.reason == "Experiment stopped by stop condition."
        assert t.end(fault).outcome == "stopped-by-condition"  # no stop_experiment: the Stubber would refuse it
        aws.done()

    def test_refused_start_is_one_line_with_aws_code(self, aws: FakeAWS) -> None:
        fis = aws.stub("fis", "eu-west-1")
        fis.add_client_error("start_experiment", "ServiceQuotaExceededException", "Too many running experiments",
                             expected_params={"clientToken": ANY, "experimentTemplateId": "EXTpause1", "tags": ANY})
        with pytest.raises(TargetError) as caught:
            target(aws).pause_replication("eu-west-1", 60)
        assert str(caught.value) == ("FIS refused to start pause-replication in eu-west-1 (template EXTpause1): "
                                     "ServiceQuotaExceededException: Too many running experiments")
        aws.done()

    def test_missing_template_names_the_output_and_the_fix(self, aws: FakeAWS) -> None:
        with pytest.raises(TargetError, match=r"no fisTemplates\.eu-central-1\.pause_replication: deploy it with meridian:faultInjection"):
            target(aws).pause_replication("eu-central-1", 60)

    def test_longer_than_the_template_is_refused(self, aws: FakeAWS) -> None:
        with pytest.raises(TargetError, match="at most PT10M"):
            target(aws).pause_replication("eu-west-1", 3600)

    def test_preflight_reads_both_templates(self, aws: FakeAWS) -> None:
        fis = aws.stub("fis", "eu-west-1")
        fis.add_response("get_experiment_template", {"experimentTemplate": {"id": "EXTpause1"}}, {"id": "EXTpause1"})
        fis.add_client_error("get_experiment_template", "ResourceNotFoundException", "not found", expected_params={"id": "EXTcut1"})
        with pytest.raises(TargetError, match=r"FIS template EXTcut1 \(disrupt_connectivity in eu-west-1\) cannot be read: ResourceNotFound"):
            target(aws).check_templates("eu-west-1")
        aws.done()


class TestRegionLoss:
    @staticmethod
    def evacuation_calls(aws: FakeAWS, *, evacuating: bool) -> None:
        """What `meridian evacuate` (or `restore`) sends for eu-west-1: identity, dials, the dial, the metric."""
        aws.stub("sts", "us-east-1").add_response("get_caller_identity", {"UserId": "A", "Account": "123456789012",
                                                                          "Arn": "arn:aws:iam::123456789012:role/gameday"})
        ga = aws.stub("globalaccelerator", "us-west-2")
        ga.add_response("list_accelerators", {"Accelerators": [{"AcceleratorArn": ACC, "Name": "meridian-gd"}]})
        ga.add_response("list_listeners", {"Listeners": [{"ListenerArn": LISTENER}]}, {"AcceleratorArn": ACC})
        ga.add_response("list_endpoint_groups", {"EndpointGroups": [
            {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{r}", "EndpointGroupRegion": r,
             "TrafficDialPercentage": 0.0 if r == "eu-west-1" and not evacuating else 100.0} for r in CONFIG["regions"]]},
            {"ListenerArn": LISTENER})
        aws.stub("cloudwatch", "eu-west-1").add_response("put_metric_data", {}, {"Namespace": "Meridian/Evacuation", "MetricData": [{
            "MetricName": "Evacuated", "Dimensions": [{"Name": "Region", "Value": "eu-west-1"}, {"Name": "service", "Value": "meridian"}],
            "Value": 1 if evacuating else 0, "Unit": "None"}]})
        ga.add_response("update_endpoint_group", {}, {"EndpointGroupArn": f"{LISTENER}/endpoint-group/eu-west-1",
                                                      "TrafficDialPercentage": 0.0 if evacuating else 100.0})

    def test_evacuation_then_alarm_then_restore(self, aws: FakeAWS) -> None:
        """Region loss is the project's evacuation: record, Evacuated metric, dial 0; out when its alarm is ALARM."""
        self.evacuation_calls(aws, evacuating=True)
        t = target(aws)
        fault = t.lose_region("eu-west-1")
        assert fault.kind == "region-loss" and "accelerator dial 0" in fault.detail and "role/gameday" in fault.detail
        cw = aws.stub("cloudwatch", "eu-west-1")
        cw.add_response("describe_alarms", {"MetricAlarms": [{"AlarmName": "meridian-gd-eu-west-1-evacuated", "StateValue": "ALARM"}]},
                        {"AlarmNames": ["meridian-gd-eu-west-1-evacuated"], "AlarmTypes": ["MetricAlarm"]})
        assert t.region_out("eu-west-1")
        aws.done()
        self.evacuation_calls(aws, evacuating=False)
        assert t.end(fault).outcome == "ended"
        aws.done()

    def test_refused_evacuation_is_reported(self, aws: FakeAWS) -> None:
        """The safety rule holds for the game day too: never the last serving region of a zone."""
        aws.stub("sts", "eu-west-1").add_response("get_caller_identity", {"UserId": "A", "Account": "123456789012", "Arn": "arn:aws:iam::1:user/x"})
        ga = aws.stub("globalaccelerator", "us-west-2")
        ga.add_response("list_accelerators", {"Accelerators": [{"AcceleratorArn": ACC, "Name": "meridian-gd"}]})
        ga.add_response("list_listeners", {"Listeners": [{"ListenerArn": LISTENER}]}, {"AcceleratorArn": ACC})
        ga.add_response("list_endpoint_groups", {"EndpointGroups": [
            {"EndpointGroupArn": f"{LISTENER}/endpoint-group/{r}", "EndpointGroupRegion": r,
             "TrafficDialPercentage": 0.0 if r == "eu-west-1" else 100.0} for r in CONFIG["regions"]]}, {"ListenerArn": LISTENER})
        with pytest.raises(TargetError, match="evacuation of eu-central-1 refused"):
            target(aws).lose_region("eu-central-1")


class TestReplicasAndOutputs:
    def test_read_replicas_scans_every_replica_consistently(self, aws: FakeAWS, make_tables: Callable[[Topology, str], None]) -> None:
        for region in ("eu-west-1", "eu-central-1"):
            make_tables(TOPOLOGY, region)
        t = target(aws)
        boto3.client("dynamodb", region_name="us-east-1").put_item(TableName="meridian-gd-directory",
                                                                   Item={"user_id": {"S": "u1"}, "home_region": {"S": "eu-west-1"}})
        snapshot = t.read_replicas()
        assert set(snapshot) == {(tbl, r) for tbl, regions in t.tables().items() for r in regions}
        assert snapshot[("meridian-gd-directory", "us-east-1")] == [{"user_id": "u1", "home_region": "eu-west-1"}]

    def test_stack_outputs_errors_are_one_line(self) -> None:
        class Done:
            def __init__(self, code: int, out: str, err: str = "") -> None:
                self.returncode, self.stdout, self.stderr = code, out, err

        with pytest.raises(TargetError, match=r"failed: error: no stack named 'x' found$"):
            stack_outputs("x", Path("."), run=lambda *a, **k: Done(255, "", "error: no stack named 'x' found\nmore"))
        with pytest.raises(TargetError, match="has no outputs: run `pulumi up` first"):
            stack_outputs("x", Path("."), run=lambda *a, **k: Done(0, "{}"))
        assert stack_outputs("x", Path("."), run=lambda *a, **k: Done(0, '{"apiUrl": "https://a"}')) == {"apiUrl": "https://a"}

    def test_outputs_without_urls_are_refused(self) -> None:
        with pytest.raises(TargetError, match="lack apiUrl"):
            AwsTarget(TOPOLOGY, {"regions": {}})


class TestCommand:
    def test_no_pulumi_cli_exits_2_in_one_line(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PATH", "/nonexistent")
        assert main(["gameday", "--target", "aws", "--stack", "dev"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("meridian: error: cannot run `pulumi stack output`") and "\n" not in err

    def test_no_credentials_exits_2(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.setenv(var, "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        dev = {"apiUrl": "https://api.example.com", "regions": {r: {"url": f"https://{r}.x"} for r in ("us-east-1", "us-west-2")}}
        monkeypatch.setattr(gameday_aws, "stack_outputs", lambda stack, root: dev)
        assert main(["gameday", "--target", "aws", "--stack", "dev"]) == 2
        assert "no usable AWS credentials" in capsys.readouterr().err

    def test_local_only_scenario_refused_on_aws(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["gameday", "--target", "aws", "--stack", "dev", "--scenario", "partition"]) == 2
        assert "runs on the local run only" in capsys.readouterr().err

    def test_aws_needs_a_stack(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["gameday", "--target", "aws"]) == 2
        assert "--target aws needs --stack NAME" in capsys.readouterr().err


# -- the same interface on a real local run ---------------------------------------------------------------------
LOCAL_STACK = THREE_REGIONS


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    root = tmp_path_factory.mktemp("target")
    (root / "Pulumi.target.yaml").write_text(LOCAL_STACK)
    start_local(str(root / "Pulumi.target.yaml"), root / "state", time_scale=0.1, latency_scale=0, lag=0.2)
    try:
        yield LocalTarget(root / "state")
    finally:
        assert stop_local(root / "state") == []


def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
class TestLocalTarget:
    def test_both_targets_satisfy_the_protocol(self, local: LocalTarget) -> None:
        assert isinstance(local, Target)
        assert isinstance(AwsTarget(TOPOLOGY, OUTPUTS), Target)
        assert local.endpoints().entry == local.status["edge"] and set(local.endpoints().regions) == set(CONFIG["regions"])

    def test_region_loss_and_restore_on_a_real_run(self, local: LocalTarget) -> None:
        fault = local.lose_region("eu-west-1")
        assert local.ctl("GET", "status")["regions"]["eu-west-1"]["state"] == "failed"
        assert wait(lambda: local.region_out("eu-west-1")), "the edge never took eu-west-1 out"
        assert local.end(fault).outcome == "ended"
        assert wait(lambda: not local.region_out("eu-west-1")), "eu-west-1 never came back"

    def test_pause_replication_holds_deliveries_until_ended(self, local: LocalTarget) -> None:
        fault = local.pause_replication("eu-west-1", 5)
        assert fault.emulated and "partitioned from eu-central-1, us-east-1" in fault.detail
        assert local.ctl("GET", "status")["replication"]["partitions"]
        local.end(fault)
        assert not local.ctl("GET", "status")["replication"]["partitions"]

    def test_driver_runs_its_game_day_through_the_local_target(self, local: LocalTarget) -> None:
        day = TargetGameDay(local, scenarios=["pause-replication"], phase_seconds=1.5, fault_seconds=1.5, workers=3, out_timeout=20)
        metrics = asyncio.run(day.run())
        assert metrics["scenario_results"]["pause-replication"]["verdict"] == "PASS"
        assert metrics["requests"] > 0 and metrics["passed"], metrics["failures"]
        assert set(metrics["checks"]) >= {"acknowledged_writes_lost", "exactly_once_orders", "read_your_writes", "replicas_identical"}

"""The edge: each latency record is health-checked by "endpoint healthy AND not evacuated", the evacuation
check watches its region's evacuation alarm within everything Route 53 supports, and `pulumi up` leaves the
accelerator's dials to run time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.stub import Stubber
from pulumi.runtime.mocks import MockMonitor

from infra.components import edge
from infra.render import Plan, PlannedResource, render_stack, render_values
from meridian.evacuation import EVACUATED_METRIC, EVACUATION_NAMESPACE, alarm_name, metric_dimensions
from meridian.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
PLANS = ["dev_plan", "prod_plan"]
HEALTH_CHECK = "aws:route53/healthCheck:HealthCheck"
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
#: AlarmIdentifier.Name: "Route 53 supports CloudWatch alarms with ... Statistics: Average, Minimum, Maximum, Sum,
#: and SampleCount. Extended statistics aren't supported." (Route 53 API reference, AlarmIdentifier)
ROUTE53_STATISTICS = {"Average", "Minimum", "Maximum", "Sum", "SampleCount"}


@dataclass(frozen=True)
class Registration:
    type: str
    name: str
    urn: str
    dependencies: frozenset[str]
    ignore_changes: tuple[str, ...]
    protect: bool


def registrations(render: Callable[[], Plan]) -> list[Registration]:
    """Every RegisterResource request the SDK sends to the (mock) monitor: resource options the mocks' records
    do not show (dependencies, ignoreChanges, protect), as a real `pulumi up` sends them to the engine."""
    seen: list[Registration] = []
    original = MockMonitor.RegisterResource

    def register(self: MockMonitor, request: Any) -> Any:
        response = original(self, request)
        seen.append(Registration(request.type, request.name, response.urn, frozenset(request.dependencies),
                                 tuple(request.ignoreChanges), bool(request.protect)))
        return response

    with mock.patch.object(MockMonitor, "RegisterResource", register):
        render()
    return seen


def checks(plan: Plan, kind: str) -> list[PlannedResource]:
    return [c for c in plan.of_type(HEALTH_CHECK) if c.inputs["type"] == kind]


def by_id(plan: Plan) -> dict[str, PlannedResource]:
    return {c.outputs["id"]: c for c in plan.of_type(HEALTH_CHECK)}


class TestLatencyRecordCheck:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_latency_record_is_endpoint_healthy_and_not_evacuated(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Each region's latency record uses a CALCULATED check of two children, both required: its HTTPS check of
        /health/ready and its CLOUDWATCH_METRIC check of the evacuation alarm."""
        plan: Plan = request.getfixturevalue(plan_name)
        ids = by_id(plan)
        latency = [r for r in plan.of_type("aws:route53/record:Record") if r.inputs.get("latencyRoutingPolicies")]
        assert sorted(r.inputs["setIdentifier"] for r in latency) == sorted(plan.topology.regions)
        for record in latency:
            region = record.inputs["setIdentifier"]
            serving = ids[record.inputs["healthCheckId"]]
            assert serving.inputs["type"] == "CALCULATED"
            children = [ids[c] for c in serving.inputs["childHealthchecks"]]
            assert sorted(c.inputs["type"] for c in children) == ["CLOUDWATCH_METRIC", "HTTPS"]
            # HealthThreshold = every child: AND, not OR.
            assert serving.inputs["childHealthThreshold"] == len(children) == 2
            (endpoint,) = [c for c in children if c.inputs["type"] == "HTTPS"]
            (evacuated,) = [c for c in children if c.inputs["type"] == "CLOUDWATCH_METRIC"]
            assert endpoint.inputs["fqdn"] == f"{region}.{plan.topology.domain}"
            assert evacuated.inputs["cloudwatchAlarmRegion"] == region

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_evacuation_check_watches_the_regions_alarm(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """AlarmIdentifier (name + the region the alarm lives in) and InsufficientDataHealthStatus, both required for
        CLOUDWATCH_METRIC; nothing of an endpoint check (no checker regions, interval, threshold or address)."""
        plan: Plan = request.getfixturevalue(plan_name)
        alarms = {(a.region, a.inputs["name"]): a for a in plan.of_type(METRIC_ALARM)}
        found = checks(plan, "CLOUDWATCH_METRIC")
        assert sorted(c.inputs["cloudwatchAlarmRegion"] for c in found) == sorted(plan.topology.regions)
        for check in found:
            region = check.inputs["cloudwatchAlarmRegion"]
            assert check.inputs["cloudwatchAlarmName"] == alarm_name(plan.topology, region)
            assert (region, check.inputs["cloudwatchAlarmName"]) in alarms, "the alarm exists, in that region"
            assert check.inputs["insufficientDataHealthStatus"] == edge.INSUFFICIENT_DATA_STATUS == "Healthy"
            assert region in edge.route53_alarm_regions()
            for endpoint_only in ("fqdn", "ipAddress", "port", "regions", "requestInterval", "failureThreshold", "resourcePath"):
                assert endpoint_only not in check.inputs, (check.name, endpoint_only)

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_evacuation_alarm_is_one_route53_can_watch(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """What AlarmIdentifier documents as supported: a standard-resolution metric (period 60; a 10 or 30 s period
        needs high resolution) and a plain statistic; and the simplest form beyond that (one metric, no metric math, one
        datapoint of one period). Missing data keeps the state; the series is the one the evacuator and the CLI publish."""
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            (alarm,) = [a for a in plan.of_type(METRIC_ALARM) if a.inputs["name"] == alarm_name(plan.topology, region)]
            i = alarm.inputs
            assert alarm.region == region
            assert (i["namespace"], i["metricName"], i["dimensions"]) == (EVACUATION_NAMESPACE, EVACUATED_METRIC, metric_dimensions(region))
            assert i["statistic"] in ROUTE53_STATISTICS and "extendedStatistic" not in i and "metricQueries" not in i
            assert i["period"] == 60
            assert i["evaluationPeriods"] == i["datapointsToAlarm"] == 1
            assert (i["comparisonOperator"], i["threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
            assert i["treatMissingData"] == "ignore"

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_create_health_check_requests_pass_route53s_model(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Each check as the CreateHealthCheck request it becomes, through a Stubber on Route 53's real model
        (AlarmIdentifier.Region enum, InsufficientDataHealthStatus enum, HealthThreshold 0-256, at most 256 children)."""
        plan: Plan = request.getfixturevalue(plan_name)
        client = boto3.client("route53", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(client)
        for check in plan.of_type(HEALTH_CHECK):
            params = {"CallerReference": check.name, "HealthCheckConfig": health_check_config(check)}
            stub.add_response("create_health_check", {
                "HealthCheck": {"Id": check.outputs["id"], "CallerReference": check.name, "HealthCheckConfig": params["HealthCheckConfig"],
                                "HealthCheckVersion": 1},
                "Location": f"https://route53.amazonaws.com/2013-04-01/healthcheck/{check.outputs['id']}"}, params)
            with stub:
                client.create_health_check(**params)
        stub.assert_no_pending_responses()

    def test_evacuation_check_waits_for_its_alarm(self) -> None:
        """Route 53 reads the alarm when the check is created: the check depends on the alarm (its name is the alarm's
        output), so the engine creates the alarm first."""
        seen = registrations(lambda: render_stack(ROOT / "Pulumi.dev.yaml"))
        urns = {(r.type, r.name): r.urn for r in seen}
        for region in ("us-east-1", "us-west-2"):
            (check,) = [r for r in seen if r.type == HEALTH_CHECK and r.name == f"edge-{region}-evacuated"]
            assert urns[(METRIC_ALARM, f"{region}-evacuated")] in check.dependencies

    def test_region_route53_cannot_watch_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A region outside AlarmIdentifier's regions is refused before any resource, with what to do."""
        topology = load_topology({"regions": ["us-east-1", "eu-west-1"]}, stack="unit")
        monkeypatch.setattr(edge, "route53_alarm_regions", lambda: frozenset({"us-east-1"}))
        endpoint = edge.RegionEndpoint(alb_arn="a", alb_dns_name="d", alb_zone_id="z", evacuation_alarm_name="n")
        with pytest.raises(ValueError, match="cannot watch CloudWatch alarms in eu-west-1"):
            edge.GlobalEdgeArgs(topology=topology, hosted_zone_id="Z", endpoints={r: endpoint for r in topology.regions},
                                dns_provider=None, accelerator_provider=None)  # type: ignore[arg-type]

    def test_alarm_regions_come_from_route53s_model(self) -> None:
        assert {"us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1", "us-west-2"} <= edge.route53_alarm_regions()


def health_check_config(check: PlannedResource) -> dict[str, Any]:
    """HealthCheckConfig of CreateHealthCheck from the planned inputs (numbers travel as floats)."""
    i = check.inputs
    config: dict[str, Any] = {"Type": i["type"]}
    if i["type"] == "HTTPS":
        config |= {"FullyQualifiedDomainName": i["fqdn"], "Port": int(i["port"]), "ResourcePath": i["resourcePath"],
                   "RequestInterval": int(i["requestInterval"]), "FailureThreshold": int(i["failureThreshold"]),
                   "MeasureLatency": i["measureLatency"], "EnableSNI": i["enableSni"], "Regions": i["regions"]}
    elif i["type"] == "CLOUDWATCH_METRIC":
        config |= {"AlarmIdentifier": {"Region": i["cloudwatchAlarmRegion"], "Name": i["cloudwatchAlarmName"]},
                   "InsufficientDataHealthStatus": i["insufficientDataHealthStatus"]}
    elif i["type"] == "CALCULATED":
        config |= {"ChildHealthChecks": i["childHealthchecks"], "HealthThreshold": int(i["childHealthThreshold"])}
    return config


class TestDials:
    def test_dial_is_the_initial_value_only(self) -> None:
        """Every endpoint group ignores later changes of its traffic dial: the next `pulumi up` does not put an
        evacuated region back mid-incident (the mocks cannot see options: the register requests carry them)."""
        config = {"regions": ["us-east-1", "eu-west-1"], "trafficDials": {"eu-west-1": 40}}
        seen = registrations(lambda: render_values(config, stack="dials"))
        groups = [r for r in seen if r.type == "aws:globalaccelerator/endpointGroup:EndpointGroup"]
        assert sorted(g.name for g in groups) == ["edge-eu-west-1", "edge-us-east-1"]
        for g in groups:
            assert g.ignore_changes == ("trafficDialPercentage",), g.name

    def test_configured_dial_is_the_initial_value(self) -> None:
        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "trafficDials": {"eu-west-1": 40}}, stack="dials")
        dials = {g.inputs["endpointGroupRegion"]: g.inputs["trafficDialPercentage"]
                 for g in plan.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")}
        assert dials == {"us-east-1": 100, "eu-west-1": 40}

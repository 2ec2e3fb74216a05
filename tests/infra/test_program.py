"""The whole program under mocks: what each region gets, where every resource lands, how it is wired."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pulumi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import layout
from infra.render import Plan, PlannedResource, render_values
from meridian.topology import Topology, load_topology
from policy.rules import Res, check

PER_REGION = {
    "aws:ec2/vpc:Vpc": 1,
    "aws:ec2/subnet:Subnet": 6,
    "aws:ec2/natGateway:NatGateway": 3,
    "aws:ec2/vpcEndpoint:VpcEndpoint": 6,
    "aws:ec2/securityGroup:SecurityGroup": 3,
    "aws:lb/loadBalancer:LoadBalancer": 1,
    "aws:lb/listener:Listener": 2,
    "aws:lb/targetGroup:TargetGroup": 1,
    "aws:acm/certificate:Certificate": 1,
    "aws:acm/certificateValidation:CertificateValidation": 1,
    "aws:ecs/cluster:Cluster": 1,
    "aws:ecs/taskDefinition:TaskDefinition": 1,
    "aws:ecs/service:Service": 1,
    "aws:appautoscaling/target:Target": 1,
    "aws:appautoscaling/policy:Policy": 2,
    "aws:lambda/function:Function": 3,
    "aws:cloudwatch/eventRule:EventRule": 1,
    "aws:cloudwatch/compositeAlarm:CompositeAlarm": 1,
    "aws:iam/role:Role": 6,  # with the FIS role (infra/components/fis.py)
    "aws:fis/experimentTemplate:ExperimentTemplate": 2,
}


def counts(plan: Plan, region: str) -> Counter[str]:
    """Per region; the key rotator, once per stack in the primary region, is counted in test_key_rotation."""
    return Counter(r.type for r in plan.in_region(region) if not r.name.startswith("key-rotation"))


def one(plan: Plan, type_token: str, **inputs: Any) -> PlannedResource:
    found = [r for r in plan.of_type(type_token) if all(r.inputs.get(k) == v for k, v in inputs.items())]
    assert len(found) == 1, f"expected one {type_token} with {inputs}, found {len(found)}"
    return found[0]


class TestPerRegion:
    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_every_region_has_its_full_set(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Counts per type per region, for the 2- and 4-region example stacks."""
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            got = counts(plan, region)
            for type_token, n in PER_REGION.items():
                assert got[type_token] == n, f"{region} {type_token}: {got[type_token]} != {n}"

    def test_every_resource_has_an_explicit_provider_region(self, prod_plan: Plan) -> None:
        """No AWS resource lands on the default provider; each sits in a stack or control-plane region.
        The only other resource is the image build (docker-build), which has no region."""
        allowed = {*prod_plan.topology.regions, layout.DNS_REGION, layout.ACCELERATOR_REGION}
        others = []
        for r in prod_plan.custom:
            if r.type.startswith("aws:"):
                assert r.region in allowed, f"{r.type} {r.name} is in {r.region}"
            else:
                others.append(r.type)
        assert others == ["docker-build:index:Image"]

    def test_global_services_use_their_control_plane_providers(self, prod_plan: Plan) -> None:
        for r in prod_plan.custom:
            if r.type.startswith("aws:route53/"):
                assert r.region == "us-east-1", r.name
            if r.type.startswith("aws:globalaccelerator/"):
                assert r.region == "us-west-2", r.name

    def test_providers_stamp_default_tags(self, prod_plan: Plan) -> None:
        regions = {p.inputs["region"] for p in prod_plan.providers}
        assert regions == {"us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1", "us-west-2"}
        for p in prod_plan.providers:
            # Provider inputs travel JSON-encoded on the wire.
            assert json.loads(p.inputs["defaultTags"])["tags"] == {"meridian:project": "meridian", "meridian:stack": "prod", "managed-by": "pulumi"}

    def test_vpc_cidrs_are_distinct(self, prod_plan: Plan) -> None:
        cidrs = [r.inputs["cidrBlock"] for r in prod_plan.of_type("aws:ec2/vpc:Vpc")]
        assert len(set(cidrs)) == 4 and all(c.endswith("/16") for c in cidrs)

    def test_tasks_private_and_only_alb_reaches_them(self, prod_plan: Plan) -> None:
        for svc in prod_plan.of_type("aws:ecs/service:Service"):
            net = svc.inputs["networkConfiguration"]
            assert net["assignPublicIp"] is False
            assert svc.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
            assert svc.inputs["launchType"] == "FARGATE"
        task_sgs = [r for r in prod_plan.of_type("aws:ec2/securityGroup:SecurityGroup") if r.name.endswith("-tasks")]
        assert len(task_sgs) == 4
        for sg in task_sgs:
            (rule,) = sg.inputs["ingress"]
            assert rule["securityGroups"] and not rule.get("cidrBlocks"), "tasks admit only the ALB's group"
            assert rule["fromPort"] == prod_plan.topology.sizing.container_port

    def test_alb_health_check_and_https(self, prod_plan: Plan) -> None:
        for tg in prod_plan.of_type("aws:lb/targetGroup:TargetGroup"):
            assert tg.inputs["healthCheck"]["path"] == "/health/ready" and tg.inputs["targetType"] == "ip"
        listeners = prod_plan.of_type("aws:lb/listener:Listener")
        https = [l for l in listeners if l.inputs["protocol"] == "HTTPS"]
        http = [l for l in listeners if l.inputs["protocol"] == "HTTP"]
        assert len(https) == len(http) == 4
        assert all(l.inputs["defaultActions"][0]["redirect"]["protocol"] == "HTTPS" for l in http)
        assert all(l.inputs["sslPolicy"].startswith("ELBSecurityPolicy-TLS13") for l in https)

    def test_task_environment(self, prod_plan: Plan, prod: Topology) -> None:
        """The task carries its region, the topology, its zones' table names and where the keys are."""
        for td in prod_plan.of_type("aws:ecs/taskDefinition:TaskDefinition"):
            region = next(r for r in prod.regions if td.inputs["family"].endswith(r))
            (container,) = json.loads(td.inputs["containerDefinitions"])
            env = {e["name"]: e["value"] for e in container["environment"]}
            assert env["MERIDIAN_REGION"] == region
            assert Topology.from_json(env["MERIDIAN_TOPOLOGY"]) == prod
            assert json.loads(env["MERIDIAN_TABLES"]) == prod.tables_in_region(region)
            secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
            assert secrets["MERIDIAN_SESSION_KEY"].startswith(f"arn:aws:secretsmanager:{region}:")
            assert secrets["MERIDIAN_SESSION_KEY"].endswith(":session::")
            assert container["readonlyRootFilesystem"] is True


class TestCertificates:
    def test_no_two_route53_records_share_name_and_type(self, prod_plan: Plan) -> None:
        """ACM asks every region for the same validation record of a shared name: each is declared once."""
        keys = Counter(
            (r.inputs["name"], r.inputs["type"], r.inputs.get("setIdentifier")) for r in prod_plan.of_type("aws:route53/record:Record")
        )
        assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]

    def test_each_region_validates_shared_and_own_names(self, prod_plan: Plan, prod: Topology) -> None:
        validations = prod_plan.of_type("aws:acm/certificateValidation:CertificateValidation")
        for v in validations:
            fqdns = v.inputs["validationRecordFqdns"]
            assert len(fqdns) == 3
        shared = {tuple(sorted(v.inputs["validationRecordFqdns"][:2])) for v in validations}
        assert len(shared) == 1, "every region uses the same shared validation records"
        for cert in prod_plan.of_type("aws:acm/certificate:Certificate"):
            region = cert.region
            assert cert.inputs["domainName"] == prod.domain
            assert cert.inputs["subjectAlternativeNames"] == [f"global.{prod.domain}", f"{region}.{prod.domain}"]


class TestTables:
    def test_replica_sets_per_zone(self, prod_plan: Plan, prod: Topology) -> None:
        """eu tables live only in eu-west-1 + eu-central-1; global ones in all four regions."""
        tables = {r.inputs["name"]: r for r in prod_plan.of_type("aws:dynamodb/table:Table")}
        assert len(tables) == 14  # 5 per zone (2 zones), the directory, 3 strong-key tables
        for name, t in tables.items():
            regions = [t.region, *[x["regionName"] for x in t.inputs.get("replicas", [])]]
            zone = t.inputs["tags"]["meridian:zone"]
            assert sorted(regions) == sorted(prod.zone(zone).regions), name
            assert t.inputs["streamViewType"] == "NEW_AND_OLD_IMAGES" and t.inputs["streamEnabled"]
            assert t.inputs["pointInTimeRecovery"]["enabled"] and t.inputs["deletionProtectionEnabled"]
            assert t.inputs["serverSideEncryption"]["enabled"]
            assert t.inputs["billingMode"] == "PAY_PER_REQUEST"
        assert tables["meridian-prod-directory"].inputs["tags"]["meridian:zone"] == "global"
        assert "meridian-prod-eu-directory" not in tables
        assert tables["meridian-prod-eu-idempotency"].inputs["ttl"] == {"attributeName": "expires_at", "enabled": True}
        assert tables["meridian-prod-eu-users"].inputs["globalSecondaryIndexes"][0]["name"] == "by-email"

    def test_strong_table_uses_mrsc_settings(self) -> None:
        plan = render_values(
            {"regions": ["us-east-1", "us-east-2"], "tables": {"orders": {"consistency": "strong", "witnessRegion": "us-west-2"}}},
            stack="mrsc",
        )
        orders = one(plan, "aws:dynamodb/table:Table", name="meridian-mrsc-global-orders")
        assert orders.inputs["globalTableWitness"] == {"regionName": "us-west-2"}
        assert [r["consistencyMode"] for r in orders.inputs["replicas"]] == ["STRONG"]
        users = one(plan, "aws:dynamodb/table:Table", name="meridian-mrsc-global-users")
        assert [r["consistencyMode"] for r in users.inputs["replicas"]] == ["EVENTUAL"]


class TestIam:
    def policies(self, plan: Plan, region: str, suffix: str) -> dict[str, Any]:
        (p,) = [r for r in plan.in_region(region) if r.type == "aws:iam/rolePolicy:RolePolicy" and r.name == f"{region}-{suffix}"]
        return json.loads(p.inputs["policy"])

    def test_task_role_only_its_zones_tables_in_its_region(self, prod_plan: Plan) -> None:
        """us-east-1's task role cannot touch an eu table; eu-west-1's reaches eu and global ones, locally."""
        us = self.policies(prod_plan, "us-east-1", "task-tables")
        (stmt,) = us["Statement"]
        assert stmt["Action"] == sorted(layout.SERVICE_TABLE_ACTIONS)
        assert all(":us-east-1:" in arn for arn in stmt["Resource"])
        assert not any("-eu-" in arn for arn in stmt["Resource"])
        eu = self.policies(prod_plan, "eu-west-1", "task-tables")["Statement"][0]["Resource"]
        assert "arn:aws:dynamodb:eu-west-1:123456789012:table/meridian-prod-eu-users" in eu
        assert "arn:aws:dynamodb:eu-west-1:123456789012:table/meridian-prod-directory" in eu
        assert all(":eu-west-1:" in arn for arn in eu)

    def test_lambda_roles_allow_what_their_code_calls(self, prod_plan: Plan) -> None:
        canary = self.policies(prod_plan, "eu-west-1", "replication-canary")["Statement"]
        assert canary[0]["Action"] == sorted(layout.CANARY_TABLE_ACTIONS)
        auditor = {s["Sid"]: s for s in self.policies(prod_plan, "eu-west-1", "conflict-auditor")["Statement"]}
        assert auditor["ReadZoneTableStreams"]["Action"] == sorted(layout.STREAM_READ_ACTIONS)
        assert all(r.endswith("/stream/*") for r in auditor["ReadZoneTableStreams"]["Resource"])
        assert auditor["RecordConflictsInZone"]["Resource"] == [
            "arn:aws:dynamodb:eu-west-1:123456789012:table/meridian-prod-eu-conflicts",
            "arn:aws:dynamodb:eu-west-1:123456789012:table/meridian-prod-global-conflicts",
        ]
        evac = self.policies(prod_plan, "eu-west-1", "evacuator")["Statement"]
        assert evac[0]["Action"] == sorted(layout.EVACUATOR_ACCELERATOR_ACTIONS)

    def test_list_streams_has_its_own_statement_on_every_resource(self, prod_plan: Plan) -> None:
        """dynamodb:ListStreams supports no resource-level permission: alone, on "*"; the other stream
        actions stay scoped to the region's zone-table streams."""
        for region in prod_plan.topology.regions:
            statements = self.policies(prod_plan, region, "conflict-auditor")["Statement"]
            listing = [s for s in statements if "dynamodb:ListStreams" in s["Action"]]
            assert listing == [{"Sid": "ListStreams", "Effect": "Allow", "Action": ["dynamodb:ListStreams"], "Resource": ["*"]}]
            (reading,) = [s for s in statements if "dynamodb:GetRecords" in s["Action"]]
            assert reading["Action"] == ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"]
            assert reading["Resource"] and all(r.startswith(f"arn:aws:dynamodb:{region}:") and r.endswith("/stream/*") for r in reading["Resource"])

    def test_execution_role_reads_only_its_regional_secret(self, prod_plan: Plan) -> None:
        doc = self.policies(prod_plan, "ap-southeast-1", "execution-secret")
        (arn,) = doc["Statement"][0]["Resource"]
        assert arn.startswith("arn:aws:secretsmanager:ap-southeast-1:") and doc["Statement"][0]["Action"] == ["secretsmanager:GetSecretValue"]


class TestEdge:
    def test_latency_records_wired_to_each_albs_outputs(self, prod_plan: Plan, prod: Topology) -> None:
        albs = {r.region: r.outputs for r in prod_plan.of_type("aws:lb/loadBalancer:LoadBalancer")}
        checks = {r.inputs["fqdn"]: r for r in prod_plan.of_type("aws:route53/healthCheck:HealthCheck") if r.inputs["type"] == "HTTPS"}
        calculated = {r.outputs["id"]: r for r in prod_plan.of_type("aws:route53/healthCheck:HealthCheck") if r.inputs["type"] == "CALCULATED"}
        latency = [r for r in prod_plan.of_type("aws:route53/record:Record") if r.inputs.get("latencyRoutingPolicies")]
        assert sorted(r.inputs["setIdentifier"] for r in latency) == sorted(prod.regions)
        for record in latency:
            region = record.inputs["setIdentifier"]
            assert record.inputs["latencyRoutingPolicies"] == [{"region": region}]
            (alias,) = record.inputs["aliases"]
            assert alias["name"] == albs[region]["dnsName"] and alias["zoneId"] == albs[region]["zoneId"]
            assert alias["evaluateTargetHealth"] is True
            check_ = checks[f"{region}.{prod.domain}"]
            # The record's check is the CALCULATED one (endpoint AND not evacuated; tests/infra/test_edge.py).
            assert check_.outputs["id"] in calculated[record.inputs["healthCheckId"]].inputs["childHealthchecks"]
            assert check_.inputs["resourcePath"] == "/health/ready" and check_.inputs["enableSni"] is True
            assert check_.inputs["requestInterval"] == 10 and check_.inputs["failureThreshold"] == 3
            assert len(check_.inputs["regions"]) >= 3

    def test_endpoint_groups_point_at_each_alb(self, prod_plan: Plan, prod: Topology) -> None:
        albs = {r.region: r.outputs["arn"] for r in prod_plan.of_type("aws:lb/loadBalancer:LoadBalancer")}
        groups = prod_plan.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
        assert sorted(g.inputs["endpointGroupRegion"] for g in groups) == sorted(prod.regions)
        for g in groups:
            (endpoint,) = g.inputs["endpointConfigurations"]
            assert endpoint["endpointId"] == albs[g.inputs["endpointGroupRegion"]]
            assert endpoint["clientIpPreservationEnabled"] is True
            assert g.inputs["trafficDialPercentage"] == 100 and g.inputs["healthCheckPath"] == "/health/ready"

    def test_accelerator_off(self) -> None:
        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "globalAccelerator": False}, stack="noga")
        assert not [r for r in plan.custom if r.type.startswith("aws:globalaccelerator/")]
        assert check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], plan.topology.regions) == []


class TestAlarms:
    def test_replication_latency_dimensions(self, prod_plan: Plan) -> None:
        """eu-west-1 sends to eu-central-1 both zones' tables, and to us-east-1 only global ones."""
        alarms = {r.name: r for r in prod_plan.in_region("eu-west-1") if r.type == "aws:cloudwatch/metricAlarm:MetricAlarm"}
        # 11 tables to eu-central-1 exceed CloudWatch's 10 metrics per alarm: one alarm per zone.
        to_central = [q for zone in ("eu", "global") for q in alarms[f"eu-west-1-replication-to-eu-central-1-{zone}"].inputs["metricQueries"]]
        dims = [q["metric"]["dimensions"] for q in to_central if q.get("metric")]
        assert {d["ReceivingRegion"] for d in dims} == {"eu-central-1"}
        assert {d["TableName"] for d in dims} >= {"meridian-prod-eu-users", "meridian-prod-global-users", "meridian-prod-directory"}
        to_us = alarms["eu-west-1-replication-to-us-east-1"].inputs["metricQueries"]
        assert not any("-eu-" in q["metric"]["dimensions"]["TableName"] for q in to_us if q.get("metric"))
        assert all(q["metric"]["metricName"] == "ReplicationLatency" for q in to_us if q.get("metric"))

    def test_composite_alarm_invokes_evacuator(self, prod_plan: Plan) -> None:
        composite = [r for r in prod_plan.in_region("us-east-1") if r.type == "aws:cloudwatch/compositeAlarm:CompositeAlarm"]
        (c,) = composite
        assert "5xx-rate" in c.inputs["alarmRule"] and "healthy-hosts-low" in c.inputs["alarmRule"]
        assert c.inputs["alarmActions"][0] == "arn:aws:lambda:us-east-1:123456789012:function:meridian-prod-evacuator"


class TestLambdas:
    def test_handlers_schedule_and_stream_mappings(self, prod_plan: Plan, prod: Topology) -> None:
        for region in prod.regions:
            fns = {r.inputs["name"]: r for r in prod_plan.in_region(region) if r.type == "aws:lambda/function:Function"}
            assert fns["meridian-prod-replication-canary"].inputs["handler"] == "lambdas.replication_canary.handler.lambda_handler"
            rule = [r for r in prod_plan.in_region(region) if r.type == "aws:cloudwatch/eventRule:EventRule"]
            assert rule[0].inputs["scheduleExpression"] == "rate(1 minute)"
            mappings = [r for r in prod_plan.in_region(region) if r.type == "aws:lambda/eventSourceMapping:EventSourceMapping"]
            expected = layout.service_table_names(prod, region)
            assert sorted(m.inputs["eventSourceArn"].split("/")[1] for m in mappings) == expected
            assert all(f":{region}:" in m.inputs["eventSourceArn"] for m in mappings), "each region audits its own replicas"


class TestOutputs:
    def test_exports(self, prod_plan: Plan, prod: Topology) -> None:
        out = prod_plan.outputs
        assert set(out["regions"]) == set(prod.regions)
        assert all(v["albDnsName"].endswith(".elb.amazonaws.com") for v in out["regions"].values())
        assert out["acceleratorDnsName"].endswith(".awsglobalaccelerator.com") and out["acceleratorIps"]
        assert out["tables"]["eu"]["users"] == "meridian-prod-eu-users"
        assert "directory" not in out["tables"]["eu"] and out["tables"]["global"]["directory"] == "meridian-prod-directory"


class TestComponentOutputs:
    @pulumi.runtime.test
    def test_region_outputs_resolve(self) -> pulumi.Output[None]:
        """The Region component's outputs (read by the edge) resolve to the ALB's values, asserted in apply."""
        from infra.components.regional import Region, RegionArgs
        from infra.program import make_providers
        from infra.render import RecordingMocks

        topology = load_topology({"regions": ["us-east-1", "eu-west-1"]}, stack="unit")
        pulumi.runtime.set_mocks(RecordingMocks(), project="meridian", stack="unit", preview=False)
        providers = make_providers(topology)
        region = Region(
            "eu-west-1",
            RegionArgs(
                topology=topology, region="eu-west-1", cidr="10.1.0.0/16", dns_provider=providers["us-east-1"],
                hosted_zone_id="ZTEST", secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:x", stream_arns={},
                image="registry.example/meridian:test",
            ),
            opts=pulumi.ResourceOptions(providers={"aws": providers["eu-west-1"]}),
        )

        def check_(values: list[str]) -> None:
            arn, dns_name, zone_id = values
            assert arn.startswith("arn:aws:elasticloadbalancing:eu-west-1:")
            assert dns_name.endswith(".eu-west-1.elb.amazonaws.com")
            assert zone_id.startswith("Z")

        return pulumi.Output.all(region.alb_arn, region.alb_dns_name, region.alb_zone_id).apply(check_)


# -- property tests over generated topologies ----------------------------------------------------------
POOL = ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"]


@st.composite
def topologies(draw: st.DrawFn) -> dict[str, Any]:
    """Stack config (as a stack file's ``config:``) of a valid topology."""
    regions = draw(st.lists(st.sampled_from(POOL), min_size=2, max_size=6, unique=True))
    n_zones = draw(st.integers(1, 3))
    zones = {f"z{i}": draw(st.lists(st.sampled_from(regions), min_size=1, max_size=len(regions), unique=True)) for i in range(n_zones)}
    return {"regions": regions, "residencyZones": zones}


class TestProperties:
    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(topologies())
    def test_full_set_and_residency(self, config: dict[str, Any]) -> None:
        """Any valid topology: every region gets its full set, no zone table has a replica outside its zone,
        and the policy rules find nothing."""
        plan = render_values(config, stack="prop")
        topology = plan.topology
        assert topology == load_topology(config, stack="prop")
        for region in topology.regions:
            got = counts(plan, region)
            for type_token, n in PER_REGION.items():
                assert got[type_token] == n
        for t in plan.of_type("aws:dynamodb/table:Table"):
            zone = topology.zone(t.inputs["tags"]["meridian:zone"])
            assert {t.region, *[r["regionName"] for r in t.inputs.get("replicas", [])]} == set(zone.regions)
        assert check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], topology.regions) == []

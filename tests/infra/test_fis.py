"""The game day's AWS FIS experiment templates and their role, per region (infra/components/fis.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.components.fis import (
    ALARM_SOURCE,
    DISRUPT_CROSS_REGION,
    FIS_PRINCIPAL,
    GLOBAL_TABLE_TARGET,
    MAX_DURATION,
    PAUSE_REPLICATION,
    SUBNET_TARGET,
    TABLES_PER_ACTION,
    FaultInjection,
    FaultInjectionArgs,
    fault_peer,
    replicated_tables,
    role_policy,
    stop_alarm_arns,
)
from infra.render import ACCOUNT_ID, Plan, PlannedResource, RecordingMocks, render_stack
from meridian.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]

TEMPLATE = "aws:fis/experimentTemplate:ExperimentTemplate"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PLANS = ["dev_plan", "prod_plan"]


def templates(plan: Plan, region: str) -> dict[str, PlannedResource]:
    """fault (pause-replication | disrupt-connectivity) -> the region's template."""
    found = {r.inputs["tags"]["meridian:fault"]: r for r in plan.of_type(TEMPLATE) if r.inputs["tags"]["meridian:region"] == region}
    assert set(found) == {"pause-replication", "disrupt-connectivity"}, (region, sorted(found))
    return found


def by_name(plan: Plan, typ: str, name: str) -> PlannedResource:
    (found,) = [r for r in plan.of_type(typ) if r.name == name]
    return found


def private_subnet_ids(plan: Plan, region: str) -> list[str]:
    return sorted(r.outputs["id"] for r in plan.of_type("aws:ec2/subnet:Subnet")
                  if r.region == region and r.name.startswith(f"{region}-net-private-"))


def alarm_arn(plan: Plan, name: str) -> str:
    alarms = plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") + plan.of_type("aws:cloudwatch/compositeAlarm:CompositeAlarm")
    (found,) = [a for a in alarms if (a.inputs.get("name") or a.inputs.get("alarmName")) == name]
    return str(found.outputs["arn"])


class TestTemplates:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_two_templates_per_region_on_that_regions_provider(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Each region has a pause-replication and a disrupt-connectivity template, both in that region."""
        plan: Plan = request.getfixturevalue(plan_name)
        assert len(plan.of_type(TEMPLATE)) == 2 * len(plan.topology.regions)
        for region in plan.topology.regions:
            for fault, template in templates(plan, region).items():
                assert template.region == region, (fault, template.name)
                assert template.name == f"{region}-fis-{fault}"
                assert template.inputs["tags"]["Name"] == f"meridian-{plan.topology.stack}-{region}-{fault}"
                assert template.inputs["tags"]["meridian:stack"] == f"meridian-{plan.topology.stack}"
                assert template.inputs["experimentOptions"] == {"accountTargeting": "single-account", "emptyTargetResolutionMode": "fail"}

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_pause_replication_targets_exactly_this_regions_replicas(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Every MREC table with a replica here, by the ARN of that replica, in actions of at most the quota's tables."""
        plan: Plan = request.getfixturevalue(plan_name)
        topology = plan.topology
        for region in topology.regions:
            pause = templates(plan, region)["pause-replication"].inputs
            targets = {t["name"]: t for t in pause["targets"]}
            assert all(t["resourceType"] == GLOBAL_TABLE_TARGET and t["selectionMode"] == "ALL" for t in targets.values())
            assert all(len(t["resourceArns"]) <= TABLES_PER_ACTION for t in targets.values())
            arns = sorted(a for t in targets.values() for a in t["resourceArns"])
            expected = sorted(f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{topology.table_name(t, z)}"
                              for z, t in replicated_tables(topology, region))
            assert arns == expected and arns
            assert {a["target"]["value"] for a in pause["actions"]} == set(targets), "every action names one target, each target used"
            for action in pause["actions"]:
                assert action["actionId"] == PAUSE_REPLICATION
                assert action["target"]["key"] == "Tables"
                assert action["parameters"] == [{"key": "duration", "value": MAX_DURATION}]

    def test_mrsc_tables_are_left_out(self) -> None:
        """Pausing an MRSC replica is another fault (strong operations refused there): not in this template."""
        topology = load_topology({"regions": ["us-east-1", "us-east-2", "us-west-2"], "tables": {"stock": {"consistency": "strong"}}},
                                 stack="mrsc")
        zone = topology.global_zone
        assert topology.mechanism(topology.table("stock"), zone) == "mrsc"
        assert ("global", "stock") not in replicated_tables(topology, "us-east-1")
        assert ("global", "users") in replicated_tables(topology, "us-east-1")

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_disrupt_connectivity_cuts_the_private_subnets_off_from_a_zone_peer(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            disrupt = templates(plan, region)["disrupt-connectivity"].inputs
            (target,) = disrupt["targets"]
            assert target["resourceType"] == SUBNET_TARGET and target["selectionMode"] == "ALL"
            subnets = private_subnet_ids(plan, region)
            assert sorted(target["resourceArns"]) == sorted(f"arn:aws:ec2:{region}:{ACCOUNT_ID}:subnet/{s}" for s in subnets)
            (action,) = disrupt["actions"]
            assert action["actionId"] == DISRUPT_CROSS_REGION and action["target"] == {"key": "Subnets", "value": target["name"]}
            params = {p["key"]: p["value"] for p in action["parameters"]}
            peer = fault_peer(plan.topology, region)
            assert params == {"region": peer, "duration": MAX_DURATION}
            assert peer != region and any(region in z.regions and peer in z.regions for z in plan.topology.zones)
            assert disrupt["tags"]["meridian:peer"] == peer

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_stop_conditions_are_the_regions_own_alarms(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """The evacuation composite and the 5xx-rate alarm of the same region (FIS reads alarms in its region)."""
        plan: Plan = request.getfixturevalue(plan_name)
        prefix = f"meridian-{plan.topology.stack}"
        for region in plan.topology.regions:
            expected = sorted(alarm_arn(plan, f"{prefix}-{region}-{s}") for s in ("evacuate", "alb-5xx-rate"))
            assert all(f":cloudwatch:{region}:" in a for a in expected)
            for template in templates(plan, region).values():
                stops = template.inputs["stopConditions"]
                assert all(s["source"] == ALARM_SOURCE for s in stops)
                assert sorted(s["value"] for s in stops) == expected

    def test_fis_templates_output(self, prod_plan: Plan) -> None:
        """``fisTemplates``: region -> the ids of its two templates and the peer of the disruption."""
        out = prod_plan.outputs["fisTemplates"]
        assert set(out) == set(prod_plan.topology.regions)
        for region, ids in out.items():
            found = templates(prod_plan, region)
            assert ids == {"pause_replication": found["pause-replication"].outputs["id"],
                           "disrupt_connectivity": found["disrupt-connectivity"].outputs["id"],
                           "disrupt_peer": fault_peer(prod_plan.topology, region)}


class TestRole:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_templates_use_their_regions_role_which_only_fis_assumes(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            role = by_name(plan, ROLE, f"{region}-fis-role")
            assert role.region == region
            assert {t.inputs["roleArn"] for t in templates(plan, region).values()} == {role.outputs["arn"]}
            (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
            assert statement["Principal"] == {"Service": FIS_PRINCIPAL} and statement["Action"] == "sts:AssumeRole"
            assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT_ID},
                                              "ArnLike": {"aws:SourceArn": f"arn:aws:fis:{region}:{ACCOUNT_ID}:experiment/*"}}

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_policy_reaches_only_this_regions_replicas_subnets_and_vpc(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            doc = json.loads(by_name(plan, ROLE_POLICY, f"{region}-fis-role").inputs["policy"])
            assert by_name(plan, ROLE_POLICY, f"{region}-fis-role").region == region
            statements = {s["Sid"]: s for s in doc["Statement"]}
            assert all(s["Effect"] == "Allow" for s in statements.values())
            actions = [a for s in statements.values() for a in s["Action"]]
            assert not [a for a in actions if "*" in a], "no wildcard action"
            tables = statements["PauseReplicationOfThisRegionsReplicas"]["Resource"]
            pause = templates(plan, region)["pause-replication"].inputs
            assert sorted(tables) == sorted(a for t in pause["targets"] for a in t["resourceArns"])
            for s in statements.values():
                for arn in s["Resource"]:
                    if arn == "*":
                        assert all(a.startswith(("ec2:Describe", "tag:GetResources")) for a in s["Action"]), s["Sid"]
                    else:
                        assert arn.split(":")[3] == region and arn.split(":")[4] == ACCOUNT_ID, (s["Sid"], arn)
            subnets = {f"arn:aws:ec2:{region}:{ACCOUNT_ID}:subnet/{s}" for s in private_subnet_ids(plan, region)}
            swap = statements["SwapRouteTablesOfTheTargetSubnets"]["Resource"]
            assert {a for a in swap if ":subnet/" in a} == subnets, "route tables swapped only on the target subnets"
            vpc = by_name(plan, "aws:ec2/vpc:Vpc", f"{region}-net-vpc").outputs["id"]
            assert f"arn:aws:ec2:{region}:{ACCOUNT_ID}:vpc/{vpc}" in statements["CreateFisRouteTablesInThisVpc"]["Resource"]
            for sid in ("CreateFisRouteTablesInThisVpc", "CreateFisPrefixListsAndInterfaces", "TagWhatFisCreates"):
                assert statements[sid]["Condition"]["StringEquals"]["aws:RequestTag/managedByFIS"] == "true", sid
            assert statements["ChangeOnlyWhatFisCreated"]["Condition"] == {"StringEquals": {"ec2:ResourceTag/managedByFIS": "true"}}
            assert "ec2:DeleteRouteTable" in statements["ChangeOnlyWhatFisCreated"]["Action"]
            assert not any("ec2:DeleteRouteTable" in s["Action"] for sid, s in statements.items() if sid != "ChangeOnlyWhatFisCreated")

    def test_policy_refuses_a_table_of_another_region_or_a_wildcard(self) -> None:
        base: dict[str, Any] = {"partition": "aws", "region": "eu-west-1", "account": ACCOUNT_ID, "subnet_ids": ["subnet-1"], "vpc_id": "vpc-1"}
        with pytest.raises(ValueError, match="one table of this region"):
            role_policy(table_arns=[f"arn:aws:dynamodb:us-east-1:{ACCOUNT_ID}:table/t"], **base)
        with pytest.raises(ValueError, match="one table of this region"):
            role_policy(table_arns=[f"arn:aws:dynamodb:eu-west-1:{ACCOUNT_ID}:table/*"], **base)


class TestSwitch:
    def test_localstack_stack_declares_no_fis_and_says_why(self) -> None:
        """A stack aimed at an emulator (aws:endpoints) has no FIS: no template, no FIS role, one note."""
        plan = render_stack(ROOT / "Pulumi.localstack.yaml")
        assert not plan.of_type(TEMPLATE)
        assert not [r for r in plan.of_type(ROLE) if r.name.endswith("-fis-role")]
        assert plan.outputs["fisTemplates"] == {}
        assert [m for m in plan.messages if "fault injection templates left out" in m and "aws:endpoints" in m]


class TestPureParts:
    def test_peer_is_the_zone_partner_not_list_order(self, prod: Topology) -> None:
        assert fault_peer(prod, "eu-west-1") == "eu-central-1"
        assert fault_peer(prod, "eu-central-1") == "eu-west-1"
        assert fault_peer(prod, "us-east-1") == "ap-southeast-1"  # the global zone's alphabetically first other region

    def test_missing_stop_alarm_is_a_program_error(self) -> None:
        arns = [f"arn:aws:cloudwatch:eu-west-1:{ACCOUNT_ID}:alarm:meridian-x-eu-west-1-evacuate"]
        with pytest.raises(ValueError, match="stop-condition alarms"):
            stop_alarm_arns(arns, prefix="meridian-x", region="eu-west-1")
        other = [*arns, f"arn:aws:cloudwatch:us-east-1:{ACCOUNT_ID}:alarm:meridian-x-eu-west-1-alb-5xx-rate"]
        with pytest.raises(ValueError, match="stop-condition alarms"):
            stop_alarm_arns(other, prefix="meridian-x", region="eu-west-1")


class TestComponent:
    TOPOLOGY = load_topology({"regions": ["us-east-1", "eu-west-1"]}, stack="unit")
    ALARMS = [f"arn:aws:cloudwatch:eu-west-1:{ACCOUNT_ID}:alarm:meridian-unit-eu-west-1-{s}" for s in ("evacuate", "alb-5xx-rate", "conflict-rate")]

    def args(self, **extra: Any) -> dict[str, Any]:
        return {"topology": self.TOPOLOGY, "region": "eu-west-1", "vpc_id": "vpc-1", "subnet_ids": ["subnet-a", "subnet-b"],
                "replica_arns": {"meridian-unit-global-users": f"arn:aws:dynamodb:eu-west-1:{ACCOUNT_ID}:table/meridian-unit-global-users"},
                "alarm_arns": self.ALARMS, **extra}

    def test_args_checked_before_any_child(self) -> None:
        with pytest.raises(ValueError, match="not one of the stack's regions"):
            FaultInjectionArgs(**self.args(region="ap-south-1"))
        with pytest.raises(ValueError, match="1 to 6"):
            FaultInjectionArgs(**self.args(subnet_ids=[f"subnet-{i}" for i in range(7)]))
        with pytest.raises(ValueError, match="no replicated table"):
            FaultInjectionArgs(**self.args(replica_arns={}))

    @pulumi.runtime.test
    def test_outputs_resolve_in_the_components_region(self) -> pulumi.Output[None]:
        """The component's template ids and role ARN resolve; every child is on the region's provider."""
        from infra.program import make_providers

        mocks = RecordingMocks()
        pulumi.runtime.set_mocks(mocks, project="meridian", stack="unit", preview=False)
        providers = make_providers(self.TOPOLOGY)
        fis = FaultInjection("eu-west-1-fis", FaultInjectionArgs(**self.args()),
                             opts=pulumi.ResourceOptions(providers={"aws": providers["eu-west-1"]}))

        def check(values: list[Any]) -> None:
            pause, disrupt, role_arn = values
            assert pause.startswith("eu-west-1-fis-pause-replication") and disrupt.startswith("eu-west-1-fis-disrupt-connectivity")
            assert role_arn.startswith(f"arn:aws:iam::{ACCOUNT_ID}:role/eu-west-1-fis-role")
            children = [r for r in mocks.resources if r.custom and r.name.startswith("eu-west-1-fis")]
            assert len(children) == 4 and {r.region for r in children} == {"eu-west-1"}
            (template,) = [r for r in children if r.name == "eu-west-1-fis-disrupt-connectivity"]
            assert template.inputs["targets"][0]["resourceArns"] == [f"arn:aws:ec2:eu-west-1:{ACCOUNT_ID}:subnet/subnet-{s}" for s in "ab"]
            assert sorted(s["value"] for s in template.inputs["stopConditions"]) == sorted(self.ALARMS[:2])
            assert fis.peer == "us-east-1"

        return pulumi.Output.all(fis.template_ids["pause_replication"], fis.template_ids["disrupt_connectivity"], fis.role.arn).apply(check)

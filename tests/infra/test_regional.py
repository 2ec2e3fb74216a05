"""The Region component's wiring: what each child is called and parented to, what it waits for, where it
lands, and the arguments the component takes.

The plan's mocks record inputs, not the order of creation. What the engine waits for is the request's
``dependencies`` (explicit ``depends_on`` plus every resource whose output is an input), which the SDK
sends to the resource monitor; these tests record those requests at the mock monitor, the same
requests a real `pulumi up` sends to the engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from infra.components.regional import AZ_FILTERS, Region, RegionArgs
from infra.render import Plan, RecordingMocks, render_stack, render_values
from meridian.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
URN_SNAPSHOT = Path(__file__).with_name("regional_urns.json")


@dataclass(frozen=True)
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    dependencies: frozenset[str]


@dataclass
class Registrations:
    plan: Plan
    by_urn: dict[str, Registration]

    def one(self, type_token: str, name: str) -> Registration:
        (found,) = [r for r in self.by_urn.values() if r.type == type_token and r.name == name]
        return found

    def waits_for(self, reg: Registration) -> set[tuple[str, str]]:
        """(type, name) of everything the engine creates before ``reg``: its dependencies, transitively."""
        seen: set[str] = set()
        pending = list(reg.dependencies)
        while pending:
            urn = pending.pop()
            if urn in seen or urn not in self.by_urn:
                continue
            seen.add(urn)
            pending.extend(self.by_urn[urn].dependencies)
        return {(self.by_urn[u].type, self.by_urn[u].name) for u in seen}


def tail(urn: str) -> str:
    """``<qualified type>::<name>`` of a URN, without the stack root (which depends on how the program runs)."""
    if not urn:
        return ""
    parts = urn.split("::")
    return f"{parts[2].removeprefix('pulumi:pulumi:Stack$')}::{parts[3]}"


def render_recording(render: Callable[[], Plan]) -> Registrations:
    """Run ``render`` and record every RegisterResource request the SDK sends to the monitor."""
    seen: dict[str, Registration] = {}
    original = MockMonitor.RegisterResource

    def register(self: MockMonitor, request: Any) -> Any:
        response = original(self, request)
        seen[response.urn] = Registration(response.urn, request.type, request.name, request.parent, frozenset(request.dependencies))
        return response

    with mock.patch.object(MockMonitor, "RegisterResource", register):
        plan = render()
    return Registrations(plan, seen)


@pytest.fixture(scope="module")
def prod_registrations() -> Registrations:
    return render_recording(lambda: render_stack(ROOT / "Pulumi.prod.yaml"))


@pytest.fixture(scope="module")
def dev_registrations() -> Registrations:
    return render_recording(lambda: render_stack(ROOT / "Pulumi.dev.yaml"))


@pytest.fixture(params=["prod_registrations", "dev_registrations"])
def registrations(request: pytest.FixtureRequest) -> Iterator[Registrations]:
    yield request.getfixturevalue(request.param)


class TestUrns:
    def test_children_keep_their_names_types_and_parents(self) -> None:
        """Every child the Region had before its concerns moved to their own modules keeps its URN and parent
        (a new URN replaces the resource on AWS). Snapshot of the code before the split, for a fixed topology;
        per-table alarms and stream mappings are left out, they follow the table list."""
        snapshot = json.loads(URN_SNAPSHOT.read_text())
        reg = render_recording(lambda: render_values(snapshot["config"], stack=snapshot["stack"]))
        now = {tail(r.urn): tail(r.parent) for r in reg.by_urn.values()}
        missing = [urn for urn, _ in snapshot["resources"] if urn not in now]
        assert missing == [], f"URNs that would be replaced: {missing}"
        moved = [(urn, parent, now[urn]) for urn, parent in snapshot["resources"] if parent and now[urn] != parent]
        assert moved == [], f"parents changed: {moved}"


class TestCreationOrder:
    def test_internet_facing_alb_waits_for_the_internet_gateway_and_its_route(self, registrations: Registrations) -> None:
        """AWS refuses an internet-facing ALB in a VPC without an attached internet gateway."""
        for region in registrations.plan.topology.regions:
            alb = registrations.one("aws:lb/loadBalancer:LoadBalancer", f"{region}-alb")
            before = registrations.waits_for(alb)
            assert ("aws:ec2/internetGateway:InternetGateway", f"{region}-net-igw") in before
            assert ("aws:ec2/route:Route", f"{region}-net-public-default") in before
            for i in range(3):
                assert ("aws:ec2/routeTableAssociation:RouteTableAssociation", f"{region}-net-public-{i}") in before

    def test_functions_wait_for_their_roles_policies(self, registrations: Registrations) -> None:
        """A function is created after every inline policy of its role, not only the role."""
        plan = registrations.plan
        for region in plan.topology.regions:
            for fn in ("replication-canary", "conflict-auditor", "evacuator"):
                function = registrations.one("aws:lambda/function:Function", f"{region}-{fn}")
                before = registrations.waits_for(function)
                for policy in (f"{region}-{fn}", f"{region}-{fn}-logs"):
                    assert ("aws:iam/rolePolicy:RolePolicy", policy) in before, (function.name, policy)

    def test_stream_mappings_wait_for_the_auditors_stream_policy(self, registrations: Registrations) -> None:
        """Creating an event source mapping checks the function's role may read the stream."""
        mappings = [r for r in registrations.by_urn.values() if r.type == "aws:lambda/eventSourceMapping:EventSourceMapping"]
        assert mappings
        for m in mappings:
            region = m.name.split("-audit-")[0]
            assert ("aws:iam/rolePolicy:RolePolicy", f"{region}-conflict-auditor") in registrations.waits_for(m), m.name

    def test_task_definitions_wait_for_both_roles_permissions(self, registrations: Registrations) -> None:
        for region in registrations.plan.topology.regions:
            before = registrations.waits_for(registrations.one("aws:ecs/taskDefinition:TaskDefinition", f"{region}-task"))
            assert ("aws:iam/rolePolicy:RolePolicy", f"{region}-execution-secret") in before
            assert ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", f"{region}-execution") in before
            assert ("aws:iam/rolePolicy:RolePolicy", f"{region}-task-tables") in before


class TestAvailabilityZones:
    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_subnets_only_in_regular_zones(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """The mocks answer like an account with a Local Zone: unfiltered, `<region>-lz-1a` sorts first."""
        plan: Plan = request.getfixturevalue(plan_name)
        for subnet in plan.of_type("aws:ec2/subnet:Subnet"):
            az = subnet.inputs["availabilityZone"]
            assert "-lz-" not in az and az.startswith(subnet.region or "?"), (subnet.name, az)
        lookups = [(region, args) for token, region, args in plan.invokes if token == "aws:index/getAvailabilityZones:getAvailabilityZones"]
        assert sorted(region for region, _ in lookups) == sorted(plan.topology.regions)
        for _, args in lookups:
            assert args["state"] == "available"
            assert args["filters"] == [{"name": "opt-in-status", "values": ["opt-in-not-required"]}]

    def test_filter_is_the_documented_one(self) -> None:
        (f,) = AZ_FILTERS
        assert (f.name, f.values) == ("opt-in-status", ["opt-in-not-required"])


class TestArgs:
    TOPOLOGY = load_topology({"regions": ["us-east-1", "eu-west-1"]}, stack="unit")

    def args(self, mocks: RecordingMocks | None = None, **extra: Any) -> dict[str, Any]:
        from infra.program import make_providers

        pulumi.runtime.set_mocks(mocks or RecordingMocks(), project="meridian", stack="unit", preview=False)
        providers = make_providers(self.TOPOLOGY)
        return {
            "topology": self.TOPOLOGY, "region": "eu-west-1", "cidr": "10.1.0.0/16", "dns_provider": providers["us-east-1"],
            "hosted_zone_id": "ZTEST", "secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x", "stream_arns": {},
            **extra,
        }

    def test_image_is_required_when_the_stack_sets_none(self) -> None:
        with pytest.raises(ValueError, match="no service image"):
            RegionArgs(**self.args())

    def test_unknown_region_refused(self) -> None:
        with pytest.raises(ValueError, match="not one of the stack's regions"):
            RegionArgs(**self.args(region="ap-south-1", image="x"))

    @pulumi.runtime.test
    def test_image_argument_is_the_task_image(self) -> pulumi.Output[None]:
        """``image`` (an Output, as the ECR image is) becomes the container image of the task definition."""
        mocks = RecordingMocks()
        args = self.args(mocks, image=pulumi.Output.from_input("123456789012.dkr.ecr.eu-west-1.amazonaws.com/meridian:src-1"))
        region = Region("eu-west-1", RegionArgs(**args))

        def check(_: Any) -> None:
            (td,) = [r for r in mocks.resources if r.type == "aws:ecs/taskDefinition:TaskDefinition"]
            (container,) = json.loads(td.inputs["containerDefinitions"])
            assert container["image"] == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/meridian:src-1"

        return region.service_name.apply(check)

    def test_stack_image_is_the_default(self) -> None:
        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "image": "registry.example/meridian:1"}, stack="img")
        for td in plan.of_type("aws:ecs/taskDefinition:TaskDefinition"):
            (container,) = json.loads(td.inputs["containerDefinitions"])
            assert container["image"] == "registry.example/meridian:1"

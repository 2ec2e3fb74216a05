"""The network component in its two layouts (meridian:networkMode ha | lean), as the program declares it."""

from __future__ import annotations

from collections import Counter
from dataclasses import FrozenInstanceError

import pytest

from infra.components.network import GATEWAY_ENDPOINTS, INTERFACE_ENDPOINTS, NetworkArgs
from infra.render import Plan, PlannedResource, render_values
from meridian.topology import TopologyError, load_topology

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
NAT = "aws:ec2/natGateway:NatGateway"
EIP = "aws:ec2/eip:Eip"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
SUBNET = "aws:ec2/subnet:Subnet"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
AZS = 3


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {mode: render_values({"regions": REGIONS, "networkMode": mode}, stack="net") for mode in ("ha", "lean")}


def per_region(plan: Plan, type_token: str, **inputs: object) -> Counter[str | None]:
    return Counter(r.region for r in plan.of_type(type_token) if all(r.inputs.get(k) == v for k, v in inputs.items()))


def by_id(plan: Plan, type_token: str) -> dict[str, PlannedResource]:
    return {r.outputs["id"]: r for r in plan.of_type(type_token)}


class TestCounts:
    def test_ha_has_a_nat_and_every_interface_endpoint_in_every_az(self, plans: dict[str, Plan]) -> None:
        """ha (the default): 3 NAT gateways (and their addresses), 4 interface endpoints with an ENI in each of 3 AZs, 2 gateways."""
        plan = plans["ha"]
        assert per_region(plan, NAT) == {r: AZS for r in REGIONS}
        assert per_region(plan, EIP) == {r: AZS for r in REGIONS}
        assert per_region(plan, ENDPOINT, vpcEndpointType="Interface") == {r: len(INTERFACE_ENDPOINTS) for r in REGIONS}
        assert per_region(plan, ENDPOINT, vpcEndpointType="Gateway") == {r: len(GATEWAY_ENDPOINTS) for r in REGIONS}
        for endpoint in plan.of_type(ENDPOINT):
            if endpoint.inputs["vpcEndpointType"] == "Interface":
                assert len(endpoint.inputs["subnetIds"]) == AZS and endpoint.inputs["privateDnsEnabled"] is True

    def test_lean_has_one_nat_no_interface_endpoint_and_keeps_the_gateways(self, plans: dict[str, Plan]) -> None:
        """lean: one NAT gateway per region, no interface endpoint (nor their security group), the free gateways stay."""
        plan = plans["lean"]
        assert per_region(plan, NAT) == {r: 1 for r in REGIONS}
        assert per_region(plan, EIP) == {r: 1 for r in REGIONS}
        assert per_region(plan, ENDPOINT, vpcEndpointType="Interface") == {}
        services = {(r.region, r.inputs["serviceName"]) for r in plan.of_type(ENDPOINT)}
        assert services == {(r, f"com.amazonaws.{r}.{s}") for r in REGIONS for s in GATEWAY_ENDPOINTS}
        assert not [sg for sg in plan.of_type(SECURITY_GROUP) if sg.name.endswith("-endpoints")]

    def test_lean_nat_sits_in_the_first_az_public_subnet(self, plans: dict[str, Plan]) -> None:
        plan = plans["lean"]
        subnets = by_id(plan, SUBNET)
        for nat in plan.of_type(NAT):
            subnet = subnets[nat.inputs["subnetId"]]
            assert subnet.inputs["tags"]["tier"] == "public"
            assert subnet.inputs["availabilityZone"] == f"{nat.region}a"


class TestRoutes:
    @pytest.mark.parametrize("mode", ["ha", "lean"])
    def test_every_private_subnet_routes_to_a_nat_of_its_region(self, plans: dict[str, Plan], mode: str) -> None:
        """Each AZ's private route table keeps a default route through a NAT gateway in the same region (lean: the one NAT)."""
        plan = plans[mode]
        nats, tables, subnets = by_id(plan, NAT), by_id(plan, ROUTE_TABLE), by_id(plan, SUBNET)
        defaults = {r.inputs["routeTableId"]: r for r in plan.of_type(ROUTE) if r.inputs.get("destinationCidrBlock") == "0.0.0.0/0"}
        private = [s for s in subnets.values() if s.inputs["tags"]["tier"] == "private"]
        assert len(private) == AZS * len(REGIONS)
        for subnet_id, subnet in ((i, s) for i, s in subnets.items() if s in private):
            (association,) = [a for a in plan.of_type(ASSOCIATION) if a.inputs["subnetId"] == subnet_id]
            table = tables[association.inputs["routeTableId"]]
            route = defaults[association.inputs["routeTableId"]]
            nat = nats[route.inputs["natGatewayId"]]
            assert table.region == route.region == nat.region == subnet.region
        used = Counter(nats[defaults[t].inputs["natGatewayId"]].name for t in defaults if defaults[t].inputs.get("natGatewayId"))
        expected_per_nat = 1 if mode == "ha" else AZS
        assert set(used.values()) == {expected_per_nat}

    def test_gateway_endpoints_serve_every_private_route_table_in_both_modes(self, plans: dict[str, Plan]) -> None:
        for plan in plans.values():
            tables = by_id(plan, ROUTE_TABLE)
            for endpoint in plan.of_type(ENDPOINT):
                if endpoint.inputs["vpcEndpointType"] == "Gateway":
                    names = sorted(tables[t].name for t in endpoint.inputs["routeTableIds"])
                    assert names == [f"{endpoint.region}-net-private-rt-{i}" for i in range(AZS)]


class TestNames:
    def test_lean_renames_nothing(self, plans: dict[str, Plan]) -> None:
        """Every lean resource has the (type, name) it has in ha: switching modes adds or deletes, never replaces by rename."""
        ha = {(r.type, r.name) for r in plans["ha"].resources}
        lean = {(r.type, r.name) for r in plans["lean"].resources}
        assert lean < ha
        dropped = Counter(t for t, _ in ha - lean)
        per = len(REGIONS)
        assert dropped == {NAT: 2 * per, EIP: 2 * per, ENDPOINT: len(INTERFACE_ENDPOINTS) * per, SECURITY_GROUP: per}

    def test_ha_names_are_todays(self, plans: dict[str, Plan]) -> None:
        """The ha layout keeps the names it always had (a rename would replace NAT gateways and endpoints on AWS)."""
        names = {r.name for r in plans["ha"].resources if r.region == "us-east-1" and r.type in (NAT, EIP, ENDPOINT, ROUTE)}
        assert names == {
            *(f"us-east-1-net-nat-{i}" for i in range(AZS)),
            *(f"us-east-1-net-private-default-{i}" for i in range(AZS)),
            "us-east-1-net-public-default",
            *(f"us-east-1-net-{s.replace('.', '-')}" for s in (*INTERFACE_ENDPOINTS, *GATEWAY_ENDPOINTS)),
        }


class TestConfig:
    def test_default_is_ha(self) -> None:
        assert load_topology({"regions": ["us-east-1", "us-west-2"]}).network_mode == "ha"

    def test_unknown_mode_is_one_line(self) -> None:
        with pytest.raises(TopologyError, match=r"meridian:networkMode is 'cheap'; use ha or lean"):
            load_topology({"regions": ["us-east-1", "us-west-2"], "networkMode": "cheap"})

    def test_args_check_the_mode(self) -> None:
        with pytest.raises(ValueError, match="network mode"):
            NetworkArgs(region="us-east-1", cidr="10.0.0.0/16", az_names=("a", "b"), mode="cheap")  # type: ignore[arg-type]
        args = NetworkArgs(region="us-east-1", cidr="10.0.0.0/16", az_names=("a", "b", "c"), mode="lean")
        assert args.nat_azs == (0,) and args.interface_endpoints == ()
        with pytest.raises(FrozenInstanceError):
            args.mode = "ha"  # type: ignore[misc]

    def test_topology_round_trip_keeps_the_mode(self) -> None:
        from meridian.topology import Topology

        topology = load_topology({"regions": ["us-east-1", "us-west-2"], "networkMode": "lean"})
        assert Topology.from_json(topology.to_json()).network_mode == "lean"

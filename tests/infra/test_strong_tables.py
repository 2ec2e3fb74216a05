"""The strong keys' tables as the program declares them: MRSC (STRONG replicas, a witness where one is
configured) where the zone's regions form an MRSC set, plain global tables with one owner region per
key elsewhere; and impossible MRSC layouts still refused."""

from __future__ import annotations

import pytest

from infra.render import Plan, render_values
from meridian.topology import TopologyError, load_topology

TABLE = "aws:dynamodb/table:Table"
STRONG_KEYS = ("stock", "reservations", "claims")


def tables(plan: Plan) -> dict[str, dict]:
    return {t.inputs["tags"]["meridian:table"]: t.inputs for t in plan.of_type(TABLE)}


def modes(inputs: dict) -> set[str]:
    return {r["consistencyMode"] for r in inputs.get("replicas", [])}


def test_prod_strong_keys_are_owner_region_global_tables(prod_plan: Plan) -> None:
    """Four regions on three continents are no MRSC set: eventual replicas, one owner region per key."""
    declared = tables(prod_plan)
    for name in STRONG_KEYS:
        inputs = declared[name]
        assert inputs["name"] == f"meridian-prod-{name}"
        assert inputs["tags"]["meridian:zone"] == "global"
        assert {r["regionName"] for r in inputs["replicas"]} == {"eu-west-1", "eu-central-1", "ap-southeast-1"}
        assert modes(inputs) == {"EVENTUAL"} and "globalTableWitness" not in inputs
        assert "ttl" not in inputs
    topology = prod_plan.topology
    assert {topology.mechanism(topology.table(n), topology.global_zone) for n in STRONG_KEYS} == {"owner"}


def test_three_regions_of_one_mrsc_set_get_strong_replicas() -> None:
    plan = render_values({"regions": ["us-east-1", "us-east-2", "us-west-2"]}, stack="us")
    declared = tables(plan)
    for name in STRONG_KEYS:
        assert modes(declared[name]) == {"STRONG"}, name
        assert len(declared[name]["replicas"]) == 2  # plus the table's own region
    assert modes(declared["users"]) == {"EVENTUAL"}  # everything else stays available under partition


def test_two_regions_and_a_witness() -> None:
    plan = render_values({"regions": ["us-east-1", "us-west-2"],
                          "tables": {"stock": {"consistency": "strong", "witnessRegion": "us-east-2"}}}, stack="w")
    declared = tables(plan)
    assert modes(declared["stock"]) == {"STRONG"}
    assert declared["stock"]["globalTableWitness"] == {"regionName": "us-east-2"}
    assert modes(declared["claims"]) == {"EVENTUAL"}  # no witness: owner region


@pytest.mark.parametrize(("config", "why"), [
    ({"regions": ["us-east-1", "eu-west-1"], "tables": {"stock": {"consistency": "strong", "witnessRegion": "us-east-2"}}},
     "one MRSC region set"),
    ({"regions": ["us-east-1", "us-west-2"], "tables": {"stock": {"consistency": "strong", "witnessRegion": "us-west-2"}}},
     "holds no replica"),
    ({"regions": ["us-east-1", "us-east-2", "us-west-2"], "tables": {"idempotency": {"consistency": "strong"}}}, "TTL"),
    ({"regions": ["us-east-1", "us-east-2"], "tables": {"users": {"consistency": "strong"}}}, "exactly 3 replicas"),
])
def test_impossible_mrsc_layouts_are_refused(config: dict, why: str) -> None:
    with pytest.raises(TopologyError, match=why):
        load_topology(config, stack="bad")

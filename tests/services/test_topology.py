"""The topology model: loading, validation messages, serialization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.topology import (
    CONFIG_KEYS,
    DEFAULT_TABLES,
    GLOBAL_ZONE,
    Topology,
    TopologyError,
    load_stack_file,
    load_topology,
)

ROOT = Path(__file__).resolve().parents[2]


def topo(**config: Any) -> Topology:
    config.setdefault("regions", ["us-east-1", "eu-west-1"])
    return load_topology(config, stack="test")


def error_of(**config: Any) -> str:
    with pytest.raises(TopologyError) as info:
        topo(**config)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


class TestExampleStacks:
    def test_dev_has_two_regions_and_implicit_global_zone(self) -> None:
        """Pulumi.dev.yaml: 2 regions, no explicit zone, so the implicit all-regions zone."""
        t = load_stack_file(ROOT / "Pulumi.dev.yaml")
        assert t.stack == "dev" and t.project == "meridian"
        assert t.regions == ("us-east-1", "us-west-2")
        assert [(z.name, z.regions, z.implicit) for z in t.zones] == [("global", t.regions, True)]

    def test_prod_has_eu_zone_and_global(self) -> None:
        """Pulumi.prod.yaml: 4 regions, an eu zone of two regions and the implicit global zone."""
        t = load_stack_file(ROOT / "Pulumi.prod.yaml")
        assert t.regions == ("us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1")
        assert t.zone("eu").regions == ("eu-west-1", "eu-central-1")
        assert t.global_zone.name == GLOBAL_ZONE and t.global_zone.implicit
        assert t.table_name("users", "eu") == "meridian-prod-eu-users"
        assert t.table_name("directory", "eu") == "meridian-prod-directory"

    def test_tables_in_region_respect_zones(self) -> None:
        """A US region holds no EU table; an EU region holds both zones' tables."""
        t = load_stack_file(ROOT / "Pulumi.prod.yaml")
        assert "eu" not in t.tables_in_region("us-east-1")
        assert set(t.tables_in_region("eu-west-1")) == {"eu", "global"}
        assert t.tables_in_region("eu-west-1")["global"]["directory"] == "meridian-prod-directory"
        assert "directory" not in t.tables_in_region("eu-west-1")["eu"]

    def test_pulumi_yaml_declares_every_key_with_the_same_default(self) -> None:
        """Pulumi.yaml's typed config and the loader's defaults never drift apart."""
        project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
        declared = {k: v for k, v in project["config"].items() if ":" not in k}
        assert set(declared) == set(CONFIG_KEYS)
        for key, (kind, default, _) in CONFIG_KEYS.items():
            assert declared[key]["type"] == kind, key
            assert declared[key].get("description"), key
            if default is None:
                assert "default" not in declared[key], f"{key} is required"
            else:
                assert declared[key]["default"] == default, key
        assert project["main"] == "infra/"
        assert project["config"]["pulumi:disable-default-providers"] == ["aws"]


class TestValidation:
    def test_zone_naming_unlisted_region(self) -> None:
        """A zone naming a region outside meridian:regions names both."""
        msg = error_of(residencyZones={"eu": ["eu-west-1", "eu-west-3"]})
        assert "'eu'" in msg and "'eu-west-3'" in msg and "meridian:regions" in msg

    def test_unknown_region(self) -> None:
        """Region names are checked against botocore's partition data."""
        assert "'us-middle-1'" in error_of(regions=["us-east-1", "us-middle-1"])

    def test_gov_cloud_region_is_known(self) -> None:
        """Regions of other partitions come from botocore too, not a hand-written list."""
        assert topo(regions=["us-gov-east-1", "us-gov-west-1"]).regions == ("us-gov-east-1", "us-gov-west-1")

    def test_too_few_regions(self) -> None:
        assert "at least 2" in error_of(regions=["us-east-1"])

    def test_regions_missing(self) -> None:
        with pytest.raises(TopologyError, match="meridian:regions is not set"):
            load_topology({})

    def test_duplicate_region(self) -> None:
        assert "us-east-1 more than once" in error_of(regions=["us-east-1", "eu-west-1", "us-east-1"])

    def test_dial_out_of_range(self) -> None:
        assert "0..100" in error_of(trafficDials={"us-east-1": 101})
        assert "0..100" in error_of(trafficDials={"us-east-1": -1})

    def test_dial_for_unknown_region(self) -> None:
        assert "'ap-south-1'" in error_of(trafficDials={"ap-south-1": 50})

    @pytest.mark.parametrize("interval", [5, 20, 60])
    def test_health_check_interval(self, interval: int) -> None:
        assert "10 or 30" in error_of(healthCheckInterval=interval)

    def test_failure_threshold(self) -> None:
        assert "1 to 10" in error_of(failureThreshold=11)

    def test_unknown_key(self) -> None:
        assert "meridian:regoins" in error_of(regoins=["us-east-1"])

    def test_string_numbers_from_pulumi_config_set(self) -> None:
        """`pulumi config set meridian:healthCheckInterval 10` stores a string; it is read as a number."""
        assert topo(healthCheckInterval="10").routing.health_check_interval == 10

    def test_global_zone_name_reserved(self) -> None:
        assert "reserved" in error_of(regions=["us-east-1", "eu-west-1"], residencyZones={"global": ["eu-west-1"]})

    def test_sizing_order(self) -> None:
        assert "minCount" in error_of(minCount=5, desiredCount=2)


class TestStrongConsistency:
    EU3 = ["eu-west-1", "eu-west-2", "eu-central-1"]

    def test_three_replicas_in_one_set_ok(self) -> None:
        t = topo(regions=self.EU3, residencyZones={"eu": self.EU3}, tables={"users": {"consistency": "strong"}})
        assert [z.name for z in t.zones] == ["eu"], "eu covers every region, so no implicit zone"
        assert t.table("users").consistency == "strong"

    def test_zone_with_four_regions_refused(self) -> None:
        """The implicit global zone has 4 regions: MRSC needs exactly 3."""
        msg = error_of(regions=[*self.EU3, "us-east-1"], tables={"users": {"consistency": "strong"}})
        assert "exactly 3 replicas" in msg and "'users'" in msg

    def test_regions_across_sets_refused(self) -> None:
        msg = error_of(regions=["eu-west-1", "us-east-1", "us-east-2"], tables={"users": {"consistency": "strong"}})
        assert "MRSC region set" in msg

    def test_two_plus_witness_ok(self) -> None:
        t = topo(regions=["us-east-1", "us-east-2"], tables={"orders": {"consistency": "strong", "witnessRegion": "us-west-2"}})
        assert t.table("orders").witness_region == "us-west-2"

    def test_two_without_witness_refused(self) -> None:
        assert "2 plus a witness" in error_of(regions=["us-east-1", "us-east-2"], tables={"orders": {"consistency": "strong"}})

    def test_witness_outside_set_refused(self) -> None:
        msg = error_of(regions=["us-east-1", "us-east-2"], tables={"orders": {"consistency": "strong", "witnessRegion": "eu-west-1"}})
        assert "MRSC region set" in msg

    def test_witness_that_is_a_replica_refused(self) -> None:
        msg = error_of(regions=["us-east-1", "us-east-2"], tables={"orders": {"consistency": "strong", "witnessRegion": "us-east-1"}})
        assert "holds no replica" in msg

    def test_ttl_table_refused(self) -> None:
        msg = error_of(regions=["us-east-1", "us-east-2", "us-west-2"], tables={"idempotency": {"consistency": "strong"}})
        assert "TTL" in msg

    def test_unknown_table(self) -> None:
        assert "'profiles'" in error_of(tables={"profiles": {"consistency": "strong"}})


class TestStackFile:
    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(TopologyError, match="does not exist"):
            load_stack_file(tmp_path / "Pulumi.nope.yaml")

    def test_bad_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "Pulumi.x.yaml"
        path.write_text("config: [unclosed\n")
        with pytest.raises(TopologyError, match="not valid YAML"):
            load_stack_file(path)

    def test_json_string_values(self, tmp_path: Path) -> None:
        """`pulumi config set meridian:regions '[...]'` (without --path) stores JSON text; it is parsed."""
        path = tmp_path / "Pulumi.x.yaml"
        path.write_text(yaml.safe_dump({"config": {"meridian:regions": '["us-east-1","eu-west-1"]'}}))
        assert load_stack_file(path).regions == ("us-east-1", "eu-west-1")

    def test_other_namespaces_ignored(self, tmp_path: Path) -> None:
        path = tmp_path / "Pulumi.x.yaml"
        path.write_text(yaml.safe_dump({"config": {"aws:region": "us-east-1", "meridian:regions": ["us-east-1", "us-west-2"]}}))
        assert load_stack_file(path).stack == "x"


# -- property tests: any valid topology survives its JSON form ---------------------------------------
REGION_POOL = ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1", "ap-southeast-1", "ap-northeast-1"]


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    regions = draw(st.lists(st.sampled_from(REGION_POOL), min_size=2, max_size=6, unique=True))
    zone_count = draw(st.integers(0, 3))
    zones = {
        f"z{i}": draw(st.lists(st.sampled_from(regions), min_size=1, max_size=len(regions), unique=True))
        for i in range(zone_count)
    }
    dials = draw(st.dictionaries(st.sampled_from(regions), st.integers(0, 100), max_size=len(regions)))
    return {
        "regions": regions,
        "residencyZones": zones,
        "trafficDials": dials,
        "healthCheckInterval": draw(st.sampled_from([10, 30])),
        "failureThreshold": draw(st.integers(1, 10)),
        "globalAccelerator": draw(st.booleans()),
    }


class TestRoundTrip:
    @settings(max_examples=60, deadline=None)
    @given(configs())
    def test_json_round_trip(self, config: dict[str, Any]) -> None:
        """to_json/from_json is the identity on every valid topology."""
        t = load_topology(config, stack="prop")
        again = Topology.from_json(t.to_json())
        assert again == t
        assert json.loads(again.to_json()) == json.loads(t.to_json())

    @settings(max_examples=60, deadline=None)
    @given(configs())
    def test_every_region_has_a_zone_and_the_directory(self, config: dict[str, Any]) -> None:
        """There is always exactly one all-regions zone, and every region holds the directory."""
        t = load_topology(config, stack="prop")
        assert sum(set(z.regions) == set(t.regions) for z in t.zones) >= 1
        for region in t.regions:
            names = {n for tables in t.tables_in_region(region).values() for n in tables}
            assert {s.name for s in DEFAULT_TABLES} <= names

    def test_malformed_serialized_topology(self) -> None:
        with pytest.raises(TopologyError, match="malformed"):
            Topology.from_json('{"regions": []}')
        with pytest.raises(TopologyError, match="not JSON"):
            Topology.from_json("{")

"""Each region's certificate and its DNS validation records."""

from __future__ import annotations

from infra.render import Plan, render_values

RECORD = "aws:route53/record:Record"


def non_alias_records(plan: Plan) -> list[dict[str, object]]:
    return [r.inputs for r in plan.of_type(RECORD) if not r.inputs.get("aliases")]


class TestValidationRecords:
    def test_dns_ttl_is_the_ttl_of_every_non_alias_record(self) -> None:
        """meridian:dnsTtl sets the TTL of the records the program writes itself (alias records take the target's)."""
        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "dnsTtl": 123}, stack="ttl")
        assert plan.topology.routing.dns_ttl == 123
        records = non_alias_records(plan)
        # apex + global (once, shared by both regions) + one per region
        assert len(records) == 4
        assert {r["ttl"] for r in records} == {123}
        assert all(r["type"] == "CNAME" for r in records)

    def test_default_ttl(self, prod_plan: Plan) -> None:
        assert prod_plan.topology.routing.dns_ttl == 60
        assert {r["ttl"] for r in non_alias_records(prod_plan)} == {60}

    def test_alias_records_carry_no_ttl(self, prod_plan: Plan) -> None:
        assert all("ttl" not in r.inputs for r in prod_plan.of_type(RECORD) if r.inputs.get("aliases"))

"""`meridian:deletionProtection`: on by default (DynamoDB deletion protection on every table and replica, and
Pulumi `protect`), off only when a stack says so for a teardown."""

from __future__ import annotations

from pathlib import Path

from test_edge import registrations

from infra.render import Plan, render_stack, render_values
from policy.rules import Res, check

ROOT = Path(__file__).resolve().parents[2]
TABLE = "aws:dynamodb/table:Table"


def protections(plan: Plan) -> set[bool]:
    found = set()
    for t in plan.of_type(TABLE):
        found.add(t.inputs["deletionProtectionEnabled"])
        found |= {r["deletionProtectionEnabled"] for r in t.inputs.get("replicas", [])}
    return found


class TestDeletionProtection:
    def test_on_by_default(self) -> None:
        seen = registrations(lambda: render_stack(ROOT / "Pulumi.dev.yaml"))
        tables = [r for r in seen if r.type == TABLE]
        assert tables and all(r.protect for r in tables)
        assert protections(render_stack(ROOT / "Pulumi.dev.yaml")) == {True}

    def test_off_for_a_teardown(self) -> None:
        """false turns off both DynamoDB's deletion protection (table and replicas) and Pulumi's protect."""
        config = {"regions": ["us-east-1", "us-west-2"], "deletionProtection": False}
        seen = registrations(lambda: render_values(config, stack="teardown"))
        tables = [r for r in seen if r.type == TABLE]
        assert tables and not any(r.protect for r in tables)
        plan = render_values(config, stack="teardown")
        assert protections(plan) == {False}
        # The policy rule still says so: the teardown's `pulumi up` runs without the policy pack (docs/runbooks/teardown.md).
        violations = check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], plan.topology.regions)
        assert {v.rule for v in violations} == {"tables-protected"}

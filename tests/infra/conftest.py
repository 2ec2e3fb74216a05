from __future__ import annotations

from pathlib import Path

import pytest

from infra.render import Plan, render_stack
from meridian.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_STACKS = sorted(p.name for p in ROOT.glob("Pulumi.*.yaml"))


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    """The prod stack as `pulumi preview` runs it: infra/__main__.py with the CLI's config."""
    return render_stack(ROOT / "Pulumi.prod.yaml")


@pytest.fixture(scope="session")
def dev_plan() -> Plan:
    return render_stack(ROOT / "Pulumi.dev.yaml")


@pytest.fixture(scope="session")
def prod(prod_plan: Plan) -> Topology:
    return prod_plan.topology


@pytest.fixture(scope="session")
def dev(dev_plan: Plan) -> Topology:
    return dev_plan.topology

from __future__ import annotations

from pathlib import Path

import pytest

from infra.render import Plan, render
from meridian.topology import Topology, load_stack_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prod() -> Topology:
    return load_stack_file(ROOT / "Pulumi.prod.yaml")


@pytest.fixture(scope="session")
def dev() -> Topology:
    return load_stack_file(ROOT / "Pulumi.dev.yaml")


@pytest.fixture(scope="session")
def prod_plan(prod: Topology) -> Plan:
    return render(prod)


@pytest.fixture(scope="session")
def dev_plan(dev: Topology) -> Plan:
    return render(dev)

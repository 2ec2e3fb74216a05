"""The `oversell` scenario on a local run: stock never oversold across a partition and a region loss, and
the price of that — requests refused while the sku's owner cannot be reached — measured per region."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_local_run import STACK

from meridian.topology import load_stack_file
from meridian_cli.local_cmds import start_local, stop_local
from meridian_local import oversell

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("oversell")
    stack = root / "Pulumi.e2e.yaml"
    stack.write_text(STACK)
    state_dir = root / "state"
    start_local(str(stack), state_dir, time_scale=0.1, latency_scale=0, lag=0.2)
    yield stack, state_dir
    assert stop_local(state_dir) == []


def test_never_oversold_and_the_price_is_reported(local: tuple[Path, Path]) -> None:
    stack, state_dir = local
    topology = load_stack_file(stack)
    result = asyncio.run(oversell.run(state_dir, topology, units=40, per_phase=6, settle=2.0))
    assert result.problems() == [], result.problems()
    acked = len(result.acknowledged)
    assert 0 < acked <= 40 and result.available == 40 - acked
    refused = result.refused_share()
    assert refused["before"] == {r: 0.0 for r in topology.regions}
    # The region cut from the owner refuses (CP); the owner's side keeps reserving; a lost region's
    # clients are served elsewhere by the edge.
    assert refused["partition"][result.cut] > 0.5 and refused["partition"][result.owner] == 0.0, refused
    assert refused["region-loss"][result.owner] == 0.0, refused

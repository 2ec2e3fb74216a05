"""The `oversell` scenario on a local run: stock never oversold and one account per email across a
partition, a region loss and the owner's loss, and the price of that — requests refused while the sku's
owner cannot be reached — measured per region."""

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
    # The owner lost with its storage: its keys are unavailable from everywhere, never oversold; a handover
    # is refused (its replica cannot be fenced), so ownership does not move.
    assert refused["owner-loss"] == {r: 1.0 for r in topology.regions}, refused
    handovers = dict(result.handovers)
    assert handovers["owner-loss"].startswith("refused:") and "cannot be fenced" in handovers["owner-loss"], handovers
    # The planned move: fenced, barrier, published; then the new owner serves every region, the old
    # owner's clients included; then ownership comes back.
    assert handovers["handover"].startswith(f"fenced {result.owner} at epoch"), handovers
    assert handovers["return"].startswith("fenced ") and "published epoch" in handovers["return"], handovers
    assert refused["moved"] == {r: 0.0 for r in topology.regions}, refused
    assert refused["after"] == {r: 0.0 for r in topology.regions}, refused
    # Every email was tried from every region at once (half of them upper-cased): one account each.
    assert len(result.emails) == 2 * 8 and all(len(tries) == len(topology.regions) for tries in result.emails.values())
    healthy = [tries for email, tries in result.emails.items() if "-before-" in email or "-after-" in email]
    assert all(sorted(s for _, _, s in tries) == [201] + [409] * (len(tries) - 1) for tries in healthy), healthy
    assert all(len(ids) == 1 for email, ids in result.accounts.items() if "-before-" in email), result.accounts
    assert result.summary()["pass"]


def test_the_checks_fail_on_an_oversold_or_twice_claimed_history() -> None:
    """Not vacuous: the same checks on a tampered result report the broken promises."""
    result = oversell.OversellResult(units=2, available=0, reserved=2, held={"r1", "r2"})
    result.attempts = [oversell.Attempt("a", "before", f"k{i}", 201, f"r{i}") for i in (1, 2, 3)]
    result.emails = {"x@example.com": [("before", "a", 201), ("before", "b", 201)]}
    result.accounts = {"x@example.com": {"usr_1", "usr_2"}}
    problems = result.problems()
    assert any("oversold: 3 acknowledged for 2 units" in p for p in problems)
    assert any("hold no units" in p for p in problems)
    assert any("2 accounts acknowledged" in p for p in problems) and any("2 users stored" in p for p in problems)
    assert not result.summary()["pass"]


def test_the_game_day_runs_it_and_reports_the_price(local: tuple[Path, Path], tmp_path: Path) -> None:
    """`meridian gameday --scenario oversell`: beside the steady load, with its checks in the verdict and the
    refused share per fault in report.md."""
    from meridian_local import gameday

    _, state_dir = local
    metrics = gameday.run(state_dir, ["oversell"], tmp_path / "report", phase_seconds=2.0, workers=2)
    assert metrics["passed"], metrics["failures"]
    assert metrics["checks"]["strong_keys"] == {"pass": True, "value": 0, "unit": "broken strong-key promises", "examples": []}
    strong = metrics["oversell"]
    assert strong["refused_share"]["owner-loss"] == {r: 1.0 for r in ("us-east-1", "eu-west-1", "eu-central-1")}, strong["answers_by_phase"]
    assert 0 < strong["acknowledged"] == strong["units"] - strong["available"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Strong keys: stock and email claims" in report and "Every promise held." in report
    assert "| reservations | eu-central-1 |" in report and "| account creations | us-east-1 |" in report
    assert "| attempts | client region | before | partition | region-loss | owner-loss | handover | moved | return | after |" in report
    assert "Handovers: owner-loss: refused:" in report


def test_local_status_gives_the_operator_token(local: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`meridian local status --json` shows `operator_token`: it sets stock; a user's token or none cannot."""
    import json

    import httpx

    from meridian_cli.main import main

    _, state_dir = local
    assert main(["local", "status", "--json", "--state-dir", str(state_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    token = status["operator_token"]
    url = f"{status['edge']}/v1/stock/status-sku"
    assert httpx.put(url, json={"available": 3}, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.put(url, json={"available": 3}, headers={"Authorization": "Bearer not-the-operator"}).status_code in (401, 403)
    assert httpx.put(url, json={"available": 3}).status_code == 401


def test_without_the_partition_phase_on_shared_replicas(local: tuple[Path, Path]) -> None:
    """A backend whose replicas share one table (LocalStack) cannot be partitioned: the phase is left out,
    the rest still checked."""
    stack, state_dir = local
    result = asyncio.run(oversell.run(state_dir, load_stack_file(stack), units=10, per_phase=2, settle=1.0, emails_per_phase=1,
                                      partition=False))
    assert list(result.refused_share()) == ["before", "region-loss", "owner-loss", "handover", "moved", "return", "after"]
    assert result.problems() == []

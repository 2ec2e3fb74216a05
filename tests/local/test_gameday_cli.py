"""The local run and its game days as a person drives them: `meridian up --local` from the project root,
the commands from a subfolder, game days that can be repeated on one run, a report that states what was
run and what it measured, `evacuate --local` on the running stack, and habits (`export EDGE=`, 80
columns, a closed pipe).

One run for the module, in a throwaway project (a folder holding Pulumi.yaml) with the default state
folder, so that finding the run from a subfolder is tested as users meet it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from stacks import THREE_REGIONS

from meridian_cli.main import main
from meridian_local.state import pid_alive, read_state

pytestmark = pytest.mark.slow

STACK = THREE_REGIONS


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("project")
    (root / "Pulumi.yaml").write_text("name: meridian\nruntime: python\n")
    (root / "Pulumi.gd.yaml").write_text(STACK)
    (root / "deep" / "er").mkdir(parents=True)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    yield root
    mp.chdir(root)
    if read_state(root / ".meridian" / "local") is not None:
        main(["down"])
    mp.undo()


@pytest.fixture(scope="module")
def up(project: Path) -> dict[str, object]:
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["up", "--local", "--stack", "gd", "--detach", "--time-scale", "0.1", "--latency-scale", "0", "--lag", "0.2"]) == 0
    state = read_state(project / ".meridian" / "local")
    assert state is not None
    return {"out": out.getvalue(), "state": state}


def gameday(project: Path, report: str, *extra: str) -> dict[str, object]:
    code = main(["gameday", "--phase-seconds", "1.5", "--workers", "3", "--report", str(project / report), *extra])
    metrics: dict[str, object] = json.loads((project / report / "metrics.json").read_text())
    metrics["exit"] = code
    return metrics


class TestUpAndState:
    def test_up_prints_the_export_line(self, up: dict[str, object]) -> None:
        state = up["state"]
        assert isinstance(state, dict)
        assert f"export EDGE={state['edge']}" in str(up["out"]).splitlines()

    def test_commands_find_the_run_from_a_subfolder(self, project: Path, up: dict[str, object], monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.chdir(project / "deep" / "er")
        assert main(["local", "status"]) == 0
        out = capsys.readouterr().out
        assert "gd: edge" in out and "eu-central-1" in out
        assert max(len(line) for line in out.splitlines()) <= 80  # fits 80 columns

    def test_evacuate_local_acts_on_the_running_stack(self, project: Path, up: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
        """No --stack: the running stack (gd, not the default dev); a --stack naming another stack is refused."""
        try:
            assert main(["evacuate", "eu-central-1", "--local", "--yes"]) == 0
            assert "dial set to 0" in capsys.readouterr().out
        finally:
            assert main(["restore", "eu-central-1", "--local", "--yes"]) == 0
        (project / "Pulumi.other.yaml").write_text(STACK)
        assert main(["evacuate", "eu-central-1", "--local", "--yes", "--stack", "other"]) == 2
        assert "runs stack 'gd', not 'other'" in capsys.readouterr().err

    def test_status_json_into_a_closed_pipe(self, project: Path, up: dict[str, object]) -> None:
        """`meridian local status --json | head -1`: the reader is gone before the output comes; no traceback."""
        proc = subprocess.Popen([sys.executable, "-m", "meridian_cli.main", "local", "status", "--json"], cwd=project / "deep",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the command has asked the run for its status: every write meets a closed pipe
        err = proc.stderr.read()
        assert proc.wait(60) == 0, err
        assert "Traceback" not in err and "BrokenPipe" not in err, err


class TestRepeatableGameDays:
    def test_two_game_days_in_a_row_both_pass(self, project: Path, up: dict[str, object]) -> None:
        """Conflicts injected by the first are not the second's: each checks its own window."""
        first = gameday(project, "r1", "--scenario", "conflicts")
        second = gameday(project, "r2", "--scenario", "conflicts")
        for metrics in (first, second):
            assert metrics["exit"] == 0, metrics.get("failures")
            checks = metrics["checks"]
            assert isinstance(checks, dict)
            assert checks["conflicts"]["recorded_injected"] >= 1

    def test_a_game_day_without_clients_passes(self, project: Path, up: dict[str, object]) -> None:
        metrics = gameday(project, "r0", "--scenario", "conflicts", "--workers", "0")
        assert metrics["exit"] == 0, metrics.get("failures")

    def test_hard_region_loss_report(self, project: Path, up: dict[str, object]) -> None:
        """The report states its parameters, RTO per client region, the RPO of the hard loss, the lag table,
        and names the reason of any FAIL; the PNG is written."""
        metrics = gameday(project, "rh", "--scenario", "hard-region-loss", "--workers", "4")
        assert metrics["exit"] == 0, metrics.get("failures")
        report = (project / "rh" / "report.md").read_text()
        for needle in ("| stack | gd |", "| time scale | 0.1", "| latency scale |", "| replication lag | 0.2 s emulated |", "| commit |",
                       "| date |", "## Recovery: RTO and RPO per scenario", "| hard-region-loss | eu-west-1 |", "RPO **",
                       "Lost by a bug: 0", "| pair | p50 | p99 | max | n |", "Global Accelerator ALB target health 10 s x 2",
                       "Route 53 health check 10 s x 2 + DNS TTL"):
            assert needle in report, needle
        assert (project / "rh" / "timeline.png").stat().st_size > 10_000
        assert (project / "rh" / "history.jsonl").read_text().count("\n") > 10

    def test_a_failed_check_carries_its_reason(self) -> None:
        from meridian_local.report import reason

        why = reason("exactly_once_orders", {"pass": False, "value": 1, "duplicated": ["eu-west-1/eu: (u, k) -> [a, b]"],
                                             "answers_differ": [], "lost": [], "examples": ["eu-west-1/eu: (u, k) -> [a, b]"]})
        assert why.startswith("1 keys with two orders") and "(u, k)" in why


def test_down_from_a_subfolder_leaves_nothing(project: Path, up: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    state = up["state"]
    assert isinstance(state, dict)
    pids = [state["pid"], state["moto_pid"], *[r["pid"] for r in state["regions"].values()]]
    monkeypatch.chdir(project / "deep" / "er")
    assert main(["down"]) == 0
    assert not [p for p in pids if pid_alive(p)]
    assert not (project / ".meridian" / "local" / "state.json").exists()

"""`meridian capacity`: tasks per region for a peak load with one region lost, from the measured CPU figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from infra.render import render_values
from meridian.topology import load_topology
from meridian_cli.capacity import CPU_TARGET, DEPLOYMENT_MAXIMUM_PERCENT, FIGURES, SERVICE_PROCESSES, capacity, load_figures
from meridian_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
FOUR = ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"]


def figures_file(tmp_path: Path, cpu_ms: dict[str, float], mix: dict[str, float]) -> Path:
    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"mix": mix, "operations": {op: {"service_cpu_ms": ms} for op, ms in cpu_ms.items()},
                                "measured_at": "2026-01-01", "machine": {"cpu": "test"}}))
    return path


class TestSizing:
    def test_tasks_per_region_with_one_region_lost(self) -> None:
        """4 regions at 40,000 rps: each of the 3 survivors carries 13,333 rps at 60% of one usable vCPU per task."""
        topology = load_topology({"regions": FOUR, "serviceCpu": 1024, "serviceMemory": 2048, "maxCount": 40}, stack="t")
        result = capacity(topology, 40_000, cpu_ms=1.5, cpu_source="test")
        assert result.surviving == 3 and result.rps_per_region == pytest.approx(40_000 / 3)
        assert result.tasks_per_region == math.ceil(40_000 / 3 * 1.5 / 1000 / 0.6)  # 34
        assert result.reaches and result.problems == ()
        assert result.max_rps == pytest.approx(40 * 0.6 * 1000 / 1.5 * 3)

    def test_ceiling_below_need_does_not_reach(self) -> None:
        """A maxCount below the need is reported with the load the ceiling does carry."""
        topology = load_topology({"regions": FOUR, "serviceCpu": 1024, "serviceMemory": 2048, "maxCount": 10}, stack="t")
        result = capacity(topology, 40_000, cpu_ms=1.5, cpu_source="test")
        assert not result.reaches
        assert any("above meridian:maxCount 10" in p for p in result.problems)

    def test_task_larger_than_one_process_gets_no_more_cpu(self) -> None:
        """A 2-vCPU task runs one uvicorn process: it counts as the one vCPU that process can use, and says so."""
        big = load_topology({"regions": FOUR, "serviceCpu": 2048, "serviceMemory": 4096, "maxCount": 100}, stack="t")
        one = load_topology({"regions": FOUR, "serviceCpu": 1024, "serviceMemory": 2048, "maxCount": 100}, stack="t")
        assert SERVICE_PROCESSES == 1
        a, b = (capacity(t, 20_000, cpu_ms=2.0, cpu_source="test") for t in (big, one))
        assert a.usable_vcpu_per_task == b.usable_vcpu_per_task == 1.0
        assert a.tasks_per_region == b.tasks_per_region
        assert any("only 1 vCPU of each is used" in p for p in a.problems)

    def test_half_vcpu_task_needs_twice_the_tasks(self) -> None:
        small = load_topology({"regions": FOUR, "serviceCpu": 512, "serviceMemory": 1024, "maxCount": 500}, stack="t")
        one = load_topology({"regions": FOUR, "serviceCpu": 1024, "serviceMemory": 2048, "maxCount": 500}, stack="t")
        a, b = (capacity(t, 30_000, cpu_ms=1.2, cpu_source="test") for t in (small, one))
        assert a.tasks_per_region == math.ceil(30_000 / 3 * 1.2 / 1000 / (0.5 * 0.6))
        assert b.tasks_per_region == math.ceil(30_000 / 3 * 1.2 / 1000 / 0.6)

    def test_never_below_the_floor(self) -> None:
        topology = load_topology({"regions": FOUR, "minCount": 3, "desiredCount": 3, "maxCount": 30}, stack="t")
        assert capacity(topology, 1, cpu_ms=1.0, cpu_source="test").tasks_per_region == 3


class TestMatchesTheProgram:
    def test_constants_are_what_the_program_declares(self) -> None:
        """The CPU target and the deployment maximum the sizing assumes are those of the rendered ECS service."""
        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "serviceCpu": 1024, "serviceMemory": 2048}, stack="cap")
        (service, *_) = plan.of_type("aws:ecs/service:Service")
        assert service.inputs["deploymentMaximumPercent"] == DEPLOYMENT_MAXIMUM_PERCENT
        policies = [p.inputs["targetTrackingScalingPolicyConfiguration"] for p in plan.of_type("aws:appautoscaling/policy:Policy")]
        cpu = [p for p in policies if p["predefinedMetricSpecification"]["predefinedMetricType"] == "ECSServiceAverageCPUUtilization"]
        assert cpu and {p["targetValue"] for p in cpu} == {CPU_TARGET * 100}
        (task, *_) = plan.of_type("aws:ecs/taskDefinition:TaskDefinition")
        assert task.inputs["cpu"] == "1024"


class TestFigures:
    def test_cpu_at_mix_weighs_each_operation(self, tmp_path: Path) -> None:
        figures = load_figures(figures_file(tmp_path, {"read": 1.0, "order": 3.0}, {"read": 0.75, "order": 0.25}))
        assert figures.cpu_ms_at_mix == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)

    def test_checked_in_figures_cover_the_mix(self) -> None:
        """The file the bench writes names every operation of its mix, and the mix sums to 1."""
        figures = load_figures(FIGURES)
        assert set(figures.mix) == {"read", "update", "increment", "order"}
        assert figures.cpu_ms_at_mix > 0

    def test_mix_must_sum_to_one(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = figures_file(tmp_path, {"read": 1.0}, {"read": 0.5})
        assert main(["capacity", "--stack", "prod", "--rps", "100", "--figures", str(path)]) == 2
        assert "mix must sum to 1" in capsys.readouterr().err


class TestCommand:
    def test_prod_reaches_the_design_peak(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """The prod stack's ceilings carry 50,000 rps with one of its 4 regions lost, at the measured CPU figures."""
        monkeypatch.chdir(ROOT)
        assert main(["capacity", "--stack", "prod", "--rps", "50000"]) == 0
        out = capsys.readouterr().out
        assert "reaches it" in out and "L-3032A538" in out and "does NOT" not in out

    def test_json(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(ROOT)
        assert main(["capacity", "--stack", "prod", "--rps", "50000", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        figures = load_figures(FIGURES)
        assert data["cpu_ms"] == pytest.approx(figures.cpu_ms_at_mix)
        assert data["regions"] == 4 and data["reaches"] is True
        assert data["tasks_per_region"] <= data["max_count"]

    def test_not_reached_exits_1(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(ROOT)
        assert main(["capacity", "--stack", "prod", "--rps", "5000000"]) == 1
        assert "does NOT reach it" in capsys.readouterr().out

    def test_cpu_ms_overrides_the_figures(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(ROOT)
        assert main(["capacity", "--stack", "prod", "--rps", "1000", "--cpu-ms", "2.5", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["cpu_ms"] == 2.5 and data["cpu_source"] == "--cpu-ms"

    @pytest.mark.parametrize(("args", "message"), [
        (["--stack", "nope", "--rps", "100"], "no stack file Pulumi.nope.yaml"),
        (["--stack", "prod", "--rps", "0"], "--rps is 0"),
        (["--stack", "prod", "--rps", "-5"], "--rps is -5"),
        (["--stack", "prod", "--rps", "nan"], "--rps is nan"),
        (["--stack", "prod", "--rps", "lots"], "--rps 'lots' is not a number"),
        (["--stack", "prod"], "--rps N is required"),
        (["--stack", "prod", "--rps", "10", "--cpu-ms", "0"], "--cpu-ms is 0"),
        (["--stack", "prod", "--rps", "10", "--figures", "/nonexistent/figures.json"], "cannot read the CPU figures"),
    ])
    def test_bad_input_is_one_line_exit_2(self, args: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(ROOT)
        assert main(["capacity", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err

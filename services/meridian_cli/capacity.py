"""`meridian capacity`: the tasks per region a stack needs to carry a peak load with one region lost, and
whether the stack's ceilings reach it.

The CPU a request costs is measured, not guessed: ``bench/cost_per_request.py`` measures the service's
CPU per operation in one local run and writes it, with the request mix, to
``bench/results/cost_per_request.json``; this command reads that file (or ``--figures PATH``, or a flat
``--cpu-ms``). Each surviving region carries ``rps / (regions - 1)`` (the design asks every region to
have room for a share of a lost one's traffic), at the service's autoscaling target of 60% CPU.

A task runs one uvicorn process (services/Dockerfile), and one Python process keeps at most one vCPU
busy: a task of more than 1 vCPU gives the service no more CPU, so the usable vCPU per task is
``min(task vCPU, 1)``.

Exit status: 0 when the stack reaches the load, 1 when it does not, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meridian.topology import Topology
from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, console, resolve_topology

__all__ = ["Capacity", "Figures", "capacity", "load_figures"]

#: Written by bench/cost_per_request.py (the repository's copy; an installed CLI takes --figures).
FIGURES = Path(__file__).resolve().parents[2] / "bench" / "results" / "cost_per_request.json"
#: The autoscaling target of the service (infra/components/service.py: ECSServiceAverageCPUUtilization 60).
CPU_TARGET = 0.60
#: uvicorn processes per task (services/Dockerfile runs one): the vCPU one task can keep busy.
SERVICE_PROCESSES = 1
#: ECS service quota "Tasks per service" (default 5,000), the hard ceiling on meridian:maxCount.
ECS_TASKS_PER_SERVICE = 5000
#: Service Quotas code of "Fargate On-Demand vCPU resource count" (per account and region).
FARGATE_VCPU_QUOTA = "L-3032A538"
#: A rolling deployment starts the new tasks before stopping the old (infra/components/service.py:
#: deployment_minimum_healthy_percent 100, deployment_maximum_percent 200): at the ceiling, a release runs
#: up to twice maxCount tasks for a while, and the vCPU quota must allow it.
DEPLOYMENT_MAXIMUM_PERCENT = 200


@dataclass(frozen=True)
class Figures:
    """CPU ms per request of each operation, and the mix that weighs them."""

    cpu_ms: Mapping[str, float]
    mix: Mapping[str, float]
    source: str

    @property
    def cpu_ms_at_mix(self) -> float:
        return sum(self.cpu_ms[op] * share for op, share in self.mix.items())


def load_figures(path: Path) -> Figures:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the CPU figures {path}: {exc.strerror}; run `python bench/cost_per_request.py` "
                         "or pass --cpu-ms") from None
    except ValueError:
        raise UsageError(f"{path} is not JSON; rerun `python bench/cost_per_request.py` to write it") from None
    try:
        ops = data["operations"]
        cpu_ms = {op: float(ops[op]["service_cpu_ms"]) for op in data["mix"]}
        mix = {op: float(share) for op, share in data["mix"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UsageError(f"{path} lacks operations.<op>.service_cpu_ms for every operation of its mix; "
                         "rerun `python bench/cost_per_request.py`") from None
    if not mix or abs(sum(mix.values()) - 1) > 1e-6 or any(v <= 0 for v in cpu_ms.values()):
        raise UsageError(f"{path}: the mix must sum to 1 and every CPU figure be positive")
    machine = data.get("machine", {})
    source = f"{path.name}, measured {data.get('measured_at', '?')} on {machine.get('cpu', '?')} by {data.get('command', 'the bench')}"
    return Figures(cpu_ms=cpu_ms, mix=mix, source=source)


@dataclass(frozen=True)
class Capacity:
    stack: str
    rps: float
    regions: int
    surviving: int
    rps_per_region: float
    cpu_ms: float
    cpu_source: str
    cpu_target: float
    task_cpu_units: int
    task_vcpu: float
    usable_vcpu_per_task: float
    tasks_per_region: int
    min_count: int
    max_count: int
    max_rps: float
    reaches: bool
    fargate_vcpu_per_region: float
    fargate_vcpu_quota_per_region: float
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "problems": list(self.problems)}


def capacity(topology: Topology, rps: float, *, cpu_ms: float, cpu_source: str) -> Capacity:
    """Tasks per region for ``rps`` with one region lost, at ``cpu_ms`` per request, against the ceilings."""
    sizing = topology.sizing
    regions = len(topology.regions)
    surviving = max(1, regions - 1)
    per_region = rps / surviving
    task_vcpu = sizing.cpu / 1024
    usable = min(task_vcpu, float(SERVICE_PROCESSES))
    # A task carries usable x target vCPU-seconds of requests per second.
    tasks = max(sizing.min_count, math.ceil(round(per_region * cpu_ms / 1000 / (usable * CPU_TARGET), 9)))
    max_rps = sizing.max_count * usable * CPU_TARGET * 1000 / cpu_ms * surviving
    problems = []
    if tasks > sizing.max_count:
        problems.append(f"needs {tasks} tasks per region, above meridian:maxCount {sizing.max_count}: raise it "
                        f"(at {sizing.max_count} the stack carries {max_rps:,.0f} rps with one region lost)")
    if tasks > ECS_TASKS_PER_SERVICE:
        problems.append(f"needs {tasks} tasks per region, above the ECS quota of {ECS_TASKS_PER_SERVICE:,} tasks per service: "
                        "use larger tasks with more uvicorn processes, or more regions")
    if task_vcpu > SERVICE_PROCESSES:
        problems.append(f"tasks of {task_vcpu:g} vCPU run {SERVICE_PROCESSES} uvicorn process(es): only {usable:g} vCPU of each is used")
    if regions == 1:
        problems.append("a one-region stack has no region to lose: sized without that headroom")
    return Capacity(stack=topology.stack, rps=rps, regions=regions, surviving=surviving, rps_per_region=per_region, cpu_ms=cpu_ms,
                    cpu_source=cpu_source, cpu_target=CPU_TARGET, task_cpu_units=sizing.cpu, task_vcpu=task_vcpu,
                    usable_vcpu_per_task=usable, tasks_per_region=tasks, min_count=sizing.min_count, max_count=sizing.max_count,
                    max_rps=max_rps, reaches=tasks <= min(sizing.max_count, ECS_TASKS_PER_SERVICE),
                    fargate_vcpu_per_region=sizing.max_count * task_vcpu,
                    fargate_vcpu_quota_per_region=sizing.max_count * task_vcpu * DEPLOYMENT_MAXIMUM_PERCENT / 100, problems=tuple(problems))


def _positive(flag: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{flag} {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag} is {raw}; give a number more than 0")
    return value


def cmd_capacity(args: argparse.Namespace) -> int:
    rps = _positive("--rps", args.rps)
    if rps is None:
        raise UsageError("--rps N is required: the peak requests per second across all regions")
    cpu_ms = _positive("--cpu-ms", args.cpu_ms)
    topology = resolve_topology(args)
    if cpu_ms is not None:
        source = "--cpu-ms"
    else:
        figures = load_figures(Path(args.figures) if args.figures else FIGURES)
        cpu_ms = figures.cpu_ms_at_mix
        mix = ", ".join(f"{op} {share:.0%} ({figures.cpu_ms[op]:.2f} ms)" for op, share in figures.mix.items())
        source = f"at the mix {mix}; {figures.source}"
    result = capacity(topology, rps, cpu_ms=cpu_ms, cpu_source=source)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return 0 if result.reaches else 1
    out = console()
    r = result
    out.print(f"[bold]{topology.project}/{r.stack}[/]: {r.rps:,.0f} rps over {r.regions} regions; with one lost, each of the "
              f"{r.surviving} others carries {r.rps_per_region:,.0f} rps")
    out.print(f"CPU per request: {r.cpu_ms:.2f} ms ({r.cpu_source})", highlight=False)
    out.print(f"task: {r.task_cpu_units} CPU units ({r.task_vcpu:g} vCPU), {r.usable_vcpu_per_task:g} vCPU usable by the service "
              f"({SERVICE_PROCESSES} uvicorn process); autoscaling target {r.cpu_target:.0%} CPU")
    out.print(f"needed: {r.tasks_per_region} tasks per region ({r.tasks_per_region * r.task_vcpu:g} vCPU per region, "
              f"{r.tasks_per_region * r.task_vcpu * r.regions:g} in all); the stack allows {r.min_count}..{r.max_count} tasks per region")
    verdict = "[green]reaches it[/]" if r.reaches else "[red]does NOT reach it[/]"
    out.print(f"{r.rps:,.0f} rps: {verdict}; at meridian:maxCount {r.max_count} the stack carries up to {r.max_rps:,.0f} rps "
              f"with one region lost")
    out.print(f"Fargate vCPU per region: {r.fargate_vcpu_per_region:g} at the ceiling, {r.fargate_vcpu_quota_per_region:g} while a "
              f"release replaces them (deployment maximum {DEPLOYMENT_MAXIMUM_PERCENT}%); the quota {FARGATE_VCPU_QUOTA} (Fargate "
              "On-Demand vCPU resource count) must allow that in every region: raise it in Service Quotas")
    for problem in r.problems:
        out.print(f"[yellow]warning[/]: {problem}")
    return 0 if r.reaches else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("capacity", help="tasks per region for a peak load with one region lost, from the measured CPU per request")
    add_stack_options(parser)
    # Numbers are read as text and checked by the command, so that a bad value is one line and exit 2.
    parser.add_argument("--rps", metavar="N", help="peak requests per second across all regions (required)")
    parser.add_argument("--figures", metavar="PATH", help="CPU figures written by bench/cost_per_request.py (default: the repository's)")
    parser.add_argument("--cpu-ms", metavar="MS", help="CPU milliseconds per request, instead of the measured figures")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(handler=cmd_capacity)


REGISTRY.append(register)

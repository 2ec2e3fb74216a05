"""`meridian gameday --target aws|local`: the same load, checks and report against any :class:`Target`.

The local game day (``meridian_local.gameday``) stays what it was for its scenarios; this driver runs the
faults a deployed stack can take (region loss by evacuation, AWS FIS's replication pause and cross-region
connectivity disruption) through :mod:`meridian_cli.gameday_targets`, so the same code runs against the
local run (``--target local --scenario pause-replication``) and against AWS (``--target aws --stack NAME``).
Load: :class:`meridian_local.load.Load` through the target's entry URL (users get their bearer tokens from
their own creation, as the service issues them); checks: :class:`meridian_local.history.History` against
every replica; report: ``report.md``, ``metrics.json``, ``timeline.png``, ``history.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meridian_cli.gameday_targets import AwsTarget, Fault, LocalTarget, Target, TargetError, _same, stack_outputs
from meridian_cli.main import UsageError

SCENARIOS = ("region-loss", "pause-replication", "disrupt-connectivity")
#: what each scenario expects, and what would contradict it (the report states both)
EXPECTED = {
    "region-loss": "the entry points stop sending traffic to the region (its evacuation alarm / the edge's health "
                   "checks); clients keep being served by the zone's other regions; nothing acknowledged is lost",
    "pause-replication": "writes keep being acknowledged everywhere; the region's replicas fall behind and catch up after "
                         "the experiment; nothing acknowledged is lost, read-your-writes holds (or answers 503)",
    "disrupt-connectivity": "calls from the region to its peer fail and are answered by failover or 503, never wrongly; "
                            "nothing acknowledged is lost",
}


class TargetGameDay:
    """Steady load, each scenario's fault on the zone under test, heal, convergence, the history checker."""

    def __init__(self, target: Target, *, scenarios: list[str], phase_seconds: float, fault_seconds: float, workers: int = 8,
                 think: float = 0.25, seed: int = 7, out_timeout: float = 300.0, progress: Callable[[str], None] | None = None) -> None:
        from meridian_local.history import History
        from meridian_local.load import Client, Load

        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            raise UsageError(f"scenario {unknown[0]!r} is not offered on target {target.name}: one of {', '.join(SCENARIOS)}")
        self.target, self.scenarios = target, scenarios
        self.phase_seconds, self.fault_seconds, self.out_timeout = phase_seconds, fault_seconds, out_timeout
        self.progress = progress or (lambda _line: None)
        self.zones = target.zones()
        self.regions = sorted({r for rs in self.zones.values() for r in rs})
        multi = sorted((z for z, rs in self.zones.items() if len(rs) >= 2), key=lambda z: (len(self.zones[z]), z))
        if not multi:
            raise UsageError("no residency zone has two regions: nothing to fail over to")
        self.zone = multi[0]
        self.victim, self.peer = self.zones[self.zone][0], self.zones[self.zone][1]
        self.history = History()
        self.client = Client(target.endpoints().entry, self.history)
        self.counter = f"gameday-{time.time_ns()}"
        self.load = Load(self.client, self.regions, self.zones, workers=workers, think=think, seed=seed, counter=self.counter)
        self.marks: list[tuple[float, str]] = []
        self.windows: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.workers, self.think = workers, think

    def mark(self, label: str) -> None:
        self.marks.append((time.time(), label))
        self.progress(f"{time.time() - self.started:6.1f} s  {label}")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, step: float = 1.0) -> float | None:
        start = time.time()
        while time.time() - start < timeout:
            if await asyncio.to_thread(predicate):
                return time.time() - start
            await asyncio.sleep(step)
        return None

    async def region_loss(self) -> dict[str, Any]:
        fault = await self.call(self.target.lose_region, self.victim)
        self.mark(f"lose {self.victim}: {fault.detail}")
        out = await self.wait_for(lambda: self.target.region_out(self.victim), self.out_timeout, step=min(5.0, self.out_timeout / 20))
        if out is not None:
            self.mark(f"{self.victim} out of the entry points")
        await asyncio.sleep(self.fault_seconds)
        await self.call(self.target.end, fault)
        self.mark(f"restore {self.victim}")
        back = await self.wait_for(lambda: not self.target.region_out(self.victim), self.out_timeout, step=min(5.0, self.out_timeout / 20))
        result = {"fault": fault.to_json(), "out_seconds": out, "back_seconds": back}
        if out is None:
            return result | {"verdict": "INCONCLUSIVE", "why": f"{self.victim} never left the entry points within {self.out_timeout:g} s: "
                                                                 "the fault did not take effect"}
        return result | {"verdict": "PASS" if back is not None else "FAIL",
                         "why": f"out after {out:.1f} s, back {'after ' + format(back, '.1f') + ' s' if back is not None else 'never'}"}

    async def experiment(self, scenario: str) -> dict[str, Any]:
        start = self.target.pause_replication if scenario == "pause-replication" else self.target.disrupt_connectivity
        fault: Fault = await self.call(start, self.victim, self.fault_seconds)
        self.mark(f"{scenario} {self.victim}" + (f"|{fault.peer}" if fault.peer else "") + f": {fault.detail}")
        deadline = time.time() + self.fault_seconds
        while time.time() < deadline and fault.outcome == "running":
            await asyncio.sleep(min(5.0, max(0.1, deadline - time.time())))
            fault = await self.call(self.target.poll, fault)
        fault = await self.call(self.target.end, fault)
        self.mark(f"end {scenario}: {fault.outcome}" + (f" ({fault.reason})" if fault.reason else ""))
        result = {"fault": fault.to_json()}
        if fault.outcome == "stopped-by-condition":
            return result | {"verdict": "FAIL", "why": f"stopped by its stop condition (the region's alarms fired): {fault.reason}"}
        if fault.outcome in ("failed", "cancelled"):
            return result | {"verdict": "INCONCLUSIVE", "why": f"the experiment {fault.outcome}: {fault.reason}"}
        return result | {"verdict": "PASS", "why": f"ran {(fault.ended_at or time.time()) - fault.started_at:.1f} s and was ended"}

    async def run(self) -> dict[str, Any]:
        self.started = time.time()
        self.mark(f"start on {self.target.name} ({self.target.stack})")
        load = asyncio.create_task(self.load.run())
        await asyncio.sleep(self.phase_seconds)
        for scenario in self.scenarios:
            self.client.phase = scenario
            fault_at = time.time()
            try:
                result = await (self.region_loss() if scenario == "region-loss" else self.experiment(scenario))
            except TargetError as exc:
                self.mark(f"{scenario}: {exc}")
                result = {"verdict": "INCONCLUSIVE", "why": str(exc)}
            heal_at = time.time()
            self.client.phase = "after"
            await asyncio.sleep(self.phase_seconds / 2)
            self.results[scenario] = result | {"expected": EXPECTED[scenario]}
            self.windows.append({"scenario": scenario, "fault_at": fault_at, "heal_at": heal_at, "end": time.time()})
        self.load.stop.set()
        await load
        await self.client.close()
        self.mark("load stopped")
        convergence = await self.call(self.target.settle, max(60.0, self.phase_seconds * 4))
        self.mark("replicas converged" if convergence is not None else "replicas did not converge")
        metrics: dict[str, Any] = await self.call(self.metrics, convergence)
        return metrics

    def metrics(self, convergence: float | None) -> dict[str, Any]:
        from meridian_local.gameday import rto
        from meridian_local.report import latency_table, reason

        tables = self.target.tables()
        snapshot = self.target.read_replicas()
        checks = self.history.check(snapshot, tables, self.zones, counters=[self.counter])
        diverged = [t for t, regions in tables.items() if not _same(snapshot, t, regions)]
        checks["replicas_identical"] = {"value": len(diverged), "unit": "tables whose replicas differ", "pass": not diverged,
                                        "examples": diverged[:5]}
        failures = {name: reason(name, c) for name, c in checks.items() if not c["pass"]}
        failures |= {s: f"{r['verdict']}: {r['why']}" for s, r in self.results.items() if r["verdict"] != "PASS"}
        samples = self.client.samples
        return {
            "target": self.target.name, "stack": self.target.stack, "scenarios": self.scenarios, "zone": self.zone,
            "victim": self.victim, "peer": self.peer, "started": self.started, "duration_seconds": time.time() - self.started,
            "entry": self.target.endpoints().entry, "scenario_results": self.results, "checks": checks, "failures": failures,
            "passed": not failures, "convergence_seconds": convergence, "requests": len(samples),
            "operations": self.history.counts(), "latency_ms": latency_table(samples), "rto": rto(samples, self.windows, self.regions),
            "marks": [(round(at - self.started, 2), label) for at, label in self.marks],
            "windows": [{k: (round(v - self.started, 2) if isinstance(v, float) else v) for k, v in w.items()} for w in self.windows],
            "load": {"workers": self.workers, "think_seconds": self.think, "phase_seconds": self.phase_seconds,
                     "fault_seconds": self.fault_seconds},
        }


def markdown(metrics: dict[str, Any]) -> str:
    """The report: verdict, what was run, each scenario against its expectation, the checks, RTO, latency."""
    from meridian_local.report import UNITS, _git, _row, reason

    verdict = "**PASS**: every scenario and check held." if metrics["passed"] else \
        "**FAIL**: " + "; ".join(f"{k}: {v}" for k, v in metrics["failures"].items())
    real = "real AWS: evacuation and AWS FIS experiments" if metrics["target"] == "aws" else \
        "the local run: faults emulated (see each scenario's `emulated`)"
    lines = [f"# Game day report ({metrics['target']})", "", verdict, "", "## What was run", "",
             f"Stack `{metrics['stack']}` on {real}; commit {_git('rev-parse', '--short', 'HEAD') or 'unknown'}; entry {metrics['entry']}; "
             f"zone under test `{metrics['zone']}` (fault on {metrics['victim']}, peer {metrics['peer']}); "
             f"{metrics['load']['workers']} clients, phases of {metrics['load']['phase_seconds']:g} s, faults of "
             f"{metrics['load']['fault_seconds']:g} s; {metrics['requests']} requests in {metrics['duration_seconds']:.0f} s; replicas "
             + (f"converged {metrics['convergence_seconds']:.1f} s after the load." if metrics["convergence_seconds"] is not None
                else "did not converge."),
             "", "## Scenarios", "", _row("scenario", "verdict", "why", "what was done", "expected"), _row(*["---"] * 5)]
    for name, r in metrics["scenario_results"].items():
        fault = r.get("fault") or {}
        done = fault.get("detail", "not injected") + (f" (emulated: {fault['emulated']})" if fault.get("emulated") else "")
        lines.append(_row(name, r["verdict"], r["why"], done, r["expected"]))
    lines += ["", "## Checks", "", _row("check", "result", "value", "what the value counts", "reason"), _row(*["---"] * 5)]
    for name, c in metrics["checks"].items():
        lines.append(_row(name, "PASS" if c["pass"] else "FAIL", c.get("value"), c.get("unit") or UNITS.get(name, ""),
                          "" if c["pass"] else reason(name, c)))
    lines += ["", "## RTO per scenario and client region", "", _row("scenario", "client region", "errors seen", "RTO"), _row(*["---"] * 4)]
    lines += [_row(s, p, v["errors"], f"{v['rto_seconds']:.2f} s") for s, per in metrics["rto"].items() for p, v in per.items()]
    lines += ["", "## Latency (ms, successful requests)", "", _row("client region", "phase", "p50", "p99", "n"), _row(*["---"] * 5)]
    lines += [_row(p, ph, f"{v['p50']:.1f}", f"{v['p99']:.1f}", v["n"]) for p, phases in metrics["latency_ms"].items() for ph, v in phases.items()]
    lines += ["", "Timeline: ![timeline](timeline.png). Every operation with its outcome: `history.jsonl`.", ""]
    return "\n".join(lines)


def write_report(day: TargetGameDay, metrics: dict[str, Any], report_dir: Path) -> None:
    from meridian_local import timeline

    report_dir.mkdir(parents=True, exist_ok=True)
    timeline.plot(day.client.samples, day.marks, metrics["windows"], {}, report_dir / "timeline.png", started=day.started)
    (report_dir / "history.jsonl").write_text("".join(json.dumps(op.to_json()) + "\n" for op in day.history.ops))
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (report_dir / "report.md").write_text(markdown(metrics))


def aws_target(args: argparse.Namespace) -> AwsTarget:
    """The deployed stack ``--stack`` names, checked before any load: outputs, credentials, templates."""
    from meridian.evacuation import API_ERRORS
    from meridian.topology import find_stack_file, load_stack_file
    from meridian_local.state import project_root

    if not args.stack:
        raise UsageError("--target aws needs --stack NAME (the deployed Pulumi stack)")
    root = project_root()
    topology = load_stack_file(find_stack_file(args.stack, root))
    try:
        target = AwsTarget(topology, stack_outputs(args.stack, root))
        target.clients("sts", topology.regions[0]).get_caller_identity()
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    except API_ERRORS as exc:
        raise UsageError(f"no usable AWS credentials ({str(exc).splitlines()[0]}); configure them (aws configure, or OIDC in CI)") from None
    return target


def run_target(target: Target, args: argparse.Namespace, scenarios: list[str], *, out_timeout: float) -> int:
    day = TargetGameDay(target, scenarios=scenarios, phase_seconds=args.phase_seconds, fault_seconds=args.fault_seconds,
                        workers=args.workers, out_timeout=out_timeout, progress=lambda line: print(f"  {line}", flush=True))
    if isinstance(target, AwsTarget) and any(s != "region-loss" for s in scenarios):
        try:
            target.check_templates(day.victim)
        except TargetError as exc:
            raise UsageError(str(exc)) from None
    print(f"game day on {target.name} stack {target.stack}: {', '.join(scenarios)} (zone {day.zone}, fault on {day.victim})")
    metrics = asyncio.run(day.run())
    write_report(day, metrics, Path(args.report))
    for name, r in metrics["scenario_results"].items():
        print(f"  {r['verdict']} {name}: {r['why']}")
    for name, check in metrics["checks"].items():
        print(f"  {'PASS' if check['pass'] else 'FAIL'} {name}: {check.get('value')}")
    print(f"report: {Path(args.report) / 'report.md'} (metrics.json, timeline.png, history.jsonl)")
    return 0 if metrics["passed"] else 1


def add_target_option(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``--target``, ``--stack`` and ``--fault-seconds`` on the existing ``gameday`` command (local_cmds.py),
    whose local scenarios run as before; the target scenarios run through this driver."""
    parser = sub.choices.get("gameday")
    if parser is None:
        return
    local_handler = parser.get_default("handler")
    for action in parser._actions:
        if action.dest == "scenario" and action.choices is not None:
            action.choices = [*action.choices, *(s for s in SCENARIOS if s not in action.choices)]
    parser.add_argument("--target", choices=["local", "aws"], default="local",
                        help="local (default): the local run; aws: the deployed stack --stack names (docs/gameday-aws.md)")
    parser.add_argument("--stack", metavar="NAME", help="with --target aws: the deployed Pulumi stack; with local: must be the running one")
    parser.add_argument("--fault-seconds", type=float, default=120.0, help="how long each target fault lasts (default 120)")

    def handler(args: argparse.Namespace) -> int:
        if args.fault_seconds <= 0:
            raise UsageError("--fault-seconds must be more than 0")
        if args.target == "aws":
            scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
            if scenarios[0] not in SCENARIOS:
                raise UsageError(f"{scenarios[0]} runs on the local run only; on AWS: {', '.join(SCENARIOS)}")
            return run_target(aws_target(args), args, scenarios, out_timeout=300.0)
        from meridian_cli.local_cmds import _state_dir

        state_dir = _state_dir(args)
        if args.stack or args.scenario in SCENARIOS[1:]:
            try:
                target = LocalTarget(state_dir)
            except TargetError as exc:
                raise UsageError(str(exc)) from None
            if args.stack and args.stack != target.stack:
                raise UsageError(f"the local run runs stack {target.stack!r}, not {args.stack!r}; drop --stack or use --target aws")
            if args.scenario in SCENARIOS[1:]:
                return run_target(target, args, [args.scenario], out_timeout=30.0)
        return int(local_handler(args))

    parser.set_defaults(handler=handler)

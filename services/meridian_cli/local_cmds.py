"""`meridian up --local`, `meridian local status|fail|partition|heal`, `meridian down`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, resolve_topology


def _state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir`` as given; else ``.meridian/local`` of the project root (found from any folder inside it)."""
    from meridian_local.state import resolve

    given = getattr(args, "state_dir", None)
    return resolve(Path(given) if given else None).absolute()


def console() -> Any:
    """A rich console as wide as the terminal (80 columns in a pipe): the local run's tables fit 80."""
    from rich.console import Console

    return Console()


def emit(text: str) -> None:
    """Print to stdout; a reader that closed the pipe (``| head``) ends the output quietly, not in a traceback."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def start_local(topology_path: str, state_dir: Path, *, time_scale: float, latency_scale: float, lag: float, timeout: float = 120,
                backend: str = "moto", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start the supervisor in the background and wait until every region serves; ``progress`` gets each
    line the supervisor logs meanwhile."""
    from meridian_local import moto_server
    from meridian_local.state import read_state, state_file

    running = read_state(state_dir)
    if running is not None:
        raise UsageError(f"a local run is already up (edge {running['edge']}, pid {running['pid']}); run `meridian down` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file(state_dir).unlink(missing_ok=True)
    log_path = state_dir / "supervisor.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the supervisor's output
    proc = subprocess.Popen(
        [sys.executable, "-m", "meridian_local.supervisor", "--config", str(Path(topology_path).resolve()), "--state", str(state_dir.absolute()),
         "--edge-port", str(moto_server.free_port()), "--time-scale", str(time_scale), "--latency-scale", str(latency_scale),
         "--lag", str(lag), "--backend", backend],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    deadline, shown = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if progress is not None:
            lines = log_path.read_text(errors="replace").splitlines()
            for line in lines[shown:]:
                progress(line.split("] ", 1)[-1])
            shown = len(lines)
        state = read_state(state_dir)
        if state is not None:
            return state
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise UsageError(f"the local run failed to start: {' | '.join(tail)} (full log: {log_path})")
        time.sleep(0.2)
    proc.terminate()
    raise UsageError(f"the local run was not ready within {timeout:.0f} s; see {log_path}")


def stop_local(state_dir: Path, timeout: float = 30) -> list[int]:
    """Stop the supervisor; returns the pids still alive afterwards (empty: nothing left)."""
    from meridian_local.state import pid_alive, read_state

    state = read_state(state_dir)
    if state is None:
        return []
    pids = [int(state["pid"]), *[int(r["pid"]) for r in state["regions"].values() if r.get("pid")]]
    if state.get("moto_pid"):
        pids.append(int(state["moto_pid"]))
    os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def cmd_up(args: argparse.Namespace) -> int:
    if not args.local:
        raise UsageError("only `meridian up --local` is offered; deploy to AWS with `pulumi up`")
    topology = resolve_topology(args)
    path = args.config or f"Pulumi.{args.stack}.yaml"
    state_dir = _state_dir(args)
    from meridian_local.state import read_state

    if (running := read_state(state_dir)) is not None:
        raise UsageError(f"a local run is already up (edge {running['edge']}, pid {running['pid']}); run `meridian down` first")
    if args.backend == "localstack":
        from meridian_local.backend import BackendError, check_answers, localstack_endpoint

        try:  # before anything starts: one line naming LOCALSTACK_HOST and `localstack start`
            check_answers(localstack_endpoint())
        except BackendError as exc:
            raise UsageError(str(exc)) from None
    out = console()
    started = time.monotonic()
    with out.status(f"starting {len(topology.regions)} regions of {topology.project}/{topology.stack} locally ...") as spinner:
        def progress(line: str) -> None:
            spinner.update(f"[{time.monotonic() - started:4.1f} s] {line[:70]}")
        state = start_local(path, state_dir, time_scale=args.time_scale, latency_scale=args.latency_scale, lag=args.lag,
                            backend=args.backend, progress=progress)
    aws = "embedded AWS" if args.backend == "moto" else "LocalStack"
    out.print(f"up in {time.monotonic() - started:.1f} s: edge {state['edge']}")
    out.print(f"  {aws} {state['aws_endpoint']}; state {state_dir}")
    for region, info in state["regions"].items():
        out.print(f"  {region:16} {info['url']}")
    print(f"export EDGE={state['edge']}")
    if args.detach:
        out.print("running in the background: `meridian local status`, `meridian down`")
        return 0
    try:
        _live(state_dir)
    finally:
        stop_local(state_dir)
    return 0


#: How ``meridian local status`` names each strong table's mechanism (the supervisor's ``strong_tables``).
STRONG_MECHANISMS = {"mrsc": "MRSC (emulated)", "owner": "owner region"}


def _status_table(status: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"{status['stack']}: edge {status['edge']}", title_justify="left")
    for column, justify in (("region", "left"), ("service", "left"), ("restarts", "right"), ("edge", "left"), ("dial", "right"),
                            ("requests", "right"), ("errors", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for region, r in status["regions"].items():
        state = r["state"] if r["state"] != "crashed" else f"[red]crashed[/] (restart in {r.get('restart_in') or 0:.1f} s)"
        table.add_row(region, state, str(r.get("restarts", 0)), "healthy" if r["healthy"] else "[red]unhealthy[/]", str(r["dial"]),
                      str(r["requests"]), str(r["errors"]))
    rep = status["replication"]
    lags = ", ".join(f"{k} {v['lag_p50_ms']:.0f} ms" for k, v in rep["pairs"].items() if v["lag_p50_ms"] is not None) or "no traffic yet"
    backend = status.get("backend") or {}
    if backend.get("shared"):
        rep_line = f"replication: {backend['replication']}; strong keys: {backend['strong_keys']}"
    else:
        rep_line = f"replication: pending {rep['pending']}, held {rep['held']}, conflicts {rep['conflicts_recorded']}, partitions {rep['partitions'] or 'none'}"
    aws = status.get("aws") or {}
    aws_line = f"backend: {backend.get('name', 'moto')} at {status['aws_endpoint']}"
    if aws.get("state") in ("dead", "unreachable"):
        aws_line += (f"\n[red]AWS {aws['state'].upper()}[/] since {time.strftime('%H:%M:%S', time.localtime(aws['since']))}: "
                     f"{aws.get('detail')}")
    releases = {r: str(s.get("release") or "?") for r, s in status["regions"].items()}
    release_line = (f"release: {next(iter(releases.values()))} in every region" if len(set(releases.values())) == 1
                    else "releases: " + ", ".join(f"{r} {name}" for r, name in releases.items()))
    strong = status.get("strong_tables") or {}
    strong_line = "strong tables: " + "; ".join(f"{', '.join(n for n, m in strong.items() if m == mechanism)} {STRONG_MECHANISMS[mechanism]}"
                                                for mechanism in dict.fromkeys(strong.values()))
    table.caption = f"{aws_line}\n{release_line}\n{rep_line}\n{strong_line}" + ("" if backend.get("shared") else f"\nlag p50: {lags}")
    table.caption_justify = "left"
    return table


def _live(state_dir: Path) -> None:
    from rich.live import Live

    from meridian_local.state import control

    with Live(refresh_per_second=2) as live:
        while True:
            live.update(_status_table(control(state_dir, "GET", "status")))
            time.sleep(0.5)


def _operator_token(state_dir: Path) -> str | None:
    """The run's operator credential (stock and other operator actions), read from its embedded Secrets
    Manager as an operator reads it on AWS; None if the embedded AWS cannot answer."""
    from meridian.topology import load_stack_file
    from meridian_local.oversell import operator_token
    from meridian_local.state import read_state

    try:
        return operator_token(state_dir, load_stack_file(Path((read_state(state_dir) or {})["config"])))
    except Exception:  # noqa: BLE001 - a status must print whatever the embedded AWS's state
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from meridian_local.state import NotRunning, control

    try:
        status = control(_state_dir(args), "GET", "status")
    except NotRunning as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        status["operator_token"] = _operator_token(_state_dir(args))
        emit(json.dumps(status, indent=2, sort_keys=True))
    else:
        console().print(_status_table(status))
    return 0


def _control(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    from meridian_local.state import NotRunning, control

    try:
        return control(_state_dir(args), method, path, body)
    except (NotRunning, ValueError) as exc:
        raise UsageError(str(exc)) from None


def cmd_fail(args: argparse.Namespace) -> int:
    _control(args, "POST", f"fail/{args.region}", {"hard": True} if args.hard else {})
    if args.hard:
        print(f"{args.region} lost: its service is down and what it had not replicated is destroyed "
              "(its replicas are rebuilt from the survivors at heal)")
    else:
        print(f"{args.region} failed: its service is down and replication to and from it is held")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    _control(args, "POST", "partition", {"a": args.region_a, "b": args.region_b})
    print(f"{args.region_a} and {args.region_b} can no longer reach each other")
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    _control(args, "POST", "heal", {"region": args.region} if args.region else {})
    print(f"healed {args.region or 'every region and link'}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from meridian_local.state import read_state

    state_dir = _state_dir(args)
    if read_state(state_dir) is None:
        print(f"no local run in {state_dir}")
        return 0
    backend = (read_state(state_dir) or {}).get("backend") or {}
    left = stop_local(state_dir)
    if left:
        raise UsageError(f"processes still alive after stopping: {left}")
    print("stopped the local run; no process left")
    if backend and not backend.get("owned", True):
        print(f"{backend.get('name')} at {backend.get('endpoint')} was not started by Meridian: it keeps running, with its data")
    return 0


def cmd_gameday(args: argparse.Namespace) -> int:
    from meridian_local import gameday
    from meridian_local.backend import record_not_possible, split_scenarios
    from meridian_local.state import read_state

    state_dir = _state_dir(args)
    if (state := read_state(state_dir)) is None:
        raise UsageError(f"no local run in {state_dir}; start one with `meridian up --local --detach` first")
    if args.workers < 0:
        raise UsageError("--workers must be 0 or more")
    scenarios = list(gameday.SCENARIOS) if args.scenario == "all" else [args.scenario]
    # Shared replicas (LocalStack): what needs diverging replicas is reported, never run and called passed.
    scenarios, not_possible = split_scenarios(scenarios, state.get("backend"))
    if not scenarios:
        raise UsageError("; ".join(f"{name} is {reason}" for name, reason in not_possible.items()))
    out = console()
    for name, reason in not_possible.items():
        out.print(f"  [yellow]NOT POSSIBLE[/] {name}: {reason}")
    out.print(f"game day on {state.get('stack')}: {', '.join(scenarios)} (phases of {args.phase_seconds:g} s, {args.workers} clients)")
    with out.status("load starting ...") as spinner:
        def progress(line: str) -> None:
            out.print(f"  {line}")
            spinner.update(line.split("  ", 1)[-1])
        metrics = gameday.run(state_dir, scenarios, Path(args.report), phase_seconds=args.phase_seconds, workers=args.workers,
                              progress=progress)
    record_not_possible(Path(args.report), not_possible)
    for name, check in metrics["checks"].items():
        mark = "[green]PASS[/]" if check["pass"] else "[red]FAIL[/]"
        out.print(f"  {mark} {name}: {check.get('value')}" + ("" if check["pass"] else f": {metrics['failures'].get(name, '')}"),
                  highlight=False)
    for scenario, f in metrics["scenario_results"].items():
        if "seconds" in f:
            seconds = f"{f['seconds']:.2f} s" if f["seconds"] is not None else "never"
            mark = "[green]PASS[/]" if f["within_target"] else "[red]FAIL[/]"
            out.print(f"  {mark} {scenario}: edge failover {seconds} (allowed {f['allowed_seconds']:.2f} s)")
    lost = metrics["checks"].get("acknowledged_writes_lost", {})
    if "hard-region-loss" in metrics["scenario_results"]:
        out.print(f"  RPO of the hard region loss: {lost.get('lost_unreplicated', 0)} acknowledged writes lost unreplicated; "
                  f"{lost.get('lost_by_bug', 0)} lost by a bug")
    if (strong := metrics.get("oversell")) is not None:
        shares = strong["refused_share"]
        out.print(f"  oversell: {strong['acknowledged']} of {strong['units']} units reserved, {strong['available']} left; "
                  "not served per fault, worst client region: "
                  + ", ".join(f"{phase} {max(per.values()):.0%}" for phase, per in shares.items()), highlight=False)
    if (bad := metrics["scenario_results"].get("bad-release")) is not None:
        m, a = bad["measured"], bad["all_at_once"]
        mark = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]"}.get(bad["verdict"], "[yellow]INCONCLUSIVE[/]")
        out.print(f"  {mark} bad-release: {bad['why']}; served by {len(m['regions_served'])} region(s), {m['failed_requests']} requests "
                  f"failed, rolled back after {m['time_to_rollback_seconds']:.1f} s; all at once: {len(a['regions_served'])} regions, "
                  f"~{a['failed_requests']} requests failed", highlight=False)
    convergence = metrics["convergence_seconds"]
    out.print(f"  {metrics['requests']} requests, {metrics['requests_per_second']:.0f}/s; converged "
              f"{'never' if convergence is None else f'{convergence:.2f} s'} after the load stopped")
    out.print(f"report: {Path(args.report) / 'report.md'} (metrics.json, timeline.png, history.jsonl)")
    return 0 if metrics["passed"] else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run every region of a stack on this machine (--local)")
    add_stack_options(up)
    up.add_argument("--local", action="store_true", help="embedded AWS (moto), one service process per region, emulated edge")
    up.add_argument("--detach", action="store_true", help="return once every region serves, leaving it running")
    up.add_argument("--latency-scale", type=_positive, default=1.0, help="multiply real inter-region delays (0: none)")
    up.add_argument("--time-scale", type=_positive, default=1.0, help="multiply health-check intervals (0.1: ten times faster)")
    up.add_argument("--lag", type=_positive, default=0.5, help="emulated replication lag in seconds (default 0.5)")
    up.add_argument("--backend", choices=["moto", "localstack"], default="moto",
                    help="moto (default): an embedded moto server; localstack: a LocalStack you run (LOCALSTACK_HOST, default localhost:4566)")
    up.add_argument("--state-dir", help=argparse.SUPPRESS)
    up.set_defaults(handler=cmd_up)

    local = sub.add_parser("local", help="inspect and break a local run")
    local_sub = local.add_subparsers(dest="local_command", metavar="SUBCOMMAND")
    status = local_sub.add_parser("status", help="regions, edge health, dials, replication")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    fail = local_sub.add_parser("fail", help="fail a region (its service dies; replication holds)")
    fail.add_argument("region")
    fail.add_argument("--hard", action="store_true", help="a disaster: also destroy the writes it had not replicated yet")
    fail.set_defaults(handler=cmd_fail)
    part = local_sub.add_parser("partition", help="cut the link between two regions")
    part.add_argument("region_a")
    part.add_argument("region_b")
    part.set_defaults(handler=cmd_partition)
    heal = local_sub.add_parser("heal", help="heal one region, or everything")
    heal.add_argument("region", nargs="?")
    heal.set_defaults(handler=cmd_heal)
    for p in (status, fail, part, heal):
        p.add_argument("--state-dir", help=argparse.SUPPRESS)

    day = sub.add_parser("gameday", help="drive load through the local edge, inject a failure, heal, check")
    day.add_argument("--scenario", choices=["region-loss", "hard-region-loss", "partition", "conflicts", "oversell", "bad-release", "all"],
                     default="all")
    day.add_argument("--report", default="reports/gameday", metavar="DIR", help="where report.md, metrics.json, timeline.png go")
    day.add_argument("--phase-seconds", type=_positive, default=6.0, help="length of each steady phase")
    day.add_argument("--workers", type=int, default=8, help="concurrent clients")
    day.add_argument("--state-dir", help=argparse.SUPPRESS)
    day.set_defaults(handler=cmd_gameday)

    down = sub.add_parser("down", help="stop the local run; leaves no process behind")
    down.add_argument("--state-dir", help=argparse.SUPPRESS)
    down.set_defaults(handler=cmd_down)


REGISTRY.append(register)

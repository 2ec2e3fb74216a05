"""`meridian evacuate REGION`, `meridian restore REGION` and `meridian evacuations`: the evacuator's code
path (``meridian.evacuation``), from a terminal.

Against AWS (credentials from the usual chain) ``evacuate``:

1. reads every region's evacuation record from the directory global table through ``--via`` (default: the
   first other region of the stack, since the region being evacuated may be the sick one), and the
   accelerator's dials (its API answers in us-west-2 only);
2. checks the safety rule on both entry points: never the last serving region of a residency zone;
3. writes the region's record: who (your AWS identity), why (``--reason``), when. The record is what holds:
   the evacuator's minute reconcile never ends a manual evacuation, only ``meridian restore`` does;
4. publishes ``Meridian/Evacuation`` ``Evacuated`` = 1 in the region's CloudWatch: the region's evacuation
   alarm goes to ALARM, Route 53's health check on it turns unhealthy and the latency name stops answering
   with the region, with no Route 53 API call (the region's evacuator republishes the record every minute);
5. sets the region's accelerator dial to 0 (best effort: if us-west-2 does not answer, the record and the
   metric still hold and the evacuator sets the dial once the API answers again).

``restore`` does the reverse (record, metric 0, configured dial). ``--dry-run`` shows the change and
changes nothing (with no AWS access it shows it against the stack's config). ``--local`` acts on a local
run's emulated edge, whose dial removes a region from both of its emulated entry points.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from meridian.evacuation import (
    ACCELERATOR_API_REGION,
    API_ERRORS,
    DIAL_METRIC,
    EVACUATED_METRIC,
    EVACUATION_NAMESPACE,
    Change,
    Dials,
    Evacuations,
    Records,
    alarm_name,
    expected_dials,
    metric_dimensions,
    plan_evacuation,
)
from meridian.topology import Topology
from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, resolve_topology


def _client(service: str, region: str) -> Any:
    """A boto3 client (tests replace this function with one that returns stubbed clients)."""
    import boto3

    return boto3.client(service, region_name=region)


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing to change an evacuation without confirmation; pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def default_via(topology: Topology, region: str | None) -> str:
    """Where to read and write the records: the stack's first region other than ``region``."""
    return next(r for r in topology.regions if r != region)


def _identity(via: str) -> str:
    """``manual:<your AWS identity>`` (or your local user name if STS does not answer)."""
    try:
        return f"manual:{_client('sts', via).get_caller_identity()['Arn']}"
    except API_ERRORS:
        return f"manual:{getpass.getuser()}"


class _Publisher:
    """PutMetricData in the target region, with exactly the dimensions the alarm (and the Lambda's EMF) use.
    A failure is reported, never fatal: the record holds and the region's evacuator republishes it."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def __call__(self, metric: str, region: str, value: float) -> None:
        try:
            _client("cloudwatch", region).put_metric_data(Namespace=EVACUATION_NAMESPACE, MetricData=[{
                "MetricName": metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in metric_dimensions(region).items()],
                "Value": value,
                "Unit": "Percent" if metric == DIAL_METRIC else "None",
                # Standard resolution (no StorageResolution): Route 53 refuses alarms on high-resolution metrics.
            }])
        except API_ERRORS as exc:
            self.notes.append(f"could not publish {metric}={value:g} in {region} ({exc}); the record holds and "
                              f"{region}'s evacuator republishes it every minute")


def _evacuations(topology: Topology, via: str, publish: _Publisher) -> Evacuations:
    dials = Dials(_client("globalaccelerator", ACCELERATOR_API_REGION), f"{topology.project}-{topology.stack}")
    return Evacuations(topology, records=Records(_client("dynamodb", via), topology),
                       dials=dials if topology.routing.global_accelerator else None, publish=publish)


def _describe(topology: Topology, change: Change, *, restoring: bool) -> list[str]:
    region = change.region
    lines = [f"{region}: {'restore' if restoring else 'evacuate'}: {change.reason}"]
    verb = "back in" if restoring else "withdrawn from"
    lines.append(f"  Route 53: {verb} the latency name {topology.domain}: {EVACUATION_NAMESPACE} {EVACUATED_METRIC}="
                 f"{0 if restoring else 1} in {region} -> alarm {alarm_name(topology, region)} -> health check "
                 "(about 2-3 minutes; no Route 53 API call)")
    if change.dial_from is not None:
        lines.append(f"  Global Accelerator: dial {change.dial_from:.0f} -> {change.dial_to:.0f}")
    elif topology.routing.global_accelerator:
        lines.append(f"  Global Accelerator: dial not read ({change.dial_note})")
    return lines


def _offline(topology: Topology, region: str, restoring: bool, exc: Exception) -> Change:
    """The change against the stack's config, when AWS cannot be read (dry runs only)."""
    print(f"note: no access to AWS ({type(exc).__name__}); showing the change against the stack's config, "
          "assuming no region is evacuated now")
    configured = expected_dials(topology, ())
    dial = configured[region] if topology.routing.global_accelerator else None
    if restoring:
        return Change(region, "restore", True, f"restored to the configured dial {topology.routing.dial(region)}", False,
                      dial_from=0.0 if dial is not None else None, dial_to=dial)
    allowed, reason = plan_evacuation(topology, region, configured if topology.routing.global_accelerator else None)
    return Change(region, "evacuate", allowed, reason, allowed, dial_from=dial, dial_to=0.0 if allowed and dial is not None else dial)


def _local_topology(args: argparse.Namespace) -> Topology:
    """The stack the local run is running (its state names the stack file), not the default ``dev``;
    a ``--stack``/``--config`` that names another stack is a mistake, said in one line."""
    from meridian.topology import load_stack_file
    from meridian_local.state import read_state, resolve

    state_dir = resolve(Path(args.state_dir) if args.state_dir else None)
    state = read_state(state_dir)
    if state is None:
        raise UsageError(f"no local run in {state_dir}; start one with `meridian up --local`")
    if args.config or args.stack:
        topology = resolve_topology(args)
        if topology.stack != state.get("stack"):
            raise UsageError(f"the local run runs stack {state.get('stack')!r}, not {topology.stack!r}; drop --stack/--config "
                             "to act on the running stack")
        return topology
    if not state.get("config"):
        raise UsageError("the local run does not record its stack file (started by an older meridian); pass --stack NAME")
    return load_stack_file(Path(state["config"]))


def cmd_evacuate(args: argparse.Namespace) -> int:
    topology = _local_topology(args) if args.local else resolve_topology(args)
    if args.region not in topology.regions:
        raise UsageError(f"{args.region} is not a region of stack {topology.stack} ({', '.join(topology.regions)})")
    restoring = args.command == "restore"
    if args.local:
        return _local(args, topology, restoring)
    reason = getattr(args, "reason", None)
    if not restoring and not args.dry_run and not reason:
        raise UsageError("pass --reason \"...\": the evacuation record keeps why, for whoever restores it")
    via = args.via or default_via(topology, args.region)
    if via not in topology.regions:
        raise UsageError(f"--via {via} is not a region of stack {topology.stack} ({', '.join(topology.regions)})")
    publish = _Publisher()
    evacuations = _evacuations(topology, via, publish)
    try:
        preview = (evacuations.restore(args.region, by="manual", dry_run=True) if restoring else
                   evacuations.evacuate(args.region, by="manual", reason=reason or "-", dry_run=True))
    except API_ERRORS as exc:
        if not args.dry_run:
            raise UsageError(f"cannot read the evacuation records in {via} ({exc}); try --via another region") from None
        preview = _offline(topology, args.region, restoring, exc)
    print("\n".join(_describe(topology, preview, restoring=restoring)))
    if not preview.allowed:
        return 1
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    if not _confirm(f"{'restore' if restoring else 'evacuate'} {args.region}?", args.yes):
        print("cancelled")
        return 1
    who = _identity(via)
    now = time.time()
    change = (evacuations.restore(args.region, by=who, now=now) if restoring else
              evacuations.evacuate(args.region, by=who, reason=reason or "-", now=now))
    if not change.allowed:
        print(f"{args.region}: refused: {change.reason}")
        return 1
    print(f"{args.region}: record written through {via} ({who}); {EVACUATED_METRIC}={0 if restoring else 1} published in {args.region}")
    if change.dial_note:
        print(f"warning: {change.dial_note}; " + ("the evacuator sets the dial to 0 once the API answers" if not restoring else
              f"run `meridian restore {args.region}` again once it answers"))
    elif change.dial_to is not None:
        print(f"{args.region}: accelerator dial {change.dial_to:.0f}")
    for note in publish.notes:
        print(f"warning: {note}")
    return 0


def _local(args: argparse.Namespace, topology: Topology, restoring: bool) -> int:
    from meridian_local.state import NotRunning, control, resolve

    state_dir = resolve(Path(args.state_dir) if args.state_dir else None)
    try:
        status = control(state_dir, "GET", "status")
    except NotRunning as exc:
        raise UsageError(str(exc)) from None
    dials = {r: float(s["dial"]) for r, s in status["regions"].items()}
    healthy = {r: bool(s["healthy"]) for r, s in status["regions"].items()}
    current = dials.get(args.region, 0.0)
    target = float(topology.routing.dial(args.region)) if restoring else 0.0
    if restoring:
        allowed, reason = True, f"restore to the configured dial {target:.0f}"
    else:
        allowed, reason = plan_evacuation(topology, args.region, dials, healthy)
    print(f"{args.region}: traffic dial {current:.0f} -> {target if allowed else current:.0f} (local run {status['edge']}); {reason}")
    if not allowed:
        return 1
    if args.dry_run or current == target:
        print("dry run: nothing changed" if args.dry_run else "already there: nothing changed")
        return 0
    if not _confirm(f"set {args.region}'s dial to {target:.0f}?", args.yes):
        print("cancelled")
        return 1
    control(state_dir, "POST", f"dial/{args.region}", {"value": int(target)})
    print(f"{args.region}: dial set to {target:.0f}")
    return 0


def region_alarms(topology: Topology, region: str) -> list[dict[str, Any]]:
    """The region's own alarms and those of its replication to each peer (name prefixes of infra/components/alarms.py)."""
    prefix = f"{topology.project}-{topology.stack}"
    cloudwatch = _client("cloudwatch", region)
    found: list[dict[str, Any]] = []
    for name_prefix in (f"{prefix}-{region}-", f"{prefix}-replication-{region}-to-"):
        resp = cloudwatch.describe_alarms(AlarmNamePrefix=name_prefix, AlarmTypes=["MetricAlarm", "CompositeAlarm"])
        found += resp.get("MetricAlarms", []) + resp.get("CompositeAlarms", [])
    return found


def cmd_evacuations(args: argparse.Namespace) -> int:
    """Each region's record, evacuation alarm, dial and alarms in ALARM: what to read before a restore
    (docs/runbooks/failback.md)."""
    topology = resolve_topology(args)
    via = args.via or default_via(topology, None)
    try:
        records = Records(_client("dynamodb", via), topology).all(consistent=True)
    except API_ERRORS as exc:
        raise UsageError(f"cannot read the evacuation records in {via} ({exc}); try --via another region") from None
    dials: dict[str, float] = {}
    if topology.routing.global_accelerator:
        try:
            groups = Dials(_client("globalaccelerator", ACCELERATOR_API_REGION), f"{topology.project}-{topology.stack}").groups()
            dials = {r: d for r, (_, d) in groups.items()}
        except API_ERRORS:
            pass
    rows: list[dict[str, Any]] = []
    for region in topology.regions:
        flag = alarm_name(topology, region)
        try:
            alarms = region_alarms(topology, region)
            state = next((a["StateValue"] for a in alarms if a["AlarmName"] == flag), "missing")
            firing = sorted(a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM" and a["AlarmName"] != flag)
        except API_ERRORS:
            state, firing = "unreadable", []
        record = records.get(region)
        rows.append({"region": region, "evacuated": bool(record and record.evacuated),
                     "record": record.describe() if record else "no record (never evacuated)",
                     "evacuation_alarm": state, "dial": dials.get(region), "alarms_in_alarm": firing})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        dial = "?" if row["dial"] is None else f"{row['dial']:.0f}"
        print(f"{row['region']}: {'EVACUATED' if row['evacuated'] else 'serving'}; {alarm_name(topology, row['region'])} "
              f"{row['evacuation_alarm']}; dial {dial}; {row['record']}")
        print(f"  in ALARM: {', '.join(row['alarms_in_alarm']) or 'none'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (("evacuate", "take a region out of both entry points (Route 53 latency name and Global Accelerator); "
                                    "refused if a zone would be left unserved"),
                       ("restore", "put a region back on both entry points (ends a manual or automatic evacuation)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("region")
        add_stack_options(p)
        if name == "evacuate":
            p.add_argument("--reason", help="why (kept in the evacuation record; required unless --dry-run)")
        p.add_argument("--via", metavar="REGION", help="read and write the records through this region (default: the stack's first other region)")
        p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        p.add_argument("--local", action="store_true", help="act on the local run's emulated edge (its running stack)")
        p.add_argument("--state-dir", help=argparse.SUPPRESS)
        p.set_defaults(stack=None)  # without --stack: dev, or with --local the stack the local run runs
        p.set_defaults(handler=cmd_evacuate)
    p = sub.add_parser("evacuations", help="each region's evacuation record, evacuation alarm and accelerator dial",
                       description="each region's evacuation record, evacuation alarm and accelerator dial")
    add_stack_options(p)
    p.add_argument("--via", metavar="REGION", help="read the records through this region (default: the stack's first region)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=cmd_evacuations)


REGISTRY.append(register)

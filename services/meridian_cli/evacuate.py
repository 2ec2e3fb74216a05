"""`meridian evacuate REGION` / `meridian restore REGION`: the evacuator's code path, from a terminal.

Against AWS (credentials from the usual chain) it reads the accelerator's endpoint groups and sets the
dial; ``--local`` does the same on a local run's emulated edge. ``--dry-run`` only shows the change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, resolve_topology


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing to change a traffic dial without confirmation; pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_evacuate(args: argparse.Namespace) -> int:
    from meridian.evacuation import ACCELERATOR_API_REGION, Dials, plan_evacuation

    topology = resolve_topology(args)
    if args.region not in topology.regions:
        raise UsageError(f"{args.region} is not a region of stack {topology.stack} ({', '.join(topology.regions)})")
    restoring = args.command == "restore"
    target = float(topology.routing.dial(args.region)) if restoring else 0.0
    if args.local:
        from meridian_local.state import DEFAULT_DIR, NotRunning, control

        state_dir = Path(args.state_dir) if args.state_dir else DEFAULT_DIR
        try:
            status = control(state_dir, "GET", "status")
        except NotRunning as exc:
            raise UsageError(str(exc)) from None
        dials = {r: float(s["dial"]) for r, s in status["regions"].items()}
        healthy = {r: bool(s["healthy"]) for r, s in status["regions"].items()}
        source = f"local run {status['edge']}"
    else:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client("globalaccelerator", region_name=ACCELERATOR_API_REGION)
        try:
            groups = Dials(client, f"{topology.project}-{topology.stack}").groups()
        except (BotoCoreError, ClientError, LookupError) as exc:
            if not args.dry_run:
                raise UsageError(f"cannot read the accelerator: {exc}") from None
            groups = {r: ("(from the stack's config)", float(topology.routing.dial(r))) for r in topology.regions}
            print(f"note: no access to AWS ({type(exc).__name__}); showing the change against the stack's configured dials")
        dials = {r: d for r, (_, d) in groups.items()}
        healthy = {}
        source = "Global Accelerator"
    current = dials.get(args.region, 0.0)
    if restoring:
        allowed, reason = True, f"restore to the configured dial {target:.0f}"
    else:
        allowed, reason = plan_evacuation(topology, args.region, dials, healthy)
    print(f"{args.region}: traffic dial {current:.0f} -> {target if allowed else current:.0f} ({source}); {reason}")
    if not allowed:
        return 1
    if args.dry_run or current == target:
        print("dry run: nothing changed" if args.dry_run else "already there: nothing changed")
        return 0
    if not _confirm(f"set {args.region}'s dial to {target:.0f}?", args.yes):
        print("cancelled")
        return 1
    if args.local:
        control(state_dir, "POST", f"dial/{args.region}", {"value": int(target)})
    else:
        arn = groups[args.region][0]
        Dials(client, f"{topology.project}-{topology.stack}").set(arn, target)
    print(f"{args.region}: dial set to {target:.0f}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (("evacuate", "set a region's Global Accelerator dial to 0 (refused if a zone would be left unserved)"),
                       ("restore", "set a region's dial back to its configured value")):
        p = sub.add_parser(name, help=text)
        p.add_argument("region")
        add_stack_options(p)
        p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        p.add_argument("--local", action="store_true", help="act on the local run's emulated edge")
        p.add_argument("--state-dir", help=argparse.SUPPRESS)
        p.set_defaults(handler=cmd_evacuate)


REGISTRY.append(register)

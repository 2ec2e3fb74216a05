"""`meridian ownership`: who owns the strong keys, and the fenced handover that moves them (meridian.ownership).

- ``meridian ownership show``: the ownership map in every region's replica.
- ``meridian ownership move-from REGION``: the region owns no strong key any more (evacuating it for long):
  fence it in its own replica, wait until its writes have reached the keys' new owners, publish.
- ``meridian ownership return REGION``: it owns its keys again (the regions that hold them meanwhile are
  fenced, and their writes reach it, first).

Against AWS (credentials from the usual chain) each region's DynamoDB is called at its regional endpoint.
``--local`` acts on the local run: its embedded AWS, where a failed region's replica does not answer (as a
region lost with its storage would not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from meridian.ownership import HandoverError, OwnershipMap, handover, read_map
from meridian.topology import Topology
from meridian_cli.commands import REGISTRY
from meridian_cli.evacuate import _local_topology
from meridian_cli.main import UsageError, add_stack_options, resolve_topology


def _clients(args: argparse.Namespace, topology: Topology) -> Any:
    import boto3

    if not args.local:
        return lambda region: boto3.client("dynamodb", region_name=region)
    from meridian_local.state import NotRunning, dynamodb_clients, resolve

    try:
        return dynamodb_clients(resolve(Path(args.state_dir) if args.state_dir else None))
    except (NotRunning, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _topology(args: argparse.Namespace) -> Topology:
    topology = _local_topology(args) if args.local else resolve_topology(args)
    mechanism = topology.mechanism(topology.table("stock"), topology.global_zone)
    if mechanism == "mrsc":
        raise UsageError(f"stack {topology.stack}'s strong keys are an MRSC set: every region writes them, there is no owner to move")
    return topology


def _maps(topology: Topology, client: Any) -> dict[str, OwnershipMap | str]:
    table = topology.table_name("stock", topology.global_zone.name)
    out: dict[str, OwnershipMap | str] = {}
    for region in topology.global_zone.regions:
        try:
            out[region] = read_map(client(region), table, region)
        except Exception as exc:  # noqa: BLE001 - a replica that does not answer is shown as such
            out[region] = f"unreadable ({type(exc).__name__})"
    return out


def cmd_show(args: argparse.Namespace) -> int:
    topology = _topology(args)
    maps = _maps(topology, _clients(args, topology))
    if args.json:
        print(json.dumps({r: m if isinstance(m, str) else {"epoch": m.epoch, "excluded": list(m.excluded), "state": m.state}
                          for r, m in maps.items()}, indent=2))
        return 0
    for region, m in maps.items():
        print(f"{region}: {m if isinstance(m, str) else m.describe()}")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    topology = _topology(args)
    if args.region not in topology.global_zone.regions:
        raise UsageError(f"{args.region} is not a region of stack {topology.stack} ({', '.join(topology.regions)})")
    client = _clients(args, topology)
    maps = [m for m in _maps(topology, client).values() if isinstance(m, OwnershipMap)]
    if not maps:
        raise UsageError("no region's replica answered; nothing moved")
    current = max(maps, key=lambda m: m.epoch)
    excluded = set(current.excluded)
    excluded = excluded | {args.region} if args.command == "move-from" else excluded - {args.region}
    try:
        report = handover(topology, client, exclude=excluded, timeout=args.timeout, log=None if args.json else print)
    except HandoverError as exc:
        raise UsageError(f"handover stopped: {exc}") from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for step in report.steps:
            print(step)
        print(f"now: {report.after.describe()}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    own = sub.add_parser("ownership", help="who owns the strong keys, and the fenced handover that moves them",
                         description="who owns the strong keys (stock, reservations, email claims), and the fenced handover")
    own_sub = own.add_subparsers(dest="command", required=True, metavar="{show,move-from,return}")
    for name, text in (("show", "the ownership map in every region's replica"),
                       ("move-from", "the region owns no strong key any more: fence it, wait for its writes, publish"),
                       ("return", "the region owns its strong keys again")):
        p = own_sub.add_parser(name, help=text, description=text)
        if name != "show":
            p.add_argument("region")
            p.add_argument("--timeout", type=float, default=60.0, help="seconds the barrier waits for replication (default 60)")
        add_stack_options(p)
        p.add_argument("--local", action="store_true", help="act on the local run (its running stack)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--state-dir", help=argparse.SUPPRESS)
        p.set_defaults(stack=None, handler=cmd_show if name == "show" else cmd_move)


REGISTRY.append(register)

"""The `meridian` command: one entry point for config checks, offline plans, the local run and game days."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meridian import __version__
from meridian.topology import Topology, TopologyError, find_stack_file, load_stack_file

__all__ = ["main"]


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line, exit status 2."""


def stack_file(args: argparse.Namespace) -> Path:
    """``--config PATH`` wins; else ``--stack NAME`` (Pulumi.NAME.yaml); else the dev stack."""
    if getattr(args, "config", None):
        return Path(args.config)
    return find_stack_file(getattr(args, "stack", None) or "dev", Path.cwd())


def resolve_topology(args: argparse.Namespace) -> Topology:
    """The stack's topology, its config read as the Pulumi CLI hands it to the program."""
    return load_stack_file(stack_file(args))


def console() -> Any:
    """A rich console at least 110 columns wide, so tables stay readable in CI logs and pipes."""
    from rich.console import Console

    width = Console().width
    return Console(width=max(width, 110))


def add_stack_options(parser: argparse.ArgumentParser, *, default: str = "dev") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stack", metavar="NAME", help=f"read Pulumi.NAME.yaml in this folder (default: {default})")
    group.add_argument("--config", metavar="PATH", help="read this stack file instead")
    parser.set_defaults(stack=default)


# -- meridian config validate -----------------------------------------------------------------------
def cmd_config_validate(args: argparse.Namespace) -> int:
    topology = resolve_topology(args)
    if args.json:
        print(json.dumps(topology.to_dict(), indent=2, sort_keys=True))
        return 0
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]{topology.project}/{topology.stack}[/]: {len(topology.regions)} regions, "
        f"{len(topology.zones)} residency zones, domain {topology.domain}"
    )
    regions = Table(title="Regions", title_justify="left")
    for column in ("region", "zones", "dial", "tables"):
        regions.add_column(column)
    for region in topology.regions:
        zones = [z.name for z in topology.zones_of(region)]
        tables = sum(len(t) for t in topology.tables_in_region(region).values())
        regions.add_row(region, ", ".join(zones), str(topology.routing.dial(region)), str(tables))
    out.print(regions)
    zones_table = Table(title="Residency zones", title_justify="left")
    for column in ("zone", "regions", "tables (replicas)"):
        zones_table.add_column(column)
    for zone in topology.zones:
        names = [s.name + (" [strong]" if s.consistency == "strong" else "") for s in topology.tables if zone in topology.table_zones(s)]
        label = zone.name + (" (implicit)" if zone.implicit else "")
        zones_table.add_row(label, ", ".join(zone.regions), ", ".join(names))
    out.print(zones_table)
    r, s = topology.routing, topology.sizing
    out.print(
        f"routing: health check every {r.health_check_interval}s, unhealthy after {r.failure_threshold} failures, "
        f"Global Accelerator {'on' if r.global_accelerator else 'off'}\n"
        f"service: {s.image}, {s.cpu} CPU / {s.memory} MiB, {s.min_count}..{s.max_count} tasks per region"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meridian",
        description="Meridian: an active-active multi-region blueprint for AWS. "
        "Validate a stack, render its plan offline, run every region on this machine, rehearse failures.",
    )
    parser.add_argument("--version", action="version", version=f"meridian {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="check a stack's configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    validate = config_sub.add_parser("validate", help="validate a stack file and print the resolved topology")
    add_stack_options(validate)
    validate.add_argument("--json", action="store_true", help="print the topology as JSON")
    validate.set_defaults(handler=cmd_config_validate)

    for register in _extensions():
        register(sub)
    from meridian_cli.gameday_aws import add_target_option  # `gameday --target aws|local`, on the command local_cmds declares

    add_target_option(sub)
    return parser


def _extensions() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Subcommands that live beside the parts they drive (plan, local run, game day, evacuation)."""
    from meridian_cli import capacity, commands, cost, evacuate, keys, local_cmds, ownership_cmd, plan, rollout  # noqa: F401  (importing registers the subcommands)

    return commands.REGISTRY


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `meridian` or `meridian config` alone: show the help of the level they stopped at.
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
        return 2
    try:
        return int(handler(args))
    except (TopologyError, UsageError) as exc:
        print(f"meridian: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meridian: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

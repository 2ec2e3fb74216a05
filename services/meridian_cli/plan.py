"""`meridian plan`: render the Pulumi program under mocks and check it against the policy rules."""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter, defaultdict

from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, console, stack_file

GLOBAL_SERVICES = ("aws:route53/", "aws:globalaccelerator/")


def cmd_plan(args: argparse.Namespace) -> int:
    path = stack_file(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulumi_aws.lambda_ warns on import
        from infra.render import RenderError, render_stack
        from policy.rules import Res, check

        try:
            # infra/__main__.py itself, with the config as the Pulumi CLI hands it; --for-deploy is `pulumi up`.
            plan = render_stack(path, preview=not args.for_deploy)
        except RenderError as exc:
            raise UsageError(str(exc)) from None
    topology = plan.topology
    resources = [Res(r.type, r.name, r.region, r.inputs) for r in plan.resources if r.custom]
    violations = check(resources, topology.regions)
    if args.json:
        print(
            json.dumps(
                {
                    "stack": topology.stack,
                    "resources": [r.to_json() for r in plan.custom],
                    "outputs": plan.outputs,
                    "violations": [v.to_json() for v in violations],
                    "messages": plan.messages,
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        return 1 if violations else 0

    from rich.table import Table

    out = console()
    columns = [*topology.regions, "global"]
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in plan.custom:
        is_global = r.type.startswith(GLOBAL_SERVICES) or r.region not in topology.regions
        counts[r.type.split(":")[1]][("global" if is_global else r.region) or "global"] += 1
    table = Table(
        title=f"Plan for {topology.project}/{topology.stack}: {len(plan.custom)} resources (Pulumi program under mocks)",
        title_justify="left",
        caption="global: Route 53 (us-east-1 provider) and Global Accelerator (us-west-2 provider)",
        caption_justify="left",
    )
    table.add_column("type")
    for column in columns:
        table.add_column(column, justify="right")
    for kind in sorted(counts):
        table.add_row(kind, *[str(counts[kind][c] or "") for c in columns])
    totals = [sum(counts[k][c] for k in counts) for c in columns]
    table.add_row("[bold]total[/]", *[f"[bold]{t}[/]" for t in totals])
    out.print(table)
    out.print(f"outputs: api {plan.outputs.get('apiUrl')}, accelerator {plan.outputs.get('acceleratorDnsName') or 'off'}")
    for message in plan.messages:
        out.print(f"[yellow]{message}[/]")
    from policy.rules import RULES

    failed = {v.rule for v in violations}
    for rule in RULES:
        mark = "[red]FAIL[/]" if rule.name in failed else "[green]pass[/]"
        out.print(f"  {mark} {rule.name}: {rule.description}")
    for v in violations:
        out.print(f"    [red]{v.rule}[/] {v.resource}: {v.message}")
    out.print(f"policy: {len(violations)} violation(s)")
    return 1 if violations else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("plan", help="render the Pulumi program offline (mocks) and check the policy rules")
    add_stack_options(parser)
    parser.add_argument("--json", action="store_true", help="print resources, outputs and violations as JSON")
    parser.add_argument("--for-deploy", action="store_true",
                        help="plan as `pulumi up` runs (not a preview): deploy-only checks such as a delegated hosted zone apply")
    parser.set_defaults(handler=cmd_plan)


REGISTRY.append(register)

"""`meridian plan`: render the Pulumi program under mocks and check it against the policy rules."""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter, defaultdict
from typing import Any

from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, console, stack_file

GLOBAL_SERVICES = ("aws:route53/", "aws:globalaccelerator/")
SKIP_FLAGS = {"skipCredentialsValidation": "credential validation", "skipRequestingAccountId": "account id lookup",
              "skipMetadataApiCheck": "metadata API check"}


def provider_summary(inputs: dict[str, Any]) -> dict[str, Any]:
    """What an explicit aws provider is aimed at, from its registered inputs (JSON strings, secrets wrapped)."""
    raw = inputs.get("endpoints")
    listed = json.loads(raw) if isinstance(raw, str) else (raw or [])
    endpoints: dict[str, str] = {}
    for entry in listed:
        endpoints |= {k: v for k, v in entry.items() if v}
    return {
        "region": inputs.get("region"),
        "endpoints": endpoints,
        "skip": sorted(k for k in SKIP_FLAGS if str(inputs.get(k)).lower() == "true"),
        "s3UsePathStyle": str(inputs.get("s3UsePathStyle")).lower() == "true",
        "credentials": "from the stack (aws:accessKey)" if inputs.get("accessKey") else "the environment's",
    }


def provider_line(providers: list[dict[str, Any]]) -> str:
    """One line per distinct target: e.g. 4 aws providers -> http://localhost:4566 (18 services), skipping ..."""
    regions = ", ".join(str(p["region"]) for p in providers)
    urls = sorted({u for p in providers for u in p["endpoints"].values()})
    if not urls:
        return f"providers: {len(providers)} aws ({regions}) -> AWS's own endpoints"
    services = min(len(p["endpoints"]) for p in providers)
    skips = sorted({SKIP_FLAGS[k] for p in providers for k in p["skip"]})
    return (f"providers: {len(providers)} aws ({regions}) -> {', '.join(urls)} ({services} services each)"
            + (f"; skipping {', '.join(skips)}" if skips else "") + f"; credentials {providers[0]['credentials']}")


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
    providers = sorted((provider_summary(p.inputs) for p in plan.providers if p.type == "pulumi:providers:aws"),
                       key=lambda p: str(p["region"]))
    if args.json:
        print(
            json.dumps(
                {
                    "stack": topology.stack,
                    "resources": [r.to_json() for r in plan.custom],
                    "outputs": plan.outputs,
                    "providers": providers,
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
    out.print(provider_line(providers), highlight=False)
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

"""The game day's report: what was run, what it measured, what that means on AWS, and why a check failed.

``report.md`` is rendered from :data:`TEMPLATE` (``string.Template``); every table is built here from
``metrics.json``'s content, so the two never disagree.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from string import Template
from typing import Any

from meridian_local.state import project_root

#: The ALB target group's health check (infra/components/load_balancer.py): what Global Accelerator reads
#: for ALB endpoints (it ignores the endpoint group's own interval and threshold).
ALB_INTERVAL, ALB_UNHEALTHY_THRESHOLD = 10, 2
#: Global Accelerator's own reaction to an endpoint turning unhealthy: AWS publishes no figure ("traffic
#: returns in about 30 s" is the recovery side); assumed here and said so in the report.
GA_REACTION_ASSUMED = 10

TEMPLATE = Template("""# Game day report

$verdict

## What was run

| parameter | value |
| --- | --- |
$parameters

Scenarios: $scenarios; zone under test `$zone` (fault on $victim, its peer $peer).
$requests requests in $duration s ($rate/s through the edge); replication converged $convergence after the load stopped.

## Checks

| check | result | value | what the value counts | reason |
| --- | --- | --- | --- | --- |
$checks

## Recovery: RTO and RPO per scenario

RTO: the client-visible error window per client region (from the fault to the last error a client saw
after its retry). RPO: acknowledged writes lost, measured by the history checker against every replica.

| scenario | client region | errors seen | RTO here | RTO on AWS (estimate) |
| --- | --- | --- | --- | --- |
$rto

$rpo

## Failover: here and on AWS

$failover

## Replication lag (ms, last deliveries per pair)

From the write's appearance in its region's stream to its arrival in the other replica; deliveries held
during a fault (partition, lost region) count with the time they were held, hence p99 and max of seconds.

| pair | p50 | p99 | max | n |
| --- | --- | --- | --- | --- |
$lag

## Conflicts

$conflicts

## Exactly-once orders

$orders

## Strong keys: stock and email claims

$strong

## Bad release: the blast radius, measured

$bad_release

## Latency (ms, successful requests, per phase)

| client region | phase | p50 | p99 | n |
| --- | --- | --- | --- | --- |
$latency

Timeline: ![timeline](timeline.png) (shaded: each fault, from injection to heal; dashed: marks).
Every operation with its outcome: `history.jsonl`.

Emulated parts: replication, the edge (Route 53 latency routing + Global Accelerator) and the
inter-region network (docs/local.md). The AWS APIs are moto's; the services are the real app.
""")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def parameters(status: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """What was run: stack, commit, date, scales, lag and the routing settings the figures derive from."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    hc, routing = status["health_check"], status.get("routing", {})
    return {
        "stack": status["stack"], "commit": commit or "unknown (not a git checkout)",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "time_scale": status["time_scale"], "latency_scale": status["latency_scale"], "lag_seconds": status["replication"]["lag"],
        "health_check_interval_local": hc["interval"], "failure_threshold": hc["threshold"],
        "health_check_interval": routing.get("health_check_interval", hc["interval"] / max(status["time_scale"], 1e-9)),
        "dns_ttl": routing.get("dns_ttl", 60), "global_accelerator": routing.get("global_accelerator", True),
    }


def aws_failover(params: dict[str, Any]) -> dict[str, Any]:
    """The same detection on AWS with this stack's settings, with the formulas."""
    interval, threshold, ttl = params["health_check_interval"], params["failure_threshold"], params["dns_ttl"]
    ga = ALB_INTERVAL * ALB_UNHEALTHY_THRESHOLD + GA_REACTION_ASSUMED
    r53 = interval * threshold + ttl
    return {"global_accelerator_seconds": ga, "route53_seconds": r53,
            "global_accelerator_formula": f"ALB target health {ALB_INTERVAL} s x {ALB_UNHEALTHY_THRESHOLD} + GA reaction "
                                          f"~{GA_REACTION_ASSUMED} s (assumed; not published) = {ga} s",
            "route53_formula": f"health check {interval:g} s x {threshold} + DNS TTL {ttl} s = {r53:g} s (plus resolvers that hold answers longer)"}


def reason(name: str, check: dict[str, Any]) -> str:
    """One line: why ``check`` failed."""
    examples = check.get("examples") or []
    first = f"; e.g. {examples[0]}" if examples else ""
    if name == "acknowledged_writes_lost":
        return f"{check.get('lost_by_bug', check.get('value'))} acknowledged writes missing that no hard loss explains{first}"
    if name == "exactly_once_orders":
        return (f"{len(check.get('duplicated', []))} keys with two orders, {len(check.get('answers_differ', []))} answered with two ids, "
                f"{len(check.get('lost', []))} acknowledged orders missing{first}")
    if name == "conflicts":
        return (f"{len(check.get('injected_missing', []))} injected conflicts not recorded, {len(check.get('unexplained', []))} "
                f"recorded but not explained by two acknowledged writes from two regions{first}")
    return f"{check.get('value')} {check.get('unit', '')}{first}".strip()


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _value(check: dict[str, Any]) -> str:
    return str(check.get("value", ""))


UNITS = {
    "acknowledged_writes_lost": "acknowledged writes missing from a replica that no hard loss explains (lost by a bug)",
    "exactly_once_orders": "orders lost + keys with two orders + keys answered with two ids",
    "read_your_writes": "reads older than the write their session had acknowledged",
    "counter_bounds": "replicas whose counter total is outside [acknowledged, acknowledged + unknown]",
}


def markdown(metrics: dict[str, Any]) -> str:
    params = metrics["parameters"]
    checks = metrics["checks"]
    aws = aws_failover(params)
    scale = max(float(params["time_scale"]), 1e-9)  # local figures / scale: the same settings at full scale
    failed = metrics.get("failures", {})
    verdict = "**PASS**: every check held." if metrics["passed"] else \
        "**FAIL**: " + "; ".join(f"{name}: {why}" for name, why in failed.items())
    param_rows = [
        ("stack", params["stack"]), ("commit", params["commit"]), ("date", params["date"]),
        ("time scale", f"{params['time_scale']:g} (health checks every {params['health_check_interval_local']:g} s here, "
                       f"{params['health_check_interval']:g} s in the stack)"),
        ("latency scale", f"{params['latency_scale']:g} x real inter-region round trips"),
        ("replication lag", f"{params['lag_seconds']:g} s emulated"),
        ("failure threshold", params["failure_threshold"]),
        ("load", f"{metrics['load']['workers']} clients, {metrics['load']['think_seconds']:g} s between requests, "
                 f"phases of {metrics['load']['phase_seconds']:g} s"),
    ]
    check_rows = []
    for name, c in checks.items():
        check_rows.append(_row(name, "PASS" if c["pass"] else "FAIL", _value(c), c.get("unit") or UNITS.get(name, ""),
                               "" if c["pass"] else reason(name, c)))
    rto_rows = []
    for scenario, per in metrics.get("rto", {}).items():
        detected = metrics.get("scenario_results", {}).get(scenario, {}).get("seconds")
        for place, r in per.items():
            if not r["errors"]:
                estimate = "0"
            elif detected is not None:
                # The detection part scales with the health checks; the rest (retries, restarts) does not.
                rest = max(0.0, r["rto_seconds"] - detected)
                estimate = (f"~{aws['global_accelerator_seconds'] + rest:.0f} s (GA) / ~{aws['route53_seconds'] + rest:.0f} s (Route 53): "
                            f"detection {detected:.1f} s here -> {aws['global_accelerator_seconds']:g} / {aws['route53_seconds']:g} s")
            else:
                estimate = f"~{r['rto_seconds']:.0f} s (no health check involved: not scaled)"
            rto_rows.append(_row(scenario, place, r["errors"], f"{r['rto_seconds']:.2f} s", estimate))
    lost = checks.get("acknowledged_writes_lost", {})
    rpo_lines = []
    for scenario, result in metrics.get("scenario_results", {}).items():
        if scenario == "hard-region-loss":
            rpo = lost.get("rpo_seconds")
            rpo_lines.append(
                f"- **{scenario}**: RPO **{lost.get('lost_unreplicated', 0)} acknowledged writes** lost because unreplicated at the "
                f"failure (the oldest acknowledged {rpo:.2f} s before it)" if rpo is not None else
                f"- **{scenario}**: RPO **0 acknowledged writes** lost (what was waiting to replicate at the failure held no write a "
                f"client had been told succeeded)")
            rpo_lines[-1] += (f"; {result.get('unreplicated_deliveries_at_failure')} deliveries from {result['region']} were pending, "
                              f"{result.get('items_destroyed')} items it alone held destroyed; replication lag from it at the failure: "
                              + (", ".join(f"{k} p50 {v['p50']:.0f} ms / p99 {v['p99']:.0f} ms" for k, v in result.get("lag_at_failure_ms", {}).items())
                                 or "no deliveries yet")
                              + f". Lost by a bug: {lost.get('lost_by_bug', 0)}.")
        elif scenario == "bad-release":
            rpo_lines.append(f"- **{scenario}**: RPO 0 (the release's rehearsal fault answers before the request executes; "
                             "nothing acknowledged is written or lost)")
        elif scenario == "region-loss":
            rpo_lines.append(f"- **{scenario}**: RPO 0 here by construction (the failed region keeps its data and replication resumes "
                             "at heal); a real regional disaster loses what was unreplicated: see hard-region-loss.")
        else:
            rpo_lines.append(f"- **{scenario}**: RPO 0 (writes on both sides are held, not lost; LWW keeps one version of each item)")
    failover_lines = []
    for scenario, f in metrics.get("scenario_results", {}).items():
        if "seconds" not in f:
            continue
        seconds = f"{f['seconds']:.2f} s" if f["seconds"] is not None else "never"
        failover_lines += [
            f"- {scenario}: the edge routed {f['region']}'s clients elsewhere after **{seconds}** here "
            f"(interval x threshold = {f['target_seconds']:.2f} s; allowed {f['allowed_seconds']:.2f} s: "
            f"{'within' if f['within_target'] else 'OUTSIDE'}); back after heal in "
            + (f"{f['recovery_seconds']:.2f} s." if f.get("recovery_seconds") is not None else "never."),
            f"  On AWS with this stack's settings: Global Accelerator {aws['global_accelerator_formula']}; "
            f"Route 53 {aws['route53_formula']}. The local figure divided by the time scale is "
            f"{(f['seconds'] or 0) / scale:.1f} s.",
        ]
    lag_rows = [_row(pair, f"{v['p50']:.0f}", f"{v['p99']:.0f}", f"{v['max']:.0f}", v["n"]) for pair, v in metrics.get("lag", {}).items()]
    c = checks.get("conflicts", {})
    conflicts = (f"{c.get('recorded', 0)} recorded for this game day's users: {c.get('recorded_injected', 0)} injected on purpose "
                 f"({c.get('injected', 0)} users written on both sides of a partition) and {c.get('recorded_natural', 0)} natural. "
                 "Natural conflicts come from failover: while a user's home region was unreachable, a write ran in another region "
                 "of the zone, concurrently with one the home region had not replicated yet; LWW keeps the newer and the loser is recorded.")
    e, o = checks.get("exactly_once_orders", {}), metrics.get("orders", {})
    pairs = ", ".join(f"{n} {where}" for where, n in o.get("concurrent_duplicate_pairs", {}).items()) or "none"
    orders = (f"{e.get('ok', 0)} placements acknowledged, {e.get('failed', 0)} refused, {e.get('unknown', 0)} with an unknown outcome, "
              f"over {e.get('keys', 0)} Idempotency-Keys; sent twice at once: {pairs}. Every replica: {len(e.get('lost', []))} acknowledged "
              f"orders missing, {len(e.get('duplicated', []))} keys with two orders, {len(e.get('answers_differ', []))} keys answered with "
              f"two ids; {o.get('duplicates_merged_by_replication', 0)} double executions (same key, two regions) merged by replication.")
    strong = strong_section(metrics.get("oversell"))
    latency_rows = [_row(place, phase, f"{v['p50']:.1f}", f"{v['p99']:.1f}", v["n"])
                    for place, phases in metrics.get("latency_ms", {}).items() for phase, v in phases.items()]
    convergence = metrics.get("convergence_seconds")
    return TEMPLATE.substitute(
        verdict=verdict, parameters="\n".join(_row(k, v) for k, v in param_rows), scenarios=", ".join(metrics["scenarios"]),
        zone=metrics["zone"], victim=metrics["victim"], peer=metrics["peer"], requests=metrics["requests"],
        duration=f"{metrics['duration_seconds']:.1f}", rate=f"{metrics['requests_per_second']:.0f}",
        convergence=f"{convergence:.2f} s" if convergence is not None else "never",
        checks="\n".join(check_rows), rto="\n".join(rto_rows) or _row("-", "-", 0, "-", "-"),
        rpo="\n".join(rpo_lines) or "No fault scenario was run.", failover="\n".join(failover_lines) or "No region was failed.",
        lag="\n".join(lag_rows) or _row("no deliveries", "", "", "", ""), conflicts=conflicts, orders=orders, strong=strong,
        latency="\n".join(latency_rows) or _row("-", "-", "-", "-", 0),
        bad_release=bad_release_section(metrics.get("scenario_results", {}).get("bad-release")),
    )


def bad_release_section(result: dict[str, Any] | None) -> str:
    """The bad-release scenario: one region at a time against all at once, from the same run's rates."""
    if result is None:
        return "The `bad-release` scenario was not run."
    m, a = result["measured"], result["all_at_once"]
    waves = "; ".join(f"{', '.join(w['regions'])}: {w['result']}" for w in result["rollout"]["waves"]) or "none"
    detect = result.get("detect_seconds")
    return "\n".join([
        f"**{result['verdict']}**: {result['why']}. Release `{result['release']}` fails {result['fault_share']:.0%} of its requests "
        f"(a rehearsal fault); rolled out in waves, canary {result['canary']}; each wave watched {result['alarm']} "
        f"(fires at the earliest after {result['alarm_window_seconds']:g} s here). Waves: {waves}; never received it: "
        f"{', '.join(result['rollout']['never_received']) or 'none'}."
        + (f" The alarm fired {detect:.1f} s after the release took traffic." if detect is not None else ""),
        "",
        _row("", "regions that ever served it", "requests failed because of it", "failed after the client's retry", "time to rollback"),
        _row(*["---"] * 5),
        _row("one region at a time (measured)", f"{len(m['regions_served'])} ({', '.join(m['regions_served']) or 'none'})",
             m["failed_requests"], m["failed_after_retry"], f"{m['time_to_rollback_seconds']:.1f} s"),
        _row("all at once (computed)", f"{len(a['regions_served'])} (every region)", a["failed_requests"], a["failed_after_retry"],
             f"{a['time_to_rollback_seconds']:.1f} s"),
        "",
        f"All at once: {a['formula']} (the same alarm on the same rate fires after the same window in every region, and the "
        f"rollback takes as long). Measured: {m['requests_into_the_release']} of the window's {m['requests_in_window']} requests "
        f"entered a region running the release ({m['failure_rate']:.1%} of them answered 5xx). Times are the local run's; "
        "divided by the time scale they are the stack's (the alarm's periods are 60 s on AWS).",
    ])


def strong_section(result: dict[str, Any] | None) -> str:
    """The oversell scenario: what strong keys kept, and the share of requests they refused per fault."""
    if result is None:
        return "The `oversell` scenario was not run."
    phases = list(result["refused_share"])
    places = sorted({p for per in result["refused_share"].values() for p in per})
    rows = [_row("reservations", place, *(f"{result['refused_share'][ph].get(place, 0):.0%}" for ph in phases)) for place in places]
    rows += [_row("account creations", place, *(f"{result['email_refused_share'].get(ph, {}).get(place, 0):.0%}" for ph in phases))
             for place in places]
    return "\n".join([
        f"Stock of {result['units']} units in sku owner region `{result['owner']}`; reservations from every client region at once in "
        f"each phase: {result['acknowledged']} acknowledged, {result['available']} left, {result['reserved']} reserved "
        f"(answers: {', '.join(f'{k}: {v}' for k, v in sorted(result['answers'].items()))}). {result['emails']} new emails, each sent "
        f"from every region at once (case variants): at most {result['accounts_per_email_max']} account per email stored. "
        f"Faults: partition `{result['owner']}`|`{result['cut']}`, `{result['lost']}` lost, then the owner `{result['owner']}` lost. "
        + ("Every promise held." if result["pass"] else "BROKEN: " + "; ".join(result["examples"][:3])),
        "",
        "The price of the guarantee (the CP choice): share of attempts not served (503 `consistency_unavailable`), per phase and "
        "client region, measured once the edge has failed a lost region's clients over. While the owner is lost with its storage "
        "its keys are refused everywhere: a handover cannot fence a replica that does not answer, so ownership does not move. "
        "A planned move (`meridian ownership move-from`) fences the owner in its own replica, waits for its writes to reach the "
        "new owner, and publishes (docs/consistency.md).",
        "",
        *(["Handovers: " + "; ".join(f"{h['phase']}: {h['outcome']}" for h in result["handovers"]) + ".", ""]
          if result.get("handovers") else []),
        _row("attempts", "client region", *phases),
        _row(*["---"] * (2 + len(phases))),
        *rows,
    ])


def latency_table(samples: list[Any]) -> dict[str, dict[str, dict[str, float]]]:
    """p50/p99 (ms) of successful attempts per client region and phase."""
    import numpy as np

    groups: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        if s.status < 500:
            groups.setdefault((s.place, s.phase), []).append(s.latency * 1000)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (place, phase), values in sorted(groups.items()):
        arr = np.array(values)
        out.setdefault(place, {})[phase] = {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}
    return out

"""What strong keys cost in latency: a reservation when the sku's owner is the client's region and when it
is another one, with the published inter-region round trips injected; and, for AWS's MRSC region sets, the
write latency the two mechanisms imply.

Measured (one local run of three regions, latency scale 1.0: the edge delays every hop between two regions
by the published median round trip, meridian.geo): for each client region and each owner region, p50/p99
of N sequential reservations through the edge, against the same run's baseline — a profile read served in
the client's own region (one storage call, no hop) — and against the 20 ms routing budget the design sets
for a request's overhead above its storage call.

Modelled (not measured: MRSC cannot run here): per MRSC region set, a strong write by MRSC costs one round
trip to the nearest other replica of the set (the majority of three is the writer and one more); by the
owner mechanism it costs the round trip to the key's owner, which is the writer's own region for a third
of the keys. Both from the same published round trips.

Run: .venv/bin/python bench/strong.py   (about a minute)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from meridian.geo import rtt_ms
from meridian.ownership import owner_region
from meridian.topology import MRSC_REGION_SETS
from meridian_cli.local_cmds import start_local, stop_local
from meridian_local.oversell import operator_token

N = 40
REGIONS = ("us-east-1", "eu-west-1", "eu-central-1")
STACK = f"config:\n  meridian:regions: [{', '.join(REGIONS)}]\n  meridian:homeRegions: {{global: us-east-1}}\n"
BUDGET_MS = 20.0
#: three regions of each of AWS's MRSC region sets (meridian.topology.MRSC_REGION_SETS; EU: three of its four)
MRSC_SETS = {name: tuple(sorted(regions))[:3] for name, regions in MRSC_REGION_SETS.items()}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def sku_owned_by(owner: str, tag: str) -> str:
    for i in range(10_000):
        if owner_region(sku := f"bench-{tag}-{owner}-{i}", REGIONS) == owner:
            return sku
    raise AssertionError("no sku hashes to " + owner)


async def measure(edge: str, operator: str) -> tuple[dict[str, tuple[float, float]], dict[tuple[str, str], tuple[float, float]]]:
    baseline: dict[str, tuple[float, float]] = {}
    reservations: dict[tuple[str, str], tuple[float, float]] = {}
    async with httpx.AsyncClient(base_url=edge, timeout=30) as http:
        users = {}
        for place in REGIONS:
            r = await http.post("/v1/users", json={"email": f"b{time.time_ns()}@example.com", "name": "B", "residency": "global"},
                                headers={"X-Meridian-Client-Region": place})
            r.raise_for_status()
            users[place] = (r.json()["user_id"], r.json()["token"], r.json()["home_region"])
        for place in REGIONS:
            user, token, home = users[place]
            hdr = {"X-Meridian-Client-Region": place, "Authorization": f"Bearer {token}"}
            times = []
            for _ in range(N):
                t = time.perf_counter()
                (await http.get(f"/v1/users/{user}", headers=hdr)).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            baseline[place] = (pct(times, 0.5), pct(times, 0.99))
            for owner in REGIONS:
                sku = sku_owned_by(owner, place)
                r = await http.put(f"/v1/stock/{sku}", json={"available": N * 2},
                                   headers={"Authorization": f"Bearer {operator}", "X-Meridian-Client-Region": owner})
                r.raise_for_status()
                times = []
                for i in range(N):
                    t = time.perf_counter()
                    r = await http.post(f"/v1/users/{user}/reservations", json={"sku": sku, "quantity": 1},
                                        headers={**hdr, "Idempotency-Key": f"{sku}-{i}"})
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 201, r.text
                reservations[(place, owner)] = (pct(times, 0.5), pct(times, 0.99))
    return baseline, reservations


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "Pulumi.bench.yaml"
        stack.write_text(STACK)
        state_dir = Path(tmp) / "state"
        state = start_local(str(stack), state_dir, time_scale=1.0, latency_scale=1.0, lag=0.2)
        try:
            from meridian.topology import load_stack_file

            operator = operator_token(state_dir, load_stack_file(stack))
            baseline, reservations = asyncio.run(measure(state["edge"], operator))
        finally:
            stop_local(state_dir)
    print(f"Reservations through the edge, {N} per pair, published round trips injected (ms; ratios against the same run's "
          "profile read in the client's region)")
    print(f"{'client':<14} {'owner':<14} {'RTT':>5} {'p50':>7} {'p99':>7} {'p50/read':>9} {'routing':>8} {'budget':>7}")
    rows = []
    for (place, owner), (p50, p99) in reservations.items():
        base, local = baseline[place][0], reservations[(place, place)][0]
        hop = rtt_ms(place, owner) if place != owner else 0.0
        routing = p50 - local - hop  # what going to the owner adds beyond the round trip itself
        rows.append({"client": place, "owner": owner, "rtt_ms": hop, "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                     "read_p50_ms": round(base, 1), "routing_ms": round(routing, 1)})
        print(f"{place:<14} {owner:<14} {hop:>5.0f} {p50:>7.1f} {p99:>7.1f} {p50 / base:>8.1f}x {routing:>8.1f} "
              f"{'ok' if routing <= BUDGET_MS else 'OVER':>7}")
    print("baseline (profile read in the client's region) p50/p99: "
          + ", ".join(f"{r} {b[0]:.1f}/{b[1]:.1f}" for r, b in baseline.items()))
    print(f"'routing': p50 minus the same client's local-owner p50 minus the round trip, against the {BUDGET_MS:g} ms routing "
          "budget. The round trip to a remote owner is physics, not routing: it is the price of one owner per key. A local "
          "reservation is one transaction of three items (the ownership map's ConditionCheck, the conditional stock update, its "
          "record) against the read's one GetItem.")
    print()
    print("Model from the same published round trips (not measured): strong write latency above the local write, ms")
    print(f"{'MRSC set':<9} {'regions':<44} {'MRSC: nearest other':>20} {'owner: mean over keys':>22}")
    model = {}
    for name, regions in MRSC_SETS.items():
        mrsc = statistics.mean(min(rtt_ms(r, o) for o in regions if o != r) for r in regions)
        owner = statistics.mean(0.0 if r == o else rtt_ms(r, o) for r in regions for o in regions)
        model[name] = {"regions": regions, "mrsc_ms": round(mrsc, 1), "owner_ms": round(owner, 1)}
        print(f"{name:<9} {', '.join(regions):<44} {mrsc:>20.1f} {owner:>22.1f}")
    print("MRSC pays the nearest replica's round trip on every write, from every region; the owner mechanism pays nothing "
          "for the keys a region owns and the owner's round trip for the rest.")
    if "--json" in sys.argv:
        print(json.dumps({"reservations": rows, "model": model}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall time of `meridian plan` (render under mocks + policy rules) for 2, 4 and 6 regions, in one run.

Prints the median of several runs per size and the 6-region / 2-region ratio; the goal is 4 regions
under 5 s on a 2-core machine, with growth close to linear in the number of regions.
Run: .venv/bin/python bench/plan.py
"""

from __future__ import annotations

import statistics
import time
import warnings

from meridian.topology import load_topology

warnings.simplefilter("ignore", DeprecationWarning)
from infra.render import render  # noqa: E402
from policy.rules import Res, check  # noqa: E402

SIZES = {
    2: ["us-east-1", "eu-west-1"],
    4: ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"],
    6: ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"],
}
RUNS = 3


def plan_once(regions: list[str]) -> tuple[float, int]:
    eu = [r for r in regions if r.startswith("eu-")]
    topology = load_topology({"regions": regions, "residencyZones": {"eu": eu}}, stack="bench")
    start = time.perf_counter()
    plan = render(topology)
    violations = check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], topology.regions)
    elapsed = time.perf_counter() - start
    assert not violations, violations
    return elapsed, len(plan.custom)


def main() -> None:
    plan_once(SIZES[2])  # warm imports
    results: dict[int, float] = {}
    for n, regions in SIZES.items():
        times, count = [], 0
        for _ in range(RUNS):
            elapsed, count = plan_once(regions)
            times.append(elapsed)
        results[n] = statistics.median(times)
        print(f"{n} regions: {count:4d} resources, median {results[n]:.2f} s over {RUNS} runs ({count / results[n]:.0f} resources/s)")
    print(f"ratio 6/2 regions: {results[6] / results[2]:.2f} (linear would be 3.00)")
    print(f"4 regions: {results[4]:.2f} s (goal < 5 s)")


if __name__ == "__main__":
    main()

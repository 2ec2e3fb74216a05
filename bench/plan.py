"""Wall time of `meridian plan` (infra/__main__.py under mocks with the CLI's config, + policy rules) for
2, 4 and 6 regions, in one run.

Prints the median of several runs per size, the 6-region / 2-region ratio, and each size against the
baseline measured in the same run: a program of 200 plain resources through the same harness (runtime set-up,
teardown and 200 plain resources with no program logic). Goal: 4 regions under 2 s on a 2-core machine, growth close to linear.
Run: .venv/bin/python bench/plan.py
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore", DeprecationWarning)
from infra.render import render_config, render_values  # noqa: E402
from meridian.stackfile import StackConfig  # noqa: E402
from policy.rules import Res, check  # noqa: E402

BASELINE = Path(__file__).with_name("baseline_program.py")

SIZES = {
    2: ["us-east-1", "eu-west-1"],
    4: ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"],
    6: ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"],
}
RUNS = 3


def plan_once(regions: list[str]) -> tuple[float, int]:
    eu = [r for r in regions if r.startswith("eu-")]
    start = time.perf_counter()
    plan = render_values({"regions": regions, "residencyZones": {"eu": eu}, "hostedZoneId": "ZBENCH"}, stack="bench")
    violations = check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], plan.topology.regions)
    elapsed = time.perf_counter() - start
    assert not violations, violations
    return elapsed, len(plan.custom)


def baseline_once() -> float:
    """200 plain resources through the same harness: the runtime's and the mocks' own cost."""
    start = time.perf_counter()
    config = StackConfig("meridian", "bench", {"meridian:regions": '["us-east-1","eu-west-1"]'})
    render_config(config, entry_point=BASELINE)
    return time.perf_counter() - start


def main() -> None:
    plan_once(SIZES[2])  # warm imports
    baseline = statistics.median(baseline_once() for _ in range(RUNS))
    print(f"baseline (200 plain resources): median {baseline:.2f} s")
    results: dict[int, float] = {}
    for n, regions in SIZES.items():
        times, count = [], 0
        for _ in range(RUNS):
            elapsed, count = plan_once(regions)
            times.append(elapsed)
        results[n] = statistics.median(times)
        print(f"{n} regions: {count:4d} resources, median {results[n]:.2f} s over {RUNS} runs "
              f"({count / results[n]:.0f} resources/s, {results[n] / baseline:.2f}x the 200-resource baseline)")
    print(f"ratio 6/2 regions: {results[6] / results[2]:.2f} (linear would be 3.00)")
    print(f"4 regions: {results[4]:.2f} s (goal < 2 s)")


if __name__ == "__main__":
    main()

"""`meridian rollout --local`: a release moved across the local run's regions wave by wave, with the rule
of the regions' own 5xx-rate alarm deciding whether a wave stays or is rolled back.

A *release* on the local run is a named set of service settings (a name and environment variables on
top of what the task definition declares); ``meridian up --local`` starts every region on
:data:`INITIAL`. The supervisor swaps a region's process for another release without dropping a
request (``POST /_meridian/release``: start the new process on a new port, wait until it is ready,
point the edge at it, wait for the old one's requests to finish, stop it).

The waves are the AWS rollout's (:func:`meridian.releases.plan_waves`: the canary alone, then
``--wave-size`` regions at a time). During each wave's bake the region's answers at the edge (what its
load balancer would count) are cut into periods and judged by the rule the Pulumi program declares for
the region's ``…-alb-5xx-rate`` alarm (threshold, period, evaluation periods, datapoints to alarm), with
the period scaled by the run's time scale. When it trips, the wave's regions go back to their previous
release and the rollout stops: later waves never receive the release.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meridian.releases import Wave, choose_canary, plan_waves

__all__ = ["INITIAL", "AlarmRule", "LocalRollout", "RateWatch", "WaveResult", "alarm_rules", "release_problem"]

#: The release every region of a local run starts on.
INITIAL = "initial"
#: The environment variable of the rehearsal fault (meridian.rehearsal).
FAULT_ENV = "MERIDIAN_FAULT_5XX"
RELEASE_ENV = "MERIDIAN_RELEASE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

Control = Callable[[str, str, "dict[str, Any] | None"], "dict[str, Any]"]
Say = Callable[[str], None]


def release_problem(name: object) -> str | None:
    """Why ``name`` cannot name a release (None when it can)."""
    if not isinstance(name, str) or not _NAME.match(name):
        return f"release name {name!r}: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


# -- the alarm's rule ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlarmRule:
    """A region's 5xx-rate alarm as the program declares it, its period scaled to the run."""

    name: str
    threshold_percent: float
    period_seconds: float
    evaluation_periods: int
    datapoints_to_alarm: int

    @property
    def window_seconds(self) -> float:
        """The shortest time in which the alarm can fire: ``datapoints_to_alarm`` periods in breach."""
        return self.datapoints_to_alarm * self.period_seconds

    def describe(self) -> str:
        return (f"{self.name}: 5xx rate > {self.threshold_percent:g}% in {self.datapoints_to_alarm} of {self.evaluation_periods} "
                f"periods of {self.period_seconds:g} s")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "threshold_percent": self.threshold_percent, "period_seconds": self.period_seconds,
                "evaluation_periods": self.evaluation_periods, "datapoints_to_alarm": self.datapoints_to_alarm}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlarmRule:
        return cls(str(data["name"]), float(data["threshold_percent"]), float(data["period_seconds"]),
                   int(data["evaluation_periods"]), int(data["datapoints_to_alarm"]))


def alarm_rules(resources: Iterable[Any], *, time_scale: float) -> dict[str, AlarmRule]:
    """region -> the rule of its ``…-alb-5xx-rate`` alarm, from the rendered program's MetricAlarms
    (``infra.render.PlannedResource``: ``region`` and camelCase ``inputs``)."""
    rules: dict[str, AlarmRule] = {}
    for alarm in resources:
        inputs = alarm.inputs
        name = str(inputs.get("name", ""))
        if not name.endswith("-alb-5xx-rate") or alarm.region is None:
            continue
        if inputs.get("comparisonOperator") != "GreaterThanThreshold":
            raise ValueError(f"{name}: a local rollout evaluates GreaterThanThreshold, not {inputs.get('comparisonOperator')}")
        periods = {float(q["metric"]["period"]) for q in inputs.get("metricQueries") or [] if q.get("metric")}
        period = periods.pop() if len(periods) == 1 else float(inputs.get("period") or 60)
        evaluation = int(inputs.get("evaluationPeriods") or 1)
        rules[alarm.region] = AlarmRule(name, float(inputs["threshold"]), period * max(time_scale, 0.0) or period,
                                        evaluation, int(inputs.get("datapointsToAlarm") or evaluation))
    return rules


@dataclass
class RateWatch:
    """One region's alarm evaluated over periods of its answers at the edge (cumulative counters in)."""

    rule: AlarmRule
    start: tuple[int, int]  # (answers, answers_5xx) when the bake began
    periods: list[tuple[int, int]] = field(default_factory=list)  # (answers, 5xx) per finished period

    def __post_init__(self) -> None:
        self._last = self.start

    def close_period(self, answers: int, errors: int) -> None:
        self.periods.append((answers - self._last[0], errors - self._last[1]))
        self._last = (answers, errors)

    @staticmethod
    def rate(answers: int, errors: int) -> float:
        """The alarm's metric math: 100 x errors / MAX(requests, errors); no answers is 0 (notBreaching)."""
        served = max(answers, errors)
        return 100.0 * errors / served if served else 0.0

    def breaching(self) -> list[bool]:
        return [self.rate(a, e) > self.rule.threshold_percent for a, e in self.periods[-self.rule.evaluation_periods:]]

    def in_alarm(self) -> bool:
        return sum(self.breaching()) >= self.rule.datapoints_to_alarm

    def reason(self, region: str) -> str:
        last = self.periods[-self.rule.evaluation_periods:]
        rates = ", ".join(f"{self.rate(a, e):.1f}% ({e}/{a})" for a, e in last)
        return f"{region}: alarm {self.rule.name} fired: 5xx rate above {self.rule.threshold_percent:g}% in " \
               f"{sum(self.breaching())} of the last {len(last)} periods of {self.rule.period_seconds:g} s ({rates})"

    def totals(self) -> tuple[int, int]:
        return sum(a for a, _ in self.periods), sum(e for _, e in self.periods)


# -- the rollout ------------------------------------------------------------------------------------------
@dataclass
class WaveResult:
    regions: list[str]
    result: str  # "ok" | "rolled_back"
    reason: str | None = None
    canary: bool = False
    #: per region: epoch seconds the edge moved to the release, and back (rolled back), answers and 5xx in the bake
    shifted_at: dict[str, float] = field(default_factory=dict)
    restored_at: dict[str, float] = field(default_factory=dict)
    tripped_at: float | None = None
    answers: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"regions": self.regions, "result": self.result, "reason": self.reason}


@dataclass
class Outcome:
    release: str
    completed: bool
    waves: list[WaveResult]
    never_received: list[str]
    canary_reason: str = ""
    rules: dict[str, AlarmRule] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"completed": self.completed, "waves": [w.to_json() for w in self.waves], "never_received": self.never_received}


class RolloutError(Exception):
    """The rollout could not start (a one-line reason for the person who ran it)."""


class LocalRollout:
    def __init__(self, control: Control, *, release: str, fault_5xx: float = 0.0, bake_seconds: float | None = None,
                 wave_size: int = 1, canary_region: str = "", default_bake_seconds: float | None = None, say: Say = print,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        problem = release_problem(release)
        if problem:
            raise RolloutError(problem)
        if not 0.0 <= fault_5xx <= 1.0:
            raise RolloutError(f"--inject-fault 5xx={fault_5xx:g}: a share of requests from 0 to 1")
        if wave_size < 1:
            raise RolloutError(f"--wave-size is {wave_size}; a wave holds at least one region")
        self.control, self.release, self.fault, self.wave_size = control, release, fault_5xx, wave_size
        self.say, self.clock, self.sleep = say, clock, sleep
        status = control("GET", "status", None)
        self.regions: list[str] = list(status["regions"])
        rules = status.get("release_alarms") or {}
        missing = [r for r in self.regions if r not in rules]
        if missing:
            raise RolloutError(f"the program declares no 5xx-rate alarm in {', '.join(missing)}: nothing would judge the release there")
        self.rules = {r: AlarmRule.from_json(rules[r]) for r in self.regions}
        window = max(rule.window_seconds for rule in self.rules.values())
        bake = bake_seconds if bake_seconds is not None else max(default_bake_seconds or 0.0, window)
        if bake < window - 1e-9:
            raise RolloutError(f"--bake-seconds {bake:g} is shorter than the alarm's window ({window:g} s: "
                               f"{next(iter(self.rules.values())).describe()}): the rule could never fire during the bake")
        self.bake = bake
        defined = (status.get("releases") or {}).get(release)
        self.env = {RELEASE_ENV: release} | ({FAULT_ENV: f"{fault_5xx:g}"} if fault_5xx > 0 else {})
        if defined is not None and dict(defined.get("env") or {}) != self.env:
            raise RolloutError(f"release {release!r} already exists on this run with other settings ({defined.get('env')}); "
                               "a release name means one set of settings: name this one differently")
        not_serving = [r for r, s in status["regions"].items() if s.get("state") != "serving"]
        if not_serving:
            raise RolloutError(f"not every region serves ({', '.join(not_serving)}): heal the run before a rollout")
        self.dials = {r: int(s.get("dial", 100)) for r, s in status["regions"].items()}
        self.current = {r: str(s.get("release") or INITIAL) for r, s in status["regions"].items()}
        self.canary_region = canary_region

    def plan(self) -> tuple[list[Wave], str, list[str]]:
        done = [r for r in self.regions if self.current[r] == self.release]
        canary, why = choose_canary(self.regions, configured=self.canary_region if self.canary_region in self.regions else "",
                                    dials=self.dials)
        if canary in done:
            rest = [r for r in self.regions if r not in done]
            canary, why = (rest[0], f"{rest[0]}: first region not on the release yet") if rest else (canary, why)
        return plan_waves(self.regions, canary=canary, wave_size=self.wave_size, done=done), why, done

    def run(self) -> Outcome:
        waves, why, done = self.plan()
        outcome = Outcome(self.release, True, [], [], canary_reason=why, rules=self.rules)
        fault = f", REHEARSAL FAULT: fails {self.fault:.0%} of requests" if self.fault else ""
        self.say(f"roll out release {self.release}{fault} to {len(self.regions) - len(done)} of {len(self.regions)} regions "
                 f"in {len(waves)} wave(s); canary {why}")
        if done:
            self.say(f"  already on {self.release}: {', '.join(done)}")
        first = self.rules[waves[0].regions[0]] if waves else next(iter(self.rules.values()))
        self.say(f"  each wave bakes {self.bake:g} s watching its regions' 5xx-rate alarms, e.g. {first.describe()}")
        for index, wave in enumerate(waves):
            result = self.run_wave(wave)
            outcome.waves.append(result)
            if result.result != "ok":
                outcome.completed = False
                outcome.never_received = [r for w in waves[index + 1:] for r in w.regions]
                self.say(f"rollout stopped in wave {wave.number}: {result.reason}; never received it: "
                         f"{', '.join(outcome.never_received) or 'none'}")
                return outcome
            self.say(f"wave {wave.number} done: {', '.join(wave.regions)} run {self.release}")
        self.say(f"rollout complete: every region runs {self.release}")
        return outcome

    def deploy(self, region: str, release: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"region": region, "release": release}
        if env is not None:
            body["env"] = dict(env)
        return self.control("POST", "release", body)

    def run_wave(self, wave: Wave) -> WaveResult:
        regions = list(wave.regions)
        result = WaveResult(regions, "ok", canary=wave.canary)
        previous = {r: self.current[r] for r in regions}
        self.say(f"wave {wave.number}{' (canary)' if wave.canary else ''}: {', '.join(regions)}")
        moved: list[str] = []
        try:
            for region in regions:
                answer = self.deploy(region, self.release, self.env)
                moved.append(region)
                result.shifted_at[region] = float(answer.get("shifted_at", self.clock()))
                self.say(f"  {region}: {previous[region]} -> {self.release} (new process ready in {answer.get('seconds', 0):.1f} s, "
                         "edge moved, old process drained and stopped)")
            tripped = self.bake_wave(regions, result)
        except ValueError as exc:  # the control API refused or the new process did not start
            tripped = f"{regions[len(moved)] if len(moved) < len(regions) else regions[-1]}: the release did not start: {exc}"
        if tripped is None:
            for region in regions:
                self.current[region] = self.release
            return result
        result.result, result.reason = "rolled_back", tripped
        self.say(f"  {tripped}")
        for region in moved:
            answer = self.deploy(region, previous[region])
            result.restored_at[region] = float(answer.get("shifted_at", self.clock()))
            self.say(f"  {region}: rolled back to {previous[region]}")
        return result

    def bake_wave(self, regions: Sequence[str], result: WaveResult) -> str | None:
        """Bake the wave's regions; the reason of the first alarm that fires, or None when none did."""
        status = self.control("GET", "status", None)
        period = min(self.rules[r].period_seconds for r in regions)
        watches = {r: RateWatch(self.rules[r], (int(status["regions"][r]["answers"]), int(status["regions"][r]["answers_5xx"])))
                   for r in regions}
        start = self.clock()
        periods = max(1, round(self.bake / period))
        self.say(f"  baking {self.bake:g} s ({periods} periods of {period:g} s)")
        for k in range(1, periods + 1):
            self.sleep(max(0.0, start + k * period - self.clock()))
            status = self.control("GET", "status", None)
            for region, watch in watches.items():
                counters = status["regions"][region]
                watch.close_period(int(counters["answers"]), int(counters["answers_5xx"]))
                result.answers[region] = watch.totals()
            for region, watch in watches.items():
                if watch.in_alarm():
                    result.tripped_at = self.clock()
                    return watch.reason(region)
        return None

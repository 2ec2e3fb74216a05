"""`meridian rollout --local` on a real local run: every request goes through the edge and is recorded.

One run for the module (three regions, time scale 0.05: the 5xx-rate alarm's 60-second periods last 3 s
here). A good release must reach every region without one failed request; a bad one (a rehearsal fault
failing half its requests) must be rolled back in its first region while the others never run it; the
game day's ``bad-release`` measures that blast radius against an all-at-once release. The alarm's rule
and the blast-radius arithmetic are also tested on plain values.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from stacks import THREE_REGIONS

from meridian_cli.local_cmds import start_local, stop_local
from meridian_cli.main import main
from meridian_local.gameday import blast_radius
from meridian_local.load import Sample
from meridian_local.rollout import AlarmRule, RateWatch, alarm_rules
from meridian_local.state import control, pid_alive

REGIONS = ["us-east-1", "eu-west-1", "eu-central-1"]
STACK = THREE_REGIONS


@dataclass
class Answer:
    place: str
    what: str
    status: int  # 0: no answer at all
    region: str
    error: str = ""


@dataclass
class Load:
    """Light steady load from every region's clients: counter increments and reads, user creations and
    reads with the user's token. Every answer is kept."""

    edge: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, place: str) -> None:
        headers = {"X-Meridian-Client-Region": place}
        users: list[tuple[str, str]] = []
        with httpx.Client(base_url=self.edge, timeout=10, headers=headers) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                calls: list[tuple[str, str, str, dict[str, Any]]] = [
                    ("increment", "POST", "/v1/counters/rollout/increment", {"json": {"by": 1}}),
                    ("counter", "GET", "/v1/counters/rollout", {}),
                ]
                if n % 5 == 1:
                    calls.append(("create", "POST", "/v1/users", {"json": {"email": f"r{time.time_ns()}@example.com", "name": "r",
                                                                            "residency": "global"}}))
                elif users:
                    user, token = users[n % len(users)]
                    calls.append(("read", "GET", f"/v1/users/{user}", {"headers": {"Authorization": f"Bearer {token}"}}))
                for what, method, path, kw in calls:
                    try:
                        resp = http.request(method, path, **kw)
                    except httpx.HTTPError as exc:
                        self.answers.append(Answer(place, what, 0, "?", type(exc).__name__))
                        continue
                    error = ""
                    if resp.status_code >= 400:
                        error = str(resp.json().get("error", "")) if resp.headers.get("content-type", "").startswith("application/json") else resp.text[:60]
                    self.answers.append(Answer(place, what, resp.status_code, resp.headers.get("X-Meridian-Edge-Target", "?"), error))
                    if what == "create" and resp.status_code == 201:
                        users.append((resp.json()["user_id"], resp.json()["token"]))
                time.sleep(0.03)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.worker, args=(place,), daemon=True) for place in REGIONS]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("rollout")
    stack = root / "Pulumi.ro.yaml"
    stack.write_text(STACK)
    state_dir = root / "state"
    state = start_local(str(stack), state_dir, time_scale=0.05, latency_scale=0, lag=0.2)
    try:
        yield state_dir, state
    finally:
        stop_local(state_dir)


def status(state_dir: Path) -> dict[str, Any]:
    return control(state_dir, "GET", "status")


def rollout(state_dir: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["rollout", "--local", "--state-dir", str(state_dir), *args])
    return code, out.getvalue(), err.getvalue()


def history(state_dir: Path) -> dict[str, list[str]]:
    return {r: [h["release"] for h in s["release_history"]] for r, s in status(state_dir)["regions"].items()}


class TestAlarmRule:
    """The rule a local rollout judges a wave by is the program's 5xx-rate alarm, evaluated as CloudWatch does."""

    def test_read_from_the_program_and_scaled(self) -> None:
        """Threshold, periods and datapoints come from the rendered MetricAlarm; the period scales with the run."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from infra.render import render_stack

            plan = render_stack(Path(__file__).resolve().parents[2] / "Pulumi.prod.yaml")
        rules = alarm_rules(plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm"), time_scale=0.1)
        assert sorted(rules) == sorted(plan.topology.regions)
        rule = rules["eu-west-1"]
        assert rule.name == "meridian-prod-eu-west-1-alb-5xx-rate"
        assert (rule.threshold_percent, rule.period_seconds, rule.evaluation_periods, rule.datapoints_to_alarm) == (5.0, 6.0, 3, 3)
        assert rule.window_seconds == 18.0

    def test_fires_only_on_enough_breaching_periods(self) -> None:
        """Above the threshold in M of the last N periods fires; a quiet period (no answers) does not breach."""
        watch = RateWatch(AlarmRule("a", 5.0, 1.0, 3, 2), (100, 0))
        totals = [(120, 2), (140, 4), (140, 4), (160, 5)]  # 10%, 10%, no answers, 5% (not above)
        fired = []
        for answers, errors in totals:
            watch.close_period(answers, errors)
            fired.append(watch.in_alarm())
        assert fired == [False, True, True, False]
        assert watch.totals() == (60, 5)
        assert RateWatch.rate(0, 3) == 100.0  # errors without counted requests: the alarm's MAX(requests, errors)

    def test_blast_radius_all_at_once_from_the_same_rates(self) -> None:
        """All at once = failure rate where the release ran x every region's request rate x the time it ran."""
        samples = []
        for i in range(100):  # 10 s, 10 requests a second, half from the canary's clients; a fifth of those fail
            place = "a" if i % 2 else "b"
            failed = place == "a" and i % 10 == 1
            samples.append(Sample(1000.0 + i / 10, place, "read", 500 if failed else 200, 0.01, place, "bad-release", final=True))
        result = blast_radius(samples, served=["a"], places=["a", "b"], start=1000.0, end=1010.0, fault=0.3)
        measured, at_once = result["measured"], result["all_at_once"]
        assert measured["failed_requests"] == 10 and measured["failure_rate"] == 0.2 and measured["regions_served"] == ["a"]
        assert at_once["regions_served"] == ["a", "b"] and at_once["failed_requests"] == 20  # 0.2 x 10/s x 10 s
        assert at_once["time_to_rollback_seconds"] == measured["time_to_rollback_seconds"] == 10.0


@pytest.mark.slow
class TestLocalRollout:
    def test_every_region_starts_on_a_named_release(self, run: tuple[Path, dict[str, Any]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        """`up --local` starts every region on the release "initial"; the status shows it, in JSON and as text."""
        state_dir, _ = run
        assert {r: s["release"] for r, s in status(state_dir)["regions"].items()} == dict.fromkeys(REGIONS, "initial")
        assert history(state_dir) == {r: ["initial"] for r in REGIONS}
        assert main(["local", "status", "--state-dir", str(state_dir)]) == 0
        out = capsys.readouterr().out
        assert "release: initial in every region" in out and max(len(line) for line in out.splitlines()) <= 80

    def test_good_release_reaches_every_region_without_a_failed_request(self, run: tuple[Path, dict[str, Any]]) -> None:
        """Each region's process is replaced under load; no client request fails or goes unanswered."""
        state_dir, state = run
        before = status(state_dir)["regions"]
        with Load(state["edge"]) as load:
            time.sleep(1.0)
            code, out, err = rollout(state_dir, "--release", "good-1", "--wave-size", "2", "--bake-seconds", "9", "--json")
            time.sleep(0.5)
        assert code == 0, err
        outcome = json.loads(out)
        assert outcome["completed"] is True and outcome["never_received"] == []
        assert [w["result"] for w in outcome["waves"]] == ["ok", "ok"]
        assert sorted(r for w in outcome["waves"] for r in w["regions"]) == sorted(REGIONS)
        assert len(outcome["waves"][0]["regions"]) == 1  # the canary alone first
        after = status(state_dir)["regions"]
        assert {r: s["release"] for r, s in after.items()} == dict.fromkeys(REGIONS, "good-1")
        assert history(state_dir) == {r: ["initial", "good-1"] for r in REGIONS}
        for region in REGIONS:  # a new process on a new port; the old one is gone
            assert after[region]["pid"] != before[region]["pid"] and not pid_alive(before[region]["pid"])
            assert after[region]["url"] != before[region]["url"]
        failed = [a for a in load.answers if a.status == 0 or a.status >= 500]
        assert len(load.answers) > 300 and {a.region for a in load.answers} == set(REGIONS)
        assert failed == [], f"{len(failed)} of {len(load.answers)} requests failed: {failed[:5]}"

    def test_bad_release_is_rolled_back_in_its_first_region(self, run: tuple[Path, dict[str, Any]]) -> None:
        """A release failing half its requests trips the 5xx-rate rule in the canary, which goes back to
        its previous release; the regions of later waves never run it."""
        state_dir, state = run
        with Load(state["edge"]) as load:
            time.sleep(0.5)
            code, out, err = rollout(state_dir, "--release", "bad-1", "--inject-fault", "5xx=0.5", "--json")
        assert code == 1, err
        outcome = json.loads(out)
        assert set(outcome) == {"completed", "waves", "never_received"}
        assert outcome["completed"] is False and len(outcome["waves"]) == 1
        (wave,) = outcome["waves"]
        assert set(wave) == {"regions", "result", "reason"} and wave["result"] == "rolled_back"
        (canary,) = wave["regions"]
        assert "5xx-rate" in wave["reason"] and canary in wave["reason"]
        assert sorted(outcome["never_received"]) == sorted(r for r in REGIONS if r != canary)
        seen = history(state_dir)
        assert seen[canary] == ["initial", "good-1", "bad-1", "good-1"]
        for region in REGIONS:
            if region != canary:
                assert "bad-1" not in seen[region]
        now = status(state_dir)
        assert {r: s["release"] for r, s in now["regions"].items()} == dict.fromkeys(REGIONS, "good-1")
        assert now["releases"]["bad-1"]["env"]["MERIDIAN_FAULT_5XX"] == "0.5"
        # The fault took effect, only where the release ran: the rehearsal's 500s came from the canary only.
        faults = [a for a in load.answers if a.error == "rehearsal_fault"]
        assert faults and {a.region for a in faults} <= {canary}

    def test_bake_shorter_than_the_alarm_window_is_refused(self, run: tuple[Path, dict[str, Any]]) -> None:
        """A bake in which the alarm's rule could never fire is an argument error: one line, exit 2."""
        state_dir, _ = run
        code, out, err = rollout(state_dir, "--release", "short-1", "--bake-seconds", "2")
        assert code == 2 and "shorter than the alarm's window" in err and len(err.strip().splitlines()) == 1
        assert history(state_dir)["us-east-1"][-1] == "good-1"

    def test_a_release_name_means_one_set_of_settings(self, run: tuple[Path, dict[str, Any]]) -> None:
        """Rolling out an existing name with other settings is refused before anything changes."""
        state_dir, _ = run
        code, _, err = rollout(state_dir, "--release", "bad-1", "--inject-fault", "5xx=0.2")
        assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1

    def test_control_api_refuses_bad_release_requests(self, run: tuple[Path, dict[str, Any]]) -> None:
        """POST /_meridian/release checks region, name and settings, and answers 401 without the secret."""
        state_dir, state = run
        for body, says in (({"region": "mars-1", "release": "x"}, "not a region"), ({"region": "us-east-1", "release": "a b"}, "release name"),
                           ({"region": "us-east-1", "release": "nope"}, "no release"),
                           ({"region": "us-east-1", "release": "x", "env": {"PATH": "/"}}, "MERIDIAN_")):
            with pytest.raises(ValueError, match=says):
                control(state_dir, "POST", "release", body)
        assert httpx.post(f"{state['edge']}/_meridian/release", json={"region": "us-east-1", "release": "x"}).status_code == 401


@pytest.mark.slow
class TestBadReleaseGameDay:
    def test_blast_radius_measured_beside_all_at_once(self, run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
        """The game day's bad release is served by its canary only, fails requests there, and is reported
        beside the all-at-once figures computed from the same run's rates."""
        state_dir, _ = run
        before = history(state_dir)
        report = tmp_path / "report"
        code = main(["gameday", "--scenario", "bad-release", "--phase-seconds", "1.5", "--workers", "6", "--report", str(report),
                     "--state-dir", str(state_dir)])
        metrics = json.loads((report / "metrics.json").read_text())
        result = metrics["scenario_results"]["bad-release"]
        assert code == 0 and result["verdict"] == "PASS", result.get("why")
        measured, at_once = result["measured"], result["all_at_once"]
        (canary,) = measured["regions_served"]
        assert sorted(result["rollout"]["never_received"]) == sorted(r for r in REGIONS if r != canary)
        assert measured["failed_requests"] > 0 and sorted(at_once["regions_served"]) == sorted(REGIONS)
        assert measured["time_to_rollback_seconds"] >= result["alarm_window_seconds"]
        expected = measured["failure_rate"] * at_once["every_region_requests_per_second"] * at_once["time_to_rollback_seconds"]
        assert abs(at_once["failed_requests"] - expected) <= 1
        assert at_once["failed_requests"] > measured["failed_requests"]
        after = history(state_dir)
        assert after[canary][len(before[canary]):] == [result["release"], before[canary][-1]]
        assert all(after[r] == before[r] for r in REGIONS if r != canary)
        text = (report / "report.md").read_text()
        assert "## Bad release: the blast radius, measured" in text
        assert "| one region at a time (measured) | 1 (" in text and "| all at once (computed) | 3 (every region) |" in text

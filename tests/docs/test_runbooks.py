"""The runbooks say only what is true of the prod plan: every `meridian` command in their code blocks runs
(with --dry-run where the command has it, else --help), and every alarm, resource and dashboard widget
they name exists in the prod plan."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from infra.render import Plan
from meridian_cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((ROOT / "docs" / "runbooks").glob("*.md"))
REQUIRED = {"evacuate-and-restore.md", "failback.md", "replication-lag.md", "conflict-spike.md", "teardown.md",
            "key-rotation.md", "add-region.md", "gameday-on-aws.md"}
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
YAML_FENCE = re.compile(r"```yaml\n(.*?)```", re.S)
#: The first line of a runbook's YAML block that edits prod's stack file; its commands run against the edit.
EDIT_MARK = "# Pulumi.prod.yaml, after the edit"
#: a backticked physical name of the stack (REGION stands for each region of the stack)
NAME = re.compile(r"`(meridian-prod(?:-[A-Za-z0-9]+)+)`")
WIDGET = re.compile(r'widgets? "([^"]+)"')
ALARM_TYPES = ("aws:cloudwatch/metricAlarm:MetricAlarm", "aws:cloudwatch/compositeAlarm:CompositeAlarm")


def commands(path: Path) -> list[list[str]]:
    """The `meridian ...` lines of the file's fenced code blocks, as argv (without `meridian`)."""
    found = []
    for block in FENCE.findall(path.read_text()):
        for line in block.splitlines():
            if line.strip().startswith("meridian "):
                found.append(shlex.split(line.strip())[1:])
    return found


def subcommand(argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that handles ``argv``."""
    parser = build_parser()
    for token in argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or token not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[token]
    return parser


def stack_edit(path: Path) -> dict[str, object] | None:
    """The ``config:`` a runbook's edit block sets on prod's stack file, or None when it edits nothing."""
    import textwrap

    import yaml

    for block in YAML_FENCE.findall(path.read_text()):
        text = textwrap.dedent(block)
        if text.lstrip().startswith(EDIT_MARK):
            config = yaml.safe_load(text)["config"]
            assert isinstance(config, dict)
            return config
    return None


def safe(argv: list[str]) -> list[str]:
    """``argv`` with --dry-run when the command has it, else with --help. A ``--local`` command gets --help:
    no local run is up in the test."""
    options = {o for a in subcommand(argv)._actions for o in a.option_strings}
    if "--dry-run" in options and "--local" not in argv:
        return argv if "--dry-run" in argv else [*argv, "--dry-run"]
    return [*argv, "--help"]


def expand(text: str, plan: Plan) -> list[str]:
    """``text`` for every region when it says REGION, and every replicating pair when SOURCE/RECEIVER."""
    from infra.components.dashboard import replication_pairs

    if "SOURCE" in text or "RECEIVER" in text:
        return [text.replace("SOURCE", s).replace("RECEIVER", r) for s, r in replication_pairs(plan.topology)]
    if "REGION" in text:
        return [text.replace("REGION", r) for r in plan.topology.regions]
    return [text]


@pytest.fixture(scope="module")
def prod_plan() -> Plan:
    from infra.render import render_stack

    return render_stack(ROOT / "Pulumi.prod.yaml")


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere: a dry run must show its change against the stack's config, offline."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.chdir(ROOT)


class TestRunbooks:
    def test_every_runbook_is_there(self) -> None:
        assert {p.name for p in RUNBOOKS} >= REQUIRED

    @pytest.mark.parametrize("path", [p for p in RUNBOOKS if p.name in REQUIRED], ids=lambda p: p.name)
    def test_each_names_commands_and_alarms(self, path: Path) -> None:
        """Each runbook gives at least one `meridian` command and names at least one alarm."""
        assert commands(path), path.name
        assert NAME.search(path.read_text()), path.name

    @pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
    def test_every_meridian_command_runs(self, path: Path, no_aws: None, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Each command, as written plus --dry-run (or --help), exits 0 through meridian_cli.main.main; in a
        runbook that edits the stack, against prod's stack file with that edit."""
        edit = stack_edit(path)
        if edit is not None:
            import shutil

            import yaml

            stack = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
            stack["config"].update(edit)
            (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(stack))
            shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
            monkeypatch.chdir(tmp_path)
        for argv in commands(path):
            run = safe(argv)
            try:
                code = main(run)
            except SystemExit as exc:  # --help
                code = exc.code or 0
            out = capsys.readouterr()
            assert code == 0, f"{path.name}: meridian {shlex.join(run)} -> {code}\n{out.out}\n{out.err}"
            if "--dry-run" in run and "--help" not in run:
                assert "nothing changed" in out.out, out.out

    def test_every_name_exists_in_the_prod_plan(self, prod_plan: Plan) -> None:
        """Alarms (metric and composite), tables, topics, functions and the dashboard the runbooks name."""
        alarms = {r.inputs.get("name") or r.inputs.get("alarmName") for t in ALARM_TYPES for r in prod_plan.of_type(t)}
        known = alarms | {r.inputs.get("name") for r in prod_plan.custom} | {
            r.inputs.get("dashboardName") for r in prod_plan.of_type("aws:cloudwatch/dashboard:Dashboard")}
        named_alarms = set()
        for path in RUNBOOKS:
            for name in NAME.findall(path.read_text()):
                for concrete in expand(name, prod_plan):
                    assert concrete in known, f"{path.name} names {concrete}, which the prod plan does not have"
                    if concrete in alarms:
                        named_alarms.add(concrete)
        # The alarms an operator is sent to a runbook by.
        for region in prod_plan.topology.regions:
            for alarm in ("evacuate", "evacuated", "conflict-rate", "heartbeat-stale"):
                assert f"meridian-prod-{region}-{alarm}" in named_alarms

    def test_every_widget_exists_in_the_dashboard(self, prod_plan: Plan) -> None:
        (board,) = prod_plan.of_type("aws:cloudwatch/dashboard:Dashboard")
        titles = {w["properties"].get("title") for w in json.loads(board.inputs["dashboardBody"])["widgets"]}
        named = 0
        for path in RUNBOOKS:
            for widget in WIDGET.findall(path.read_text()):
                for concrete in expand(widget, prod_plan):
                    assert concrete in titles, f"{path.name} names widget {concrete!r}, which the dashboard lacks"
                    named += 1
        assert named


class TestExtraction:
    def test_commands_and_safe_forms(self) -> None:
        """The extraction finds commands in fenced blocks only, and picks --dry-run or --help by the parser."""
        assert safe(["evacuate", "eu-west-1", "--stack", "prod"]) == ["evacuate", "eu-west-1", "--stack", "prod", "--dry-run"]
        assert safe(["evacuations", "--stack", "prod"]) == ["evacuations", "--stack", "prod", "--help"]
        assert safe(["local", "status"]) == ["local", "status", "--help"]
        assert safe(["keys", "rotate", "--local"]) == ["keys", "rotate", "--local", "--help"]
        assert safe(["keys", "rotate", "--stack", "prod"]) == ["keys", "rotate", "--stack", "prod", "--dry-run"]

    def test_the_add_region_edit_is_read(self) -> None:
        """add-region.md's commands run against its edit (eu-west-2 in prod's eu zone), not prod as it is."""
        edit = stack_edit(ROOT / "docs" / "runbooks" / "add-region.md")
        assert edit is not None and "eu-west-2" in edit["meridian:regions"]  # type: ignore[operator]
        assert stack_edit(ROOT / "docs" / "runbooks" / "teardown.md") is None

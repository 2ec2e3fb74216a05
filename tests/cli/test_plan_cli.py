"""`meridian plan` as a reviewer runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meridian_cli.main import main

ROOT = Path(__file__).resolve().parents[2]


class TestPlan:
    def test_json_shape(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints resources (type, name, region, inputs), outputs and no violations."""
        assert main(["plan", "--config", str(ROOT / "Pulumi.dev.yaml"), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["violations"] == []
        kinds = {r["type"] for r in data["resources"]}
        assert "aws:ecs/service:Service" in kinds and "aws:dynamodb/table:Table" in kinds
        first = data["resources"][0]
        assert set(first) == {"type", "name", "region", "inputs"}
        versions = [r for r in data["resources"] if r["type"] == "aws:secretsmanager/secretVersion:SecretVersion"]
        assert versions[0]["inputs"]["secretString"] == "[secret]", "secret values never print"
        assert set(data["outputs"]["regions"]) == {"us-east-1", "us-west-2"}

    def test_table_output(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plan", "--config", str(ROOT / "Pulumi.prod.yaml")]) == 0
        out = capsys.readouterr().out
        assert "policy: 0 violation(s)" in out and "ecs/service" in out and "ap-southeast-1" in out

    def test_bad_config_exit_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "Pulumi.bad.yaml"
        path.write_text("config:\n  meridian:regions: [us-east-1]\n")
        assert main(["plan", "--config", str(path)]) == 2
        assert "at least 2" in capsys.readouterr().err

    def test_for_deploy_stops_without_a_delegated_zone(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`--for-deploy` runs the program as `pulumi up` does: one line saying what to delegate, exit 2."""
        assert main(["plan", "--config", str(ROOT / "Pulumi.dev.yaml"), "--for-deploy"]) == 2
        err = capsys.readouterr().err.strip()
        assert "meridian:hostedZoneId is not set" in err and "NS records" in err
        assert len(err.splitlines()) == 1

    def test_preview_says_what_up_will_need(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plan", "--config", str(ROOT / "Pulumi.dev.yaml"), "--json"]) == 0
        messages = json.loads(capsys.readouterr().out)["messages"]
        assert any("meridian:hostedZoneId is not set" in m for m in messages)

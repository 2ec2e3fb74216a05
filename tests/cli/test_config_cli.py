"""`meridian config validate` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meridian_cli.main import main

ROOT = Path(__file__).resolve().parents[2]


class TestConfigValidate:
    def test_prod_table(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """The resolved topology prints as tables naming every region and zone."""
        monkeypatch.chdir(ROOT)
        assert main(["config", "validate", "--stack", "prod"]) == 0
        out = capsys.readouterr().out
        for word in ("us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1", "eu", "global (implicit)"):
            assert word in out

    def test_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["config", "validate", "--config", str(ROOT / "Pulumi.dev.yaml"), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["regions"] == ["us-east-1", "us-west-2"] and data["stack"] == "dev"

    def test_unlisted_zone_region_one_line_no_traceback(self, tmp_path: Path) -> None:
        """The documented failure: exit non-zero, one line naming zone and region, no traceback."""
        path = tmp_path / "Pulumi.bad.yaml"
        path.write_text("config:\n  meridian:regions: [us-east-1, eu-west-1]\n  meridian:residencyZones:\n    eu: [eu-west-1, eu-west-3]\n")
        proc = subprocess.run(
            [sys.executable, "-m", "meridian_cli.main", "config", "validate", "--config", str(path)],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert "'eu'" in lines[0] and "'eu-west-3'" in lines[0]

    def test_missing_stack(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.chdir(tmp_path)
        assert main(["config", "validate", "--stack", "nope"]) == 2
        assert "Pulumi.nope.yaml" in capsys.readouterr().err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0 and "meridian 0.1.0" in capsys.readouterr().out


class TestEvacuateDryRun:
    def test_dry_run_without_credentials(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        """Without AWS access, --dry-run shows the change against the configured dials and changes nothing."""
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        assert main(["evacuate", "eu-west-1", "--config", str(ROOT / "Pulumi.prod.yaml"), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "Global Accelerator: dial 100 -> 0" in out and "dry run: nothing changed" in out

    def test_unknown_region(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["evacuate", "mars-1", "--config", str(ROOT / "Pulumi.prod.yaml"), "--dry-run"]) == 2
        assert "not a region of stack prod" in capsys.readouterr().err

"""infra/__main__.py run the way the Pulumi CLI runs it: config as strings, typed reads, deploy checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.components.image import content_tag
from infra.program import PREVIEW_ZONE_ID
from infra.render import ENTRY_POINT, Plan, RenderError, render_config, render_stack, render_values
from meridian.stackfile import StackConfig, StackConfigError, read_stack, stack_config
from meridian.topology import load_stack_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_STACKS = sorted(ROOT.glob("Pulumi.*.yaml"))
PROJECT_DOC = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())

#: The entry point as it was when `pulumi preview` stopped at its line 9 (kept to prove the harness sees it).
OLD_ENTRY_POINT = '''
import pulumi
from meridian.topology import CONFIG_KEYS, CONFIG_NAMESPACE, load_topology
from infra.program import define_stack

config = pulumi.Config(CONFIG_NAMESPACE)
values = {key: config.get_object(key) for key in CONFIG_KEYS}
topology = load_topology({k: v for k, v in values.items() if v is not None}, project=pulumi.get_project(), stack=pulumi.get_stack())
for name, value in define_stack(topology).items():
    pulumi.export(name, value)
'''

BASE: dict[str, Any] = {"regions": ["us-east-1", "eu-west-1"], "hostedZoneId": "Z0123456789ABCDEFGHIJ"}


def records(plan: Plan) -> list[dict[str, Any]]:
    return [r.inputs for r in plan.of_type("aws:route53/record:Record")]


class TestCliConfig:
    def test_values_reach_the_program_as_strings(self) -> None:
        """Arrays and objects are JSON strings, numbers and booleans their text, as the CLI hands them."""
        config = read_stack(ROOT / "Pulumi.prod.yaml")
        assert config.values["meridian:regions"] == '["us-east-1","eu-west-1","eu-central-1","ap-southeast-1"]'
        assert config.values["meridian:desiredCount"] == "3"
        assert config.values["meridian:globalAccelerator"] == "true"  # a Pulumi.yaml default
        assert config.values["meridian:domain"] == "api.meridian.example.com"
        assert json.loads(config.values["meridian:residencyZones"]) == {"eu": ["eu-west-1", "eu-central-1"]}
        assert all(isinstance(v, str) for v in config.values.values())

    def test_secure_values_are_secrets(self) -> None:
        config = stack_config("meridian", "s", {"meridian:regions": ["us-east-1", "eu-west-1"], "other:token": {"secure": "AAAB"}},
                              project_doc=PROJECT_DOC)
        assert "other:token" in config.secret_keys

    def test_wrong_type_refused_like_the_cli(self) -> None:
        with pytest.raises(StackConfigError, match=r"^Stack 's' with configuration key 'meridian:desiredCount' must be of type 'integer'"):
            stack_config("meridian", "s", {**BASE, "desiredCount": "lots"}, project_doc=PROJECT_DOC)

    def test_missing_required_key(self) -> None:
        with pytest.raises(StackConfigError, match="missing configuration value 'meridian:regions'"):
            stack_config("meridian", "s", {}, project_doc=PROJECT_DOC)


class TestEntryPoint:
    @pytest.mark.parametrize("stack_file", EXAMPLE_STACKS, ids=lambda p: p.name)
    def test_every_example_stack_runs_the_entry_point(self, stack_file: Path) -> None:
        """The file `pulumi preview` runs, with the CLI's config, registers the whole stack."""
        plan = render_stack(stack_file)
        assert len(plan.custom) > 100
        assert {p.inputs["region"] for p in plan.providers} >= set(plan.topology.regions)
        assert plan.outputs["apiUrl"] == f"https://{plan.topology.domain}"
        assert set(plan.outputs["regions"]) == set(plan.topology.regions)

    def test_the_old_entry_point_fails_here_as_it_did_under_pulumi_preview(self, tmp_path: Path) -> None:
        """get_object on the string-valued domain raised ConfigTypeError: the harness must see that."""
        old = tmp_path / "__main__.py"
        old.write_text(OLD_ENTRY_POINT)
        with pytest.raises(RenderError, match="meridian:domain.*is not a valid 'JSON object'"):
            render_config(read_stack(ROOT / "Pulumi.dev.yaml"), entry_point=old)

    def test_entry_point_reads_each_key_by_its_declared_type(self) -> None:
        """A value the CLI did not type-check (e.g. set through PULUMI_CONFIG) is one line naming key and type."""
        config = read_stack(ROOT / "Pulumi.dev.yaml")
        bad = StackConfig(config.project, config.stack, {**config.values, "meridian:desiredCount": "two"})
        with pytest.raises(RenderError, match=r"^meridian config: meridian:desiredCount must be a whole number \(type integer\), got 'two'$"):
            render_config(bad)
        bad = StackConfig(config.project, config.stack, {**config.values, "meridian:residencyZones": "eu"})
        with pytest.raises(RenderError, match=r"meridian:residencyZones must be a YAML map"):
            render_config(bad)

    @pytest.mark.parametrize("stack_file", EXAMPLE_STACKS, ids=lambda p: p.name)
    def test_cli_commands_read_the_same_topology(self, stack_file: Path) -> None:
        assert load_stack_file(stack_file) == render_stack(stack_file).topology

    def test_entry_point_is_pulumi_yamls_main(self) -> None:
        assert (ROOT / PROJECT_DOC["main"] / "__main__.py").resolve() == ENTRY_POINT.resolve()


class TestHostedZone:
    def test_preview_without_zone_plans_against_a_placeholder_and_says_so(self) -> None:
        plan = render_values({"regions": ["us-east-1", "eu-west-1"]}, preview=True)
        assert not plan.of_type("aws:route53/zone:Zone"), "the program must never create an undelegated zone"
        assert {r["zoneId"] for r in records(plan)} == {PREVIEW_ZONE_ID}
        assert any("meridian:hostedZoneId is not set" in m for m in plan.messages)

    def test_up_without_zone_stops_at_once_with_what_to_do(self) -> None:
        with pytest.raises(RenderError, match="meridian:hostedZoneId is not set.*delegate|NS records") as caught:
            render_values({"regions": ["us-east-1", "eu-west-1"]}, preview=False)
        assert "\n" not in str(caught.value)

    def test_up_with_a_zone_uses_it_everywhere(self) -> None:
        plan = render_values(BASE, preview=False)
        assert {r["zoneId"] for r in records(plan)} == {BASE["hostedZoneId"]}
        assert plan.outputs["hostedZoneId"] == BASE["hostedZoneId"]
        assert not plan.messages


def table_layout(plan: Plan) -> dict[str, tuple[str | None, frozenset[str]]]:
    return {
        r.inputs["name"]: (r.region, frozenset(x["regionName"] for x in r.inputs.get("replicas", [])))
        for r in plan.of_type("aws:dynamodb/table:Table")
    }


class TestPinnedRegions:
    ZONES = {"eu": ["eu-west-1", "eu-central-1"]}

    def test_reordering_regions_keeps_tables_and_secret_in_place(self) -> None:
        """Providers, tables (protected) and the secret do not move when the region list is reordered."""
        first = render_values({**BASE, "regions": ["us-east-1", "eu-west-1", "eu-central-1"], "residencyZones": self.ZONES})
        second = render_values({**BASE, "regions": ["eu-central-1", "eu-west-1", "us-east-1"], "residencyZones": self.ZONES})
        assert table_layout(first) == table_layout(second)
        secret = [r for r in first.of_type("aws:secretsmanager/secret:Secret")]
        assert [r.region for r in secret] == [r.region for r in second.of_type("aws:secretsmanager/secret:Secret")]

    def test_home_regions_and_primary_region_from_config(self) -> None:
        plan = render_values({**BASE, "regions": ["us-east-1", "eu-west-1", "eu-central-1"], "residencyZones": self.ZONES,
                              "homeRegions": {"eu": "eu-central-1", "global": "eu-west-1"}, "primaryRegion": "eu-central-1"})
        homes = {r.inputs["tags"]["meridian:zone"]: r.region for r in plan.of_type("aws:dynamodb/table:Table")}
        assert homes == {"eu": "eu-central-1", "global": "eu-west-1"}
        (secret,) = plan.of_type("aws:secretsmanager/secret:Secret")
        assert secret.region == "eu-central-1"
        assert {r["region"] for r in secret.inputs["replicas"]} == {"us-east-1", "eu-west-1"}

    def test_home_region_must_belong_to_its_zone(self) -> None:
        with pytest.raises(RenderError, match=r"meridian:homeRegions.eu is 'us-east-1', which is not one of that zone's regions"):
            render_values({**BASE, "regions": ["us-east-1", "eu-west-1", "eu-central-1"], "residencyZones": self.ZONES,
                           "homeRegions": {"eu": "us-east-1"}})


class TestServiceImage:
    def test_built_once_and_pushed_to_a_repository_in_every_region(self, prod_plan: Plan) -> None:
        (image,) = prod_plan.of_type("docker-build:index:Image")
        repos = {r.region: r for r in prod_plan.of_type("aws:ecr/repository:Repository")}
        assert set(repos) == set(prod_plan.topology.regions)
        assert image.inputs["push"] is True
        assert image.inputs["context"]["location"].endswith("services")
        assert image.inputs["dockerfile"]["location"].endswith("services/Dockerfile")
        tag = content_tag()
        assert sorted(image.inputs["tags"]) == sorted(f"{r.outputs['repositoryUrl']}:{tag}" for r in repos.values())
        assert sorted(reg["address"] for reg in image.inputs["registries"]) == sorted(r.outputs["repositoryUrl"] for r in repos.values())
        assert all(r.inputs["imageTagMutability"] == "IMMUTABLE" for r in repos.values())

    def test_each_region_runs_the_image_from_its_own_region(self, prod_plan: Plan) -> None:
        for task in prod_plan.of_type("aws:ecs/taskDefinition:TaskDefinition"):
            (container,) = [c for c in json.loads(task.inputs["containerDefinitions"]) if c["name"] == "meridian"]
            assert container["image"] == f"123456789012.dkr.ecr.{task.region}.amazonaws.com/meridian-prod/service:{content_tag()}"

    def test_prebuilt_image_builds_nothing(self) -> None:
        plan = render_values({**BASE, "image": "registry.example.com/meridian:1.2.3"})
        assert not plan.of_type("docker-build:index:Image") and not plan.of_type("aws:ecr/repository:Repository")
        images = {json.loads(t.inputs["containerDefinitions"])[0]["image"] for t in plan.of_type("aws:ecs/taskDefinition:TaskDefinition")}
        assert images == {"registry.example.com/meridian:1.2.3"}

    def test_content_tag_follows_content_only(self, tmp_path: Path) -> None:
        (tmp_path / "meridian").mkdir()
        (tmp_path / "Dockerfile").write_text("FROM x\n")
        (tmp_path / "meridian" / "a.py").write_text("A = 1\n")
        parts = ("Dockerfile", "meridian")
        before = content_tag(tmp_path, parts)
        (tmp_path / "meridian" / "__pycache__").mkdir()
        (tmp_path / "meridian" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00")
        assert content_tag(tmp_path, parts) == before
        (tmp_path / "meridian" / "a.py").write_text("A = 2\n")
        assert content_tag(tmp_path, parts) != before

    def test_image_installs_every_third_party_import_of_the_service(self) -> None:
        """The Dockerfile's pip line covers what services/meridian imports (else tasks crash at start)."""
        import ast
        import sys

        dockerfile = (ROOT / "services" / "Dockerfile").read_text()
        installed = {"fastapi", "uvicorn", "httpx", "boto3", "botocore", "pydantic", "starlette", "yaml", "jwt", "cryptography"}
        for name in ("fastapi", "uvicorn", "httpx", "boto3", "pyyaml", "pyjwt[crypto]"):
            assert f'"{name}' in dockerfile
        imported: set[str] = set()
        for path in (ROOT / "services" / "meridian").rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
        third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "meridian"}
        assert third_party <= installed, f"not in the image: {sorted(third_party - installed)}"

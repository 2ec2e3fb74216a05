"""The LocalStack stack: every explicit aws provider aimed at the endpoint, with LocalStack's skip flags.

Explicit providers do not inherit the stack's ``aws:`` settings; the program hands them to each provider
(infra/program.py). Rendered with infra/__main__.py under mocks, as `pulumi preview` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import SERVICES
from infra.render import Plan, PlannedResource, RenderError, render_stack, render_values
from meridian_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "Pulumi.localstack.yaml"
ENDPOINT = "http://localhost:4566"
SKIPS = ("skipCredentialsValidation", "skipRequestingAccountId", "skipMetadataApiCheck", "s3UsePathStyle")

#: The endpoint key of each service module (``aws:<module>/...``) and data source the program uses.
MODULE_ENDPOINT = {"lb": "elbv2"}
TYPE_ENDPOINT = {"aws:cloudwatch/logGroup:LogGroup": "logs", "aws:cloudwatch/eventRule:EventRule": "events",
                 "aws:cloudwatch/eventTarget:EventTarget": "events"}
INVOKE_ENDPOINT = {"aws:index/getAvailabilityZones:getAvailabilityZones": "ec2",
                   "aws:index/getCallerIdentity:getCallerIdentity": "sts", "aws:index/getPartition:getPartition": None}


@pytest.fixture(scope="module")
def localstack_plan() -> Plan:
    return render_stack(STACK)


def aws_providers(plan: Plan) -> list[PlannedResource]:
    return [p for p in plan.providers if p.type == "pulumi:providers:aws"]


def endpoints(provider: PlannedResource) -> dict[str, str]:
    raw = provider.inputs.get("endpoints")
    merged: dict[str, str] = {}
    for entry in json.loads(raw) if isinstance(raw, str) else raw or []:
        merged |= {k: v for k, v in entry.items() if v}
    return merged


def secret_value(value: Any) -> Any:
    return value.get("value") if isinstance(value, dict) else value


def services_used(plan: Plan) -> set[str]:
    used: set[str] = set()
    for r in plan.custom:
        if not r.type.startswith("aws:"):
            continue
        module = r.type.split(":")[1].split("/")[0]
        used.add(TYPE_ENDPOINT.get(r.type, MODULE_ENDPOINT.get(module, module)))
    for token, _, _ in plan.invokes:
        if token in INVOKE_ENDPOINT:
            if INVOKE_ENDPOINT[token]:
                used.add(str(INVOKE_ENDPOINT[token]))
        else:
            used.add(token.split(":")[1].split("/")[0])
    return used


class TestLocalStackProviders:
    def test_every_provider_carries_every_endpoint_and_the_skip_flags(self, localstack_plan: Plan) -> None:
        """Each per-region provider (and the Route 53 / Global Accelerator control-plane ones) points every
        service the program uses at LocalStack, skips credential validation, account lookup and the metadata
        API, uses path-style S3 and LocalStack's test credentials."""
        providers = aws_providers(localstack_plan)
        regions = {p.inputs["region"] for p in providers}
        assert regions >= set(localstack_plan.topology.regions) | {"us-east-1", "us-west-2"}
        for provider in providers:
            assert endpoints(provider) == {s: ENDPOINT for s in SERVICES}, provider.name
            for flag in SKIPS:
                assert str(provider.inputs.get(flag)).lower() == "true", f"{provider.name} lacks {flag}"
            assert secret_value(provider.inputs.get("accessKey")) == "test"
            assert secret_value(provider.inputs.get("secretKey")) == "test"

    def test_every_resource_is_on_a_provider_aimed_at_localstack(self, localstack_plan: Plan) -> None:
        """No resource lands on a provider without the endpoints (or on the default provider)."""
        regions = {p.inputs["region"] for p in aws_providers(localstack_plan)}
        assert all(r.region in regions for r in localstack_plan.custom if r.type.startswith("aws:"))

    def test_global_accelerator_is_off_by_configuration(self, localstack_plan: Plan) -> None:
        assert not [r for r in localstack_plan.custom if r.type.startswith("aws:globalaccelerator/")]
        assert localstack_plan.outputs["acceleratorDnsName"] == ""

    def test_service_list_covers_every_service_the_program_calls(self, prod_plan: Plan, localstack_plan: Plan) -> None:
        """A new service in the program (prod has Global Accelerator on) needs its endpoint in SERVICES and the stack."""
        for plan in (prod_plan, localstack_plan):
            missing = services_used(plan) - set(SERVICES)
            assert not missing, f"infra.config.SERVICES lacks {sorted(missing)}"
        listed = yaml.safe_load(STACK.read_text())["config"]["aws:endpoints"]
        assert {k for entry in listed for k in entry} == set(SERVICES)


class TestRealAwsStacks:
    @pytest.mark.parametrize("fixture", ["dev_plan", "prod_plan"])
    def test_dev_and_prod_carry_no_endpoint_credentials_or_skips(self, fixture: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(fixture)
        for provider in aws_providers(plan):
            assert not endpoints(provider), provider.name
            assert "accessKey" not in provider.inputs and "secretKey" not in provider.inputs
            assert all(str(provider.inputs.get(flag, "false")).lower() == "false" for flag in SKIPS), provider.inputs


class TestMistakes:
    BASE = {"regions": ["us-east-1", "eu-west-1"]}

    def test_an_endpoint_missing_stops_the_program_naming_the_services(self) -> None:
        with pytest.raises(RenderError, match=r"^aws config: aws:endpoints has no endpoint for acm, .*sns, sts: those calls would go to real AWS") as caught:
            render_values({**self.BASE, "aws:endpoints": [{"dynamodb": ENDPOINT}]})
        assert "\n" not in str(caught.value)

    def test_a_flag_of_the_wrong_type_is_one_line(self) -> None:
        with pytest.raises(RenderError, match=r"^aws config: aws:skipCredentialsValidation must be true or false"):
            render_values({**self.BASE, "aws:skipCredentialsValidation": "maybe"})

    def test_region_is_never_passed_on(self) -> None:
        """``aws:region`` in a stack file would otherwise collapse every provider onto one region."""
        plan = render_values({**self.BASE, "aws:region": "ap-south-1"})
        assert {p.inputs["region"] for p in aws_providers(plan)} == {"us-east-1", "eu-west-1", "us-west-2"}


class TestPlanCommand:
    def test_plan_shows_the_providers_aimed_at_the_endpoint(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plan", "--config", str(STACK)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"-> {ENDPOINT} ({len(SERVICES)} services each)" in out
        assert "skipping account id lookup, credential validation, metadata API check" in out

    def test_plan_json_lists_each_provider(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plan", "--config", str(STACK), "--json"]) == 0
        providers = json.loads(capsys.readouterr().out)["providers"]
        assert [p["region"] for p in providers] == sorted(["eu-central-1", "eu-west-1", "us-east-1", "us-west-2"])
        assert all(set(p["endpoints"]) == set(SERVICES) and len(p["skip"]) == 3 and p["s3UsePathStyle"] for p in providers)

    def test_dev_plan_says_aws_endpoints(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plan", "--config", str(ROOT / "Pulumi.dev.yaml")]) == 0
        assert "-> AWS's own endpoints" in capsys.readouterr().out

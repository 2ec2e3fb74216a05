"""`meridian cost`: the bill of a stack at a load, counted from the rendered plan and priced from prices.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from infra.render import Plan, render_values
from meridian_cli.cost import (
    CPU_MS_PER_REQUEST,
    Estimate,
    LineItem,
    Load,
    PlanFacts,
    PriceBook,
    estimate,
)
from meridian_cli.main import UsageError, main

ROOT = Path(__file__).resolve().parents[2]
MONTH_S = 730 * 3600
GB = 1024 * 1024  # KB

#: The numbers of services/meridian_cli/prices.json this file computes with by hand (us-east-1 and us-west-2
#: share them); `test_price_file_still_says_so` fails when the file changes, so the hand computations follow.
HAND_PRICES = {
    "fargate_vcpu_hour": 0.04048,
    "fargate_gb_hour": 0.004445,
    "alb_hour": 0.0225,
    "alb_lcu_hour": 0.008,
    "dynamodb_read_million": 0.125,
    "dynamodb_write_million": 0.625,
    "dynamodb_storage_gb_month": 0.25,
    "dynamodb_pitr_gb_month": 0.20,
    "nat_hour": 0.045,
    "nat_gb": 0.045,
    "endpoint_eni_hour": 0.01,
    "inter_region_gb": 0.02,
    "ga_hour": 0.025,
    "route53_zone_month": 0.50,
    "route53_health_check_month": 0.50,
    "route53_health_check_feature_month": 1.00,
}
TWO = ["us-east-1", "us-west-2"]
STACK = {"minCount": 1, "desiredCount": 1, "maxCount": 50}


@pytest.fixture(scope="module")
def prices() -> PriceBook:
    return PriceBook.load()


@pytest.fixture(scope="module")
def two_regions() -> Plan:
    return render_values({"regions": TWO, **STACK}, stack="cost")


@pytest.fixture(scope="module")
def result(two_regions: Plan, prices: PriceBook) -> Estimate:
    """TestHandComputed's case."""
    return estimate(PlanFacts.from_plan(two_regions), Load(rps=1000), prices)


@pytest.fixture(scope="module")
def three_regions() -> Plan:
    return render_values({"regions": ["us-east-1", "us-east-2", "us-west-2"], **STACK}, stack="cost")


def lines(result: Estimate, service: str, item_start: str, region: str | None = None) -> list[LineItem]:
    return [i for i in result.items if i.service == service and i.item.startswith(item_start) and (region is None or i.region == region)]


def usd(result: Estimate, service: str, item_start: str, region: str) -> float:
    (line,) = lines(result, service, item_start, region)
    return line.monthly_usd


class TestPriceFile:
    def test_price_file_still_says_so(self, prices: PriceBook) -> None:
        """The hand computations below use these numbers; each price names its AWS page and a date."""
        for key, value in HAND_PRICES.items():
            for region in TWO:
                price = prices.get(key, region)
                assert price.usd == value, (key, region)
                assert price.source.startswith("https://") and price.as_of
        assert prices.fallbacks == set()

    def test_dynamodb_prices_are_after_the_november_2024_cut(self, prices: PriceBook) -> None:
        """Replicated writes cost what single-region writes cost (the file has one write price), from the on-demand page."""
        write = prices.get("dynamodb_write_million", "us-east-1")
        assert write.usd == 0.625 and write.as_of == "2024-11-01"
        assert write.source == "https://aws.amazon.com/dynamodb/pricing/on-demand/"

    def test_unknown_region_falls_back_and_is_reported(self, prices: PriceBook) -> None:
        book = PriceBook(prices.data)
        assert book.get("nat_hour", "sa-east-1").usd == book.get("nat_hour", "us-east-1").usd
        assert book.fallbacks == {"sa-east-1"}


class TestHandComputed:
    """Two regions (us-east-1, us-west-2; one zone), 1,000 rps, the default mix, 1 KB items, 100 GB, ha network."""


    def test_fargate(self, result: Estimate) -> None:
        """Each region carries all 1,000 rps when the other is lost: 1000 x 2.1 ms = 2.1 vCPU at 60% of 0.5 vCPU -> 7 tasks."""
        tasks = math.ceil(round(1000 * 0.0021 / (0.5 * 0.60), 9))
        assert tasks == 7
        per_task_hour = 0.5 * 0.04048 + 1 * 0.004445
        for region in TWO:
            assert usd(result, "Fargate", "7 tasks", region) == pytest.approx(7 * 730 * per_task_hour, abs=0.01)
        assert result.assumptions["fargate_tasks_per_region"] == {"us-east-1": 7, "us-west-2": 7}

    def test_dynamodb(self, result: Estimate) -> None:
        """500 rps per region; every write lands in both replicas; reads = 1 RRU + half a unit for the directory."""
        requests = 500 * MONTH_S
        reads = requests * 0.75 * 1.5
        # updates (users) + orders + increments (counters), 1 unit each, from both regions, applied in both replicas
        writes = 2 * requests * (0.10 + 0.05 + 0.10)
        index = 2 * requests * 0.10  # users' by-email index, in each replica
        for region in TWO:
            assert usd(result, "DynamoDB", "reads", region) == pytest.approx(reads / 1e6 * 0.125, abs=0.01)
            assert usd(result, "DynamoDB", "writes", region) == pytest.approx(writes / 1e6 * 0.625, abs=0.01)
            assert usd(result, "DynamoDB", "index writes", region) == pytest.approx(index / 1e6 * 0.625, abs=0.01)
            assert usd(result, "DynamoDB", "storage", region) == pytest.approx(100 * 0.25, abs=0.01)
            assert usd(result, "DynamoDB", "PITR", region) == pytest.approx(100 * 0.20, abs=0.01)
            assert usd(result, "DynamoDB", "stream reads", region) == 0.0

    def test_alb(self, result: Estimate) -> None:
        """LCUs: processed GB/hour (request 0.5 + 0.25 x 1 KB, response 0.5 + 1 KB) beats new connections (50/s / 25)."""
        gb_per_hour = 500 * (0.75 + 1.5) / GB * 3600
        assert gb_per_hour > 500 * 0.1 / 25
        for region in TWO:
            assert usd(result, "ALB", "load balancer hours", region) == pytest.approx(730 * 0.0225, abs=0.01)
            assert usd(result, "ALB", "capacity", region) == pytest.approx(gb_per_hour * 730 * 0.008, abs=0.01)

    def test_network_counted_from_the_plan(self, result: Estimate) -> None:
        """ha: 3 NAT gateways and 4 interface endpoints x 3 AZs per region, as rendered."""
        for region in TWO:
            assert usd(result, "NAT gateway", "3 gateways", region) == pytest.approx(3 * 730 * 0.045, abs=0.01)
            assert usd(result, "VPC endpoints", "4 interface endpoints x 3 AZs", region) == pytest.approx(12 * 730 * 0.01, abs=0.01)

    def test_edge(self, result: Estimate) -> None:
        """One accelerator; one hosted zone; two HTTPS health checks measuring latency at the default 30 s (2 options each)."""
        assert usd(result, "Global Accelerator", "fixed fee", "global") == pytest.approx(730 * 0.025, abs=0.01)
        assert usd(result, "Route 53", "hosted zone", "global") == 0.50
        assert usd(result, "Route 53", "health checks (HTTPS, latency)", "global") == pytest.approx(2 * (0.50 + 2 * 1.00), abs=0.01)

    def test_replication_transfer(self, result: Estimate) -> None:
        """Each region sends its writes to the other: 1 KB per update and order, a 0.25 KB counter shard per increment."""
        kb = 500 * MONTH_S * ((0.10 + 0.05) * 1 + 0.10 * 0.25)
        for region in TWO:
            assert usd(result, "Data transfer", "replication", region) == pytest.approx(kb / GB * 0.02, abs=0.01)

    def test_items_sum_to_the_total(self, result: Estimate) -> None:
        assert round(sum(i.monthly_usd for i in result.items), 2) == result.total
        assert result.total > result.single_region_total > 0

    def test_single_region_is_separate_and_cheaper_per_write(self, result: Estimate) -> None:
        """The same load on one region: one copy of each write, every task in one place, no accelerator or health checks."""
        single = {(i.service, i.item.split(" (")[0]): i for i in result.single_region}
        requests = 1000 * MONTH_S
        assert single[("DynamoDB", "writes")].monthly_usd == pytest.approx(requests * 0.25 / 1e6 * 0.625, abs=0.01)
        assert single[("Fargate", "7 tasks x 0.5 vCPU, 1 GB")].quantity == 7 * 730
        assert not [s for s, _ in single if s in ("Global Accelerator", "Data transfer")]
        assert result.assumptions["single_region"]["monthly_usd"] == result.single_region_total
        assert all(i.region in ("us-east-1", "global") for i in result.single_region)


class TestReplicas:
    def test_a_three_region_zone_writes_more_than_a_two_region_one(
        self, two_regions: Plan, three_regions: Plan, prices: PriceBook
    ) -> None:
        """Same load: each write is billed once per replica of its zone, so 3 replicas cost 3/2 the write units of 2."""
        load = Load(rps=3000)
        two = estimate(PlanFacts.from_plan(two_regions), load, prices)
        three = estimate(PlanFacts.from_plan(three_regions), load, prices)
        units_two = sum(i.quantity for i in lines(two, "DynamoDB", "writes"))
        units_three = sum(i.quantity for i in lines(three, "DynamoDB", "writes"))
        assert units_three == pytest.approx(units_two * 3 / 2, rel=1e-6)
        assert sum(i.monthly_usd for i in lines(three, "DynamoDB", "writes")) > sum(i.monthly_usd for i in lines(two, "DynamoDB", "writes"))
        # reads do not replicate: the same in total
        reads = [sum(i.quantity for i in lines(e, "DynamoDB", "reads")) for e in (two, three)]
        assert reads[0] == pytest.approx(reads[1], rel=1e-6)

    def test_residency_zone_tables_replicate_only_inside_the_zone(self, prices: PriceBook) -> None:
        """prod-like: EU requests write to the EU zone's 2 replicas, others to the 4-region global zone (counters everywhere)."""
        plan = render_values({"regions": ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"],
                              "residencyZones": {"eu": ["eu-west-1", "eu-central-1"]}, **STACK}, stack="cost")
        result = estimate(PlanFacts.from_plan(plan), Load(rps=4000), prices)
        writes = {i.region: i.quantity for i in lines(result, "DynamoDB", "writes")}
        per_region = 1000 * MONTH_S / 1e6
        zone_writes = per_region * (0.10 + 0.05)
        counters = 4 * per_region * 0.10
        assert writes["us-east-1"] == pytest.approx(2 * zone_writes + counters, rel=1e-6)
        assert writes["eu-west-1"] == pytest.approx(2 * zone_writes + 2 * zone_writes + counters, rel=1e-6)


class TestSizing:
    def test_never_below_min_count(self, prices: PriceBook) -> None:
        plan = render_values({"regions": TWO, "minCount": 3, "desiredCount": 3}, stack="cost")
        result = estimate(PlanFacts.from_plan(plan), Load(rps=10), prices)
        assert result.assumptions["fargate_tasks_per_region"] == {"us-east-1": 3, "us-west-2": 3}

    def test_cpu_ms_scales_the_tasks(self, two_regions: Plan, prices: PriceBook) -> None:
        facts = PlanFacts.from_plan(two_regions)
        base = estimate(facts, Load(rps=10_000), prices).assumptions["fargate_tasks_per_region"]["us-east-1"]
        double = estimate(facts, Load(rps=10_000, cpu_ms=2 * CPU_MS_PER_REQUEST), prices).assumptions["fargate_tasks_per_region"]["us-east-1"]
        assert base == 70 and double == 140

    def test_ceiling_warning(self, two_regions: Plan, prices: PriceBook) -> None:
        """Tasks needed above meridian:maxCount are priced and flagged: autoscaling would stop short."""
        result = estimate(PlanFacts.from_plan(two_regions), Load(rps=100_000), prices)
        assert any("meridian:maxCount 50" in w for w in result.warnings)

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"rps": -1}, "--rps is -1"),
        ({"rps": 1, "write_ratio": 1.5}, "--write-ratio is 1.5"),
        ({"rps": 1, "item_kb": 0}, "--item-kb is 0"),
        ({"rps": 1, "cpu_ms": 0}, "--cpu-ms is 0"),
    ])
    def test_load_refuses_bad_values(self, kwargs: dict[str, float], message: str) -> None:
        with pytest.raises(UsageError, match=message):
            Load(**kwargs)


class TestNetworkModes:
    def test_lean_is_cheaper_and_counted_from_its_own_plan(self, result: Estimate, prices: PriceBook) -> None:
        """lean: 1 NAT gateway and no endpoint ENIs per region; the logs then cross the NAT."""
        ha = result
        lean = estimate(PlanFacts.from_plan(render_values({"regions": TWO, "networkMode": "lean", **STACK}, stack="cost")),
                        Load(rps=1000), prices)
        assert lean.total < ha.total
        assert lines(lean, "NAT gateway", "1 gateway", "us-east-1")[0].quantity == 730
        assert not lines(lean, "VPC endpoints", "")
        ha_gb, lean_gb = (lines(e, "NAT gateway", "data processed", "us-east-1")[0].quantity for e in (ha, lean))
        assert lean_gb > ha_gb
        assert lean.assumptions["network_mode"] == "lean"


class TestCommand:
    def test_json_shape(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json: total, single-region total, items (the stack's lines only, summing to the total), assumptions."""
        assert main(["cost", "--config", str(ROOT / "Pulumi.dev.yaml"), "--rps", "1000", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert set(data) == {"total_monthly_usd", "single_region_monthly_usd", "items", "assumptions"}
        keys = {"service", "item", "region", "monthly_usd", "quantity", "unit", "unit_price_usd", "source"}
        assert data["items"] and all(set(i) == keys for i in data["items"])
        assert round(sum(i["monthly_usd"] for i in data["items"]), 2) == data["total_monthly_usd"]
        assert all(abs(i["quantity"] * i["unit_price_usd"] - i["monthly_usd"]) <= 0.01 for i in data["items"])
        assert data["single_region_monthly_usd"] == data["assumptions"]["single_region"]["monthly_usd"]
        assert data["single_region_monthly_usd"] < data["total_monthly_usd"]
        assert {i["service"] for i in data["items"]} >= {"Fargate", "ALB", "DynamoDB", "Global Accelerator", "Route 53",
                                                          "NAT gateway", "VPC endpoints", "CloudWatch", "Data transfer"}
        assert set(data["assumptions"]["network_modes"]) == {"ha", "lean"}
        assert data["assumptions"]["network_modes"]["ha"] == data["total_monthly_usd"]

    def test_cpu_per_request_defaults_to_the_measured_figures(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No --cpu-ms: bench/cost_per_request.py's CPU per operation, weighed by the request mix (the write
        ratio moves it), named as measured; --cpu-ms overrides it."""
        figures = json.loads((ROOT / "bench" / "results" / "cost_per_request.json").read_text())
        ops = figures["operations"]

        def expected(write_ratio: float) -> float:
            mix = Load(rps=1, write_ratio=write_ratio).mix
            return round(sum(share * float(ops[op]["service_cpu_ms"]) for op, share in mix.items()), 3)

        for ratio in ("0.25", "0.6"):
            assert main(["cost", "--config", str(ROOT / "Pulumi.dev.yaml"), "--rps", "1000", "--write-ratio", ratio, "--json"]) == 0
            assumptions = json.loads(capsys.readouterr().out)["assumptions"]
            assert assumptions["cpu_ms_per_request"] == expected(float(ratio)) != CPU_MS_PER_REQUEST
            assert assumptions["cpu_ms_source"].startswith("measured: cost_per_request.json")
        assert main(["cost", "--config", str(ROOT / "Pulumi.dev.yaml"), "--rps", "1000", "--cpu-ms", "3", "--json"]) == 0
        assumptions = json.loads(capsys.readouterr().out)["assumptions"]
        assert (assumptions["cpu_ms_per_request"], assumptions["cpu_ms_source"]) == (3, "--cpu-ms")

    def test_without_measured_figures_the_estimate_is_used_and_named(self, tmp_path: Path) -> None:
        from meridian_cli.cost import measured_cpu_ms

        assert measured_cpu_ms(Load(rps=1).mix, tmp_path / "absent.json") is None
        partial = {"mix": {"read": 1.0}, "operations": {"read": {"service_cpu_ms": 1.0}}}
        (tmp_path / "partial.json").write_text(json.dumps(partial))
        assert measured_cpu_ms(Load(rps=1).mix, tmp_path / "partial.json") is None  # lacks update, increment, order
        assert "estimate" in Load(rps=1).cpu_ms_source

    def test_network_mode_override(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["cost", "--config", str(ROOT / "Pulumi.dev.yaml"), "--rps", "1000", "--network-mode", "lean", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["assumptions"]["network_mode"] == "lean"
        assert data["total_monthly_usd"] == data["assumptions"]["network_modes"]["lean"] < data["assumptions"]["network_modes"]["ha"]

    def test_table_for_finance(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """The default output: lines by service and region, subtotals, the total, the single region and the premium."""
        monkeypatch.chdir(ROOT)
        assert main(["cost", "--stack", "dev", "--rps", "1000"]) == 0
        out = capsys.readouterr().out
        for text in ("Fargate", "DynamoDB", "writes x every replica", "us-west-2", "total", "Single region (us-east-1)",
                     "Multi-region premium", "with meridian:networkMode lean"):
            assert text in out, text

    @pytest.mark.parametrize(("argv", "message"), [
        (["--stack", "dev", "--rps", "-5"], "--rps is -5"),
        (["--stack", "dev", "--rps", "many"], "--rps is 'many'"),
        (["--stack", "dev"], "--rps is required"),
        (["--stack", "dev", "--rps", "100", "--write-ratio", "1.2"], "--write-ratio is 1.2"),
        (["--stack", "dev", "--rps", "100", "--write-ratio", "-0.1"], "--write-ratio is -0.1"),
        (["--stack", "dev", "--rps", "100", "--network-mode", "cheap"], "--network-mode is 'cheap'"),
        (["--stack", "nosuchstack", "--rps", "100"], "no stack file Pulumi.nosuchstack.yaml"),
    ])
    def test_bad_flags_exit_2_with_one_line(self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(ROOT)
        assert main(["cost", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines_ = captured.err.strip().splitlines()
        assert len(lines_) == 1 and message in lines_[0] and lines_[0].startswith("meridian: error:")

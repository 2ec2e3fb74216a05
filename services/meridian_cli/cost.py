"""`meridian cost`: the monthly bill of a stack at a given load, by line item and region.

The bill follows the program, not a hard-coded picture of it: the stack is rendered exactly as
`meridian plan` renders it (``infra/__main__.py`` under mocks) and every fixed resource is counted from
that plan: NAT gateways, interface-endpoint ENIs, load balancers, alarms (and the metrics each
evaluates), health checks and their options, accelerators, dashboards, each table's replica regions and
point-in-time recovery, the task size and the autoscaling floor. The load turns into usage through the
named assumptions below; prices come from ``prices.json`` (each with its AWS page and date).

The same load on a single region is priced beside it (separately from the stack's items): one region,
its tables unreplicated, no accelerator, no health checks, no inter-region traffic.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meridian.topology import NETWORK_MODES, Topology
from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, console, stack_file

if TYPE_CHECKING:
    from infra.render import Plan

__all__ = [
    "CPU_MS_PER_REQUEST",
    "CPU_TARGET",
    "Estimate",
    "LineItem",
    "Load",
    "PlanFacts",
    "PriceBook",
    "estimate",
]

# -- assumptions (each is printed with the estimate) -------------------------------------------------------
#: CPU time one request costs the service, in milliseconds, at the mix below (75% reads, 10% profile updates,
#: 10% counter increments, 5% orders), when the measured figures are absent. The command's default is the
#: measurement: bench/cost_per_request.py's CPU per operation (bench/results/cost_per_request.json, the
#: file `meridian capacity` reads) weighed by the request mix. This fallback is the figure the project's
#: issue "Operate it on AWS" gave for the first version of the request path; neither is a measurement on
#: AWS. Measure yours as ECS CPUUtilization x task vCPU / ALB RequestCount and pass ``--cpu-ms``.
CPU_MS_PER_REQUEST = 2.1
#: The autoscaling target of the service (infra/components/service.py: ECSServiceAverageCPUUtilization 60).
CPU_TARGET = 0.60
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
GB = 1024 * 1024  # KB in a GB
#: Request mix at the default write ratio 0.25; ``--write-ratio`` scales the writes keeping their proportions.
DEFAULT_MIX = {"read": 0.75, "update": 0.10, "increment": 0.10, "order": 0.05}
#: HTTP headers each way (request line and headers in, status and headers out), KB.
HEADERS_KB = 0.5
#: New TLS connections per request at the ALB (clients keep a connection for about 10 requests).
NEW_CONNECTIONS_PER_REQUEST = 0.1
#: The service runs with uvicorn's access log off (services/Dockerfile): it logs warnings, forwarding and
#: failover decisions only. Average log bytes per request.
LOG_BYTES_PER_REQUEST = 10
#: Share of requests forwarded to another region (a user's home region, or a read whose session token the
#: local replica has not caught up with). Latency routing sends most users to their home region.
FORWARDED_SHARE = 0.02
#: DNS queries per request reaching Route 53 (resolvers cache the 60 s alias answers).
DNS_QUERIES_PER_REQUEST = 0.01
#: A read looks the user up in the directory (eventually consistent: half a read unit for an item <= 4 KB).
DIRECTORY_READ_UNITS = 0.5
#: A counter shard item (name, shard, value, version) is well under 1 KB.
COUNTER_ITEM_KB = 0.25
DEFAULT_STORAGE_GB = 100.0
#: Stack-independent costs this estimate leaves out (the same in both layouts, or too usage-specific).
NOT_PRICED = (
    "internet data transfer out to clients (the same for one region or several; tiered per account)",
    "Lambda invocations and duration (replication canary every minute, conflict auditor per stream batch, evacuator)",
    "ECS Container Insights metrics and performance logs (enabled on the cluster)",
    "ECR storage and replication of the service image, Secrets Manager secrets and API calls",
    "public IPv4 addresses (NAT gateways' and the ALBs'), cross-AZ traffic, ACM certificates (free)",
    "table restores when a replica is added, on-demand backups, the DynamoDB free tier",
)

SERVICE_ORDER = ("Fargate", "ALB", "DynamoDB", "Global Accelerator", "Route 53", "NAT gateway", "VPC endpoints", "CloudWatch",
                 "Data transfer")

PRICE_FILE = "prices.json"


# -- prices ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    source: str
    as_of: str


class PriceBook:
    """``prices.json``: each price by region (``"*"``: every region), with the page it comes from and its date.
    A region the file does not list is priced at ``fallback_region``'s rates and reported."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.compiled: str = str(data.get("compiled", ""))
        self.fallback_region: str = str(data.get("fallback_region", "us-east-1"))
        self.fallbacks: set[str] = set()

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceBook:
        if path is None:
            text = resources.files("meridian_cli").joinpath(PRICE_FILE).read_text(encoding="utf-8")
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot read price file {path}: {exc.strerror}") from None
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UsageError(f"price file is not JSON ({exc.msg} at line {exc.lineno})") from None

    def get(self, key: str, region: str = "*") -> Price:
        try:
            entry = self.data["prices"][key]
        except KeyError:
            raise UsageError(f"the price file has no price {key!r}; update it from the AWS pricing pages") from None
        by_region: Mapping[str, float] = entry["regions"]
        if region in by_region:
            usd = by_region[region]
        elif "*" in by_region:
            usd = by_region["*"]
        else:
            self.fallbacks.add(region)
            usd = by_region[self.fallback_region]
        return Price(float(usd), str(entry["unit"]), str(entry["source"]), str(entry.get("as_of", self.compiled)))


# -- load -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Load:
    """The traffic the stack serves at peak, held for the whole month (an upper bound for the bill)."""

    rps: float
    write_ratio: float = 1 - DEFAULT_MIX["read"]
    item_kb: float = 1.0
    cpu_ms: float = CPU_MS_PER_REQUEST
    storage_gb: float = DEFAULT_STORAGE_GB
    #: Where ``cpu_ms`` comes from, printed with the estimate.
    cpu_ms_source: str = "the first version's estimate (no measured figures); override with --cpu-ms"

    def __post_init__(self) -> None:
        if not math.isfinite(self.rps) or self.rps < 0:
            raise UsageError(f"--rps is {self.rps:g}; give the peak requests per second, 0 or more")
        if not 0 <= self.write_ratio <= 1:
            raise UsageError(f"--write-ratio is {self.write_ratio:g}; it is the share of writes, between 0 and 1")
        if not 0 < self.item_kb <= 400:
            raise UsageError(f"--item-kb is {self.item_kb:g}; a DynamoDB item is more than 0 and at most 400 KB")
        if not 0 < self.cpu_ms <= 10_000:
            raise UsageError(f"--cpu-ms is {self.cpu_ms:g}; give the CPU milliseconds one request costs (more than 0)")
        if not math.isfinite(self.storage_gb) or self.storage_gb < 0:
            raise UsageError(f"--storage-gb is {self.storage_gb:g}; give the data size in GB, 0 or more")

    @property
    def mix(self) -> dict[str, float]:
        writes = 1 - DEFAULT_MIX["read"]
        return {"read": 1 - self.write_ratio, **{k: v / writes * self.write_ratio for k, v in DEFAULT_MIX.items() if k != "read"}}

    @property
    def request_kb(self) -> float:
        """Bytes in: headers, plus the item on a write."""
        return HEADERS_KB + self.write_ratio * self.item_kb

    @property
    def response_kb(self) -> float:
        """Bytes out: headers and the item (a read returns it; a write echoes it)."""
        return HEADERS_KB + self.item_kb


# -- facts from the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableFacts:
    zone: str
    name: str
    #: the home region first, then the replicas (the plan's ``replicas`` argument)
    regions: tuple[str, ...]
    pitr_regions: tuple[str, ...]
    indexes: int


@dataclass
class RegionFacts:
    nat_gateways: int = 0
    interface_endpoints: int = 0
    #: interface endpoints x the subnets (AZs) each has an ENI in
    interface_enis: int = 0
    albs: int = 0
    #: metrics evaluated by this region's metric alarms (a metric-math alarm counts each metric)
    alarm_metrics: int = 0
    #: of those, the ones that exist only because the region has peers (replication latency, heartbeat)
    peer_alarm_metrics: int = 0
    composite_alarms: int = 0
    dashboards: int = 0
    task_vcpu: float = 0.0
    task_gb: float = 0.0
    min_tasks: int = 1
    max_tasks: int = 0
    log_retention_days: int = 30


@dataclass
class PlanFacts:
    topology: Topology
    regions: dict[str, RegionFacts]
    tables: dict[tuple[str, str], TableFacts]
    #: per Route 53 health check, the optional features it uses (HTTPS, fast interval, latency, string match)
    health_checks: list[tuple[str, ...]] = field(default_factory=list)
    accelerators: int = 0

    @property
    def network_mode(self) -> str:
        return self.topology.network_mode

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanFacts:
        topology = plan.topology
        regions = {r: RegionFacts(log_retention_days=topology.sizing.log_retention_days) for r in topology.regions}
        tables: dict[tuple[str, str], TableFacts] = {}
        checks: list[tuple[str, ...]] = []
        accelerators = 0
        for r in plan.custom:
            facts = regions.get(r.region or "")
            kind = r.type
            if kind == "aws:dynamodb/table:Table":
                tags = r.inputs.get("tags") or {}
                replicas = r.inputs.get("replicas") or []
                home_pitr = bool((r.inputs.get("pointInTimeRecovery") or {}).get("enabled"))
                tables[(tags.get("meridian:zone", ""), tags.get("meridian:table", r.inputs.get("name", r.name)))] = TableFacts(
                    zone=tags.get("meridian:zone", ""),
                    name=tags.get("meridian:table", r.inputs.get("name", r.name)),
                    regions=(str(r.region), *[str(x["regionName"]) for x in replicas]),
                    pitr_regions=((str(r.region),) if home_pitr else ()) + tuple(
                        str(x["regionName"]) for x in replicas if x.get("pointInTimeRecovery")
                    ),
                    indexes=len(r.inputs.get("globalSecondaryIndexes") or []),
                )
            elif kind == "aws:route53/healthCheck:HealthCheck":
                checks.append(health_check_features(r.inputs))
            elif kind == "aws:globalaccelerator/accelerator:Accelerator":
                accelerators += 1
            elif facts is None:
                continue
            elif kind == "aws:ec2/natGateway:NatGateway":
                facts.nat_gateways += 1
            elif kind == "aws:ec2/vpcEndpoint:VpcEndpoint" and r.inputs.get("vpcEndpointType") == "Interface":
                facts.interface_endpoints += 1
                facts.interface_enis += len(r.inputs.get("subnetIds") or [])
            elif kind == "aws:lb/loadBalancer:LoadBalancer":
                facts.albs += 1
            elif kind == "aws:cloudwatch/metricAlarm:MetricAlarm":
                metrics = alarm_metric_names(r.inputs)
                facts.alarm_metrics += len(metrics)
                if any(m in PEER_METRICS for m in metrics):
                    facts.peer_alarm_metrics += len(metrics)
            elif kind == "aws:cloudwatch/compositeAlarm:CompositeAlarm":
                facts.composite_alarms += 1
            elif kind == "aws:cloudwatch/dashboard:Dashboard":
                facts.dashboards += 1
            elif kind == "aws:ecs/taskDefinition:TaskDefinition":
                facts.task_vcpu = float(r.inputs.get("cpu", 0)) / 1024
                facts.task_gb = float(r.inputs.get("memory", 0)) / 1024
            elif kind == "aws:appautoscaling/target:Target":
                facts.min_tasks = int(r.inputs.get("minCapacity", 1))
                facts.max_tasks = int(r.inputs.get("maxCapacity", 0))
            elif kind == "aws:cloudwatch/logGroup:LogGroup" and str(r.inputs.get("name", "")).endswith("/service"):
                facts.log_retention_days = int(r.inputs.get("retentionInDays") or facts.log_retention_days)
        return cls(topology=topology, regions=regions, tables=tables, health_checks=checks, accelerators=accelerators)


FEATURE_SHORT = {"string matching": "strings", "fast interval": "10 s", "latency measurement": "latency"}

#: Metrics an alarm watches only because the region has peer regions.
PEER_METRICS = frozenset({"ReplicationLatency", "HeartbeatStalenessSeconds"})


def alarm_metric_names(inputs: Mapping[str, Any]) -> list[str]:
    """The metrics a metric alarm evaluates (each is billed): its metric-math MetricStats, or its one metric."""
    queries = inputs.get("metricQueries") or []
    if queries:
        return [str((q.get("metric") or {}).get("metricName", "")) for q in queries if q.get("metric")]
    return [str(inputs.get("metricName", ""))]


def health_check_features(inputs: Mapping[str, Any]) -> tuple[str, ...]:
    """The optional (separately billed) features of a Route 53 health check, as the plan declares it."""
    kind = str(inputs.get("type", ""))
    features = []
    if kind.startswith("HTTPS"):
        features.append("HTTPS")
    if kind.endswith("STR_MATCH") or inputs.get("searchString"):
        features.append("string matching")
    if float(inputs.get("requestInterval") or 30) == 10:
        features.append("fast interval")
    if inputs.get("measureLatency"):
        features.append("latency measurement")
    return tuple(features)


# -- the estimate ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineItem:
    service: str
    item: str
    region: str
    quantity: float
    unit: str
    unit_price_usd: float
    monthly_usd: float
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Estimate:
    items: list[LineItem]
    single_region: list[LineItem]
    single_region_name: str
    assumptions: dict[str, Any]
    warnings: list[str]

    @property
    def total(self) -> float:
        return round(sum(i.monthly_usd for i in self.items), 2)

    @property
    def single_region_total(self) -> float:
        return round(sum(i.monthly_usd for i in self.single_region), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "total_monthly_usd": self.total,
            "single_region_monthly_usd": self.single_region_total,
            "items": [i.to_json() for i in self.items],
            "assumptions": self.assumptions,
        }


def subtotals(items: Iterable[LineItem]) -> dict[str, float]:
    """Monthly USD by service."""
    out: dict[str, float] = defaultdict(float)
    for i in items:
        out[i.service] += i.monthly_usd
    return {k: round(v, 2) for k, v in out.items()}


class _Bill:
    """Collects line items; a line with no quantity is left out."""

    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices
        self.items: list[LineItem] = []

    def add(self, service: str, item: str, region: str, quantity: float, price_key: str) -> None:
        if quantity <= 0:
            return
        price = self.prices.get(price_key, region)
        quantity = round(quantity, 4)
        self.items.append(LineItem(service, item, region, quantity, price.unit, price.usd, round(quantity * price.usd, 2), price.source))


def user_zone(topology: Topology, region: str) -> str:
    """The zone whose tables a request arriving in ``region`` works on: the most specific zone holding the
    region (an EU region serves EU residents; a region only the all-regions zone covers serves that zone)."""
    return min(topology.zones_of(region), key=lambda z: (len(z.regions), z.name)).name


def tasks_for(rps: float, load: Load, vcpu: float) -> int:
    """Tasks that run ``rps`` at the CPU target."""
    if vcpu <= 0:
        return 0
    return math.ceil(round(rps * load.cpu_ms / 1000 / (vcpu * CPU_TARGET), 9))


def estimate(facts: PlanFacts, load: Load, prices: PriceBook) -> Estimate:
    """The stack's monthly bill at ``load``, and the same load on a single region."""
    topology = facts.topology
    regions = list(topology.regions)
    n = len(regions)
    global_zone = topology.global_zone.name
    per_region = load.rps / n
    # With one region lost, the survivors share its load: each must carry rps / (n - 1).
    loss_rps = load.rps / (n - 1)
    mix = load.mix
    kb_units = math.ceil(round(load.item_kb, 9))
    read_units = math.ceil(round(load.item_kb / 4, 9)) + DIRECTORY_READ_UNITS
    http_gb_per_request = (load.request_kb + load.response_kb) / GB
    bill = _Bill(prices)
    warnings_: list[str] = []

    # Which tables each kind of write lands on, from the region where the request arrives.
    def writes_from(region: str) -> list[tuple[tuple[str, str], float, float, float]]:
        """(table key, operations per month, write units per operation, KB replicated per operation)."""
        ops = per_region * SECONDS_PER_MONTH
        zone = user_zone(topology, region)
        return [
            ((zone, "users"), ops * mix["update"], kb_units, load.item_kb),
            ((zone, "orders"), ops * mix["order"], kb_units, load.item_kb),
            ((global_zone, "counters"), ops * mix["increment"], 1, COUNTER_ITEM_KB),
        ]

    # Write units landing in each region: every write is applied (and billed) in every replica of its table.
    write_units: dict[str, float] = defaultdict(float)
    index_units: dict[str, float] = defaultdict(float)
    stream_records: dict[str, float] = defaultdict(float)
    replicated_kb: dict[str, float] = defaultdict(float)
    zone_share: dict[str, float] = defaultdict(float)
    for source in regions:
        zone_share[user_zone(topology, source)] += 1 / n
        for key, ops, units, kb in writes_from(source):
            table = facts.tables.get(key)
            if table is None:
                missing = f"the plan has no table {key[1]!r} in zone {key[0]!r}: its writes are not priced"
                if missing not in warnings_:
                    warnings_.append(missing)
                continue
            for region in table.regions:
                write_units[region] += ops * units
                index_units[region] += ops * units * table.indexes
                stream_records[region] += ops
            replicated_kb[source] += ops * kb * (len(table.regions) - 1)
    # Each zone's data is stored in every region that holds its tables, with PITR where the plan enables it.
    stored_gb: dict[str, float] = defaultdict(float)
    pitr_gb: dict[str, float] = defaultdict(float)
    for zone in topology.zones:
        zone_tables = [t for t in facts.tables.values() if t.zone == zone.name]
        data = load.storage_gb * zone_share.get(zone.name, 0.0)
        for region in sorted({r for t in zone_tables for r in t.regions}):
            holding = [t for t in zone_tables if region in t.regions]
            stored_gb[region] += data
            pitr_gb[region] += data * sum(region in t.pitr_regions for t in holding) / len(holding)

    tasks_needed: dict[str, int] = {}
    over_ceiling: dict[str, int] = {}
    for region in regions:
        f = facts.regions[region]
        requests = per_region * SECONDS_PER_MONTH
        # Fargate: sized to carry the load of a lost region at the CPU target, never below the floor.
        tasks = max(f.min_tasks, tasks_for(loss_rps, load, f.task_vcpu))
        tasks_needed[region] = tasks
        if f.max_tasks and tasks > f.max_tasks:
            over_ceiling[region] = f.max_tasks
        task_price = prices.get("fargate_vcpu_hour", region).usd * f.task_vcpu + prices.get("fargate_gb_hour", region).usd * f.task_gb
        bill.items.append(LineItem(
            "Fargate", f"{tasks} tasks x {f.task_vcpu:g} vCPU, {f.task_gb:g} GB", region,
            tasks * HOURS_PER_MONTH, "task-hour", round(task_price, 6), round(tasks * HOURS_PER_MONTH * task_price, 2),
            prices.get("fargate_vcpu_hour", region).source,
        ))
        # ALB: hours, and capacity units (the largest of processed GB/hour and new connections / 25).
        bill.add("ALB", "load balancer hours", region, f.albs * HOURS_PER_MONTH, "alb_hour")
        lcu = max(per_region * http_gb_per_request * 3600, per_region * NEW_CONNECTIONS_PER_REQUEST / 25) if f.albs else 0.0
        bill.add("ALB", f"capacity ({lcu:,.1f} LCU)", region, lcu * HOURS_PER_MONTH, "alb_lcu_hour")
        # DynamoDB.
        bill.add("DynamoDB", "reads", region,
                 requests * mix["read"] * read_units / 1e6, "dynamodb_read_million")
        bill.add("DynamoDB", "writes x every replica", region,
                 write_units[region] / 1e6, "dynamodb_write_million")
        bill.add("DynamoDB", "index writes x every replica", region, index_units[region] / 1e6, "dynamodb_write_million")
        bill.add("DynamoDB", "storage", region, stored_gb[region], "dynamodb_storage_gb_month")
        bill.add("DynamoDB", "PITR backups", region, pitr_gb[region], "dynamodb_pitr_gb_month")
        bill.add("DynamoDB", "stream reads (Lambda: free)", region, stream_records[region] / 1e6,
                 "dynamodb_stream_read_lambda")
        # Network: NAT gateways and interface endpoints, counted from the plan.
        forwarded_gb = requests * FORWARDED_SHARE * http_gb_per_request
        logs_gb = requests * LOG_BYTES_PER_REQUEST / 1024 / GB
        via_endpoints = f.interface_endpoints > 0
        bill.add("NAT gateway", f"{f.nat_gateways} gateway{'s' if f.nat_gateways != 1 else ''}", region,
                 f.nat_gateways * HOURS_PER_MONTH, "nat_hour")
        # ha: only peer-region calls leave through the NAT; lean: logs, ECR and Secrets Manager calls too.
        bill.add("NAT gateway", "data processed", region,
                 (forwarded_gb + (0 if via_endpoints else logs_gb)) if f.nat_gateways else 0.0, "nat_gb")
        bill.add("VPC endpoints", f"{f.interface_endpoints} interface endpoints x {f.interface_enis // max(f.interface_endpoints, 1)} AZs",
                 region, f.interface_enis * HOURS_PER_MONTH, "endpoint_eni_hour")
        bill.add("VPC endpoints", "data processed", region, logs_gb if via_endpoints else 0.0, "endpoint_gb")
        # CloudWatch.
        bill.add("CloudWatch", "alarm metrics", region, f.alarm_metrics, "cloudwatch_alarm_metric_month")
        bill.add("CloudWatch", "composite alarms", region, f.composite_alarms, "cloudwatch_composite_alarm_month")
        bill.add("CloudWatch", "custom metrics", region, custom_metrics(topology, region), "cloudwatch_custom_metric_month")
        bill.add("CloudWatch", "log ingestion", region, logs_gb, "cloudwatch_logs_ingest_gb")
        bill.add("CloudWatch", f"log storage ({f.log_retention_days} days)", region, logs_gb * f.log_retention_days / 30,
                 "cloudwatch_logs_storage_gb_month")
        bill.add("CloudWatch", "dashboards", region, f.dashboards, "cloudwatch_dashboard_month")
        # Data leaving the region for other regions.
        bill.add("Data transfer", "replication to other regions", region, replicated_kb[region] / GB, "inter_region_gb")
        bill.add("Data transfer", "forwarded requests", region, forwarded_gb, "inter_region_gb")

    if over_ceiling:
        warnings_.append(
            f"carrying a lost region's share needs {max(tasks_needed[r] for r in over_ceiling)} tasks in "
            f"{', '.join(over_ceiling)}, above meridian:maxCount {max(over_ceiling.values())}: raise it or autoscaling stops short"
        )
    if facts.accelerators:
        bill.add("Global Accelerator", "fixed fee", "global", facts.accelerators * HOURS_PER_MONTH, "ga_hour")
        for region in regions:
            bill.add("Global Accelerator", "transfer premium", region,
                     per_region * SECONDS_PER_MONTH * load.response_kb / GB, "ga_premium_gb")
    bill.add("Route 53", "hosted zone", "global", 1, "route53_zone_month")
    by_features: dict[tuple[str, ...], int] = defaultdict(int)
    for features in facts.health_checks:
        by_features[features] += 1
    for features, count in sorted(by_features.items()):
        base = prices.get("route53_health_check_month")
        extra = prices.get("route53_health_check_feature_month")
        unit_price = base.usd + extra.usd * len(features)
        what = f"health checks ({', '.join(FEATURE_SHORT.get(x, x) for x in features)})" if features else "health checks"
        bill.items.append(LineItem("Route 53", what, "global", count, base.unit, unit_price, round(count * unit_price, 2), base.source))
    bill.add("Route 53", "queries (alias: free)", "global", load.rps * DNS_QUERIES_PER_REQUEST * SECONDS_PER_MONTH / 1e6,
             "route53_alias_query_million")

    single_name, single = single_region_estimate(facts, load, prices)
    order = {s: i for i, s in enumerate(SERVICE_ORDER)}
    position = {r: i for i, r in enumerate([*regions, "global"])}
    bill.items.sort(key=lambda i: (order.get(i.service, 99), position.get(i.region, 99)))
    if prices.fallbacks:
        warnings_.append(f"no prices for {', '.join(sorted(prices.fallbacks))} in the price file: priced at {prices.fallback_region} rates")
    assumptions: dict[str, Any] = {
        "rps": load.rps,
        "write_ratio": load.write_ratio,
        "item_kb": load.item_kb,
        "storage_gb": load.storage_gb,
        "cpu_ms_per_request": load.cpu_ms,
        "cpu_ms_source": load.cpu_ms_source,
        "cpu_target": CPU_TARGET,
        "request_mix": {k: round(v, 4) for k, v in mix.items()},
        "hours_per_month": HOURS_PER_MONTH,
        "traffic_split": "even across regions; each region's requests use the most specific residency zone holding it",
        "fargate_tasks_per_region": tasks_needed,
        "fargate_sizing": f"each region carries rps / (regions - 1) = {loss_rps:,.0f} rps at {CPU_TARGET:.0%} CPU when one region is lost; "
        "never below the autoscaling floor (meridian:minCount)",
        "network_mode": facts.network_mode,
        "headers_kb_each_way": HEADERS_KB,
        "new_connections_per_request": NEW_CONNECTIONS_PER_REQUEST,
        "log_bytes_per_request": LOG_BYTES_PER_REQUEST,
        "forwarded_share": FORWARDED_SHARE,
        "dns_queries_per_request": DNS_QUERIES_PER_REQUEST,
        "prices_compiled": prices.compiled,
        "dynamodb_prices": "on-demand, after the 1 November 2024 cut: a replicated write unit costs the same as a write unit, "
        "billed once per replica",
        "single_region": {"region": single_name, "monthly_usd": round(sum(i.monthly_usd for i in single), 2),
                          "by_service": subtotals(single)},
        "not_priced": list(NOT_PRICED),
        "warnings": warnings_,
    }
    return Estimate(items=bill.items, single_region=single, single_region_name=single_name, assumptions=assumptions, warnings=warnings_)


def custom_metrics(topology: Topology, region: str) -> int:
    """Custom metric series one region publishes (lambdas/): the canary's staleness and lag per peer region
    (ReceivingRegion x SourceRegion) and its worst staleness, and the conflict auditor's Conflicts count."""
    peers = len(topology.regions) - 1
    return 2 * peers + 1 + 1


def single_region_estimate(facts: PlanFacts, load: Load, prices: PriceBook) -> tuple[str, list[LineItem]]:
    """The same load served by one region (the all-regions zone's home): tables unreplicated, no accelerator,
    no health checks, no inter-region traffic, no headroom for a lost region. Network and alarms as the
    plan declares them for that region, less the alarms that watch peers."""
    topology = facts.topology
    region = topology.home_region(topology.global_zone)
    f = facts.regions[region]
    mix = load.mix
    requests = load.rps * SECONDS_PER_MONTH
    kb_units = math.ceil(round(load.item_kb, 9))
    read_units = math.ceil(round(load.item_kb / 4, 9)) + DIRECTORY_READ_UNITS
    users = next((t for t in facts.tables.values() if t.name == "users"), None)
    bill = _Bill(prices)
    tasks = max(f.min_tasks, tasks_for(load.rps, load, f.task_vcpu))
    task_price = prices.get("fargate_vcpu_hour", region).usd * f.task_vcpu + prices.get("fargate_gb_hour", region).usd * f.task_gb
    bill.items.append(LineItem("Fargate", f"{tasks} tasks x {f.task_vcpu:g} vCPU, {f.task_gb:g} GB", region, tasks * HOURS_PER_MONTH,
                               "task-hour", round(task_price, 6), round(tasks * HOURS_PER_MONTH * task_price, 2),
                               prices.get("fargate_vcpu_hour", region).source))
    bill.add("ALB", "load balancer hours", region, max(f.albs, 1) * HOURS_PER_MONTH, "alb_hour")
    lcu = max(load.rps * (load.request_kb + load.response_kb) / GB * 3600, load.rps * NEW_CONNECTIONS_PER_REQUEST / 25)
    bill.add("ALB", f"capacity ({lcu:,.1f} LCU)", region, lcu * HOURS_PER_MONTH, "alb_lcu_hour")
    bill.add("DynamoDB", "reads", region, requests * mix["read"] * read_units / 1e6, "dynamodb_read_million")
    writes = requests * ((mix["update"] + mix["order"]) * kb_units + mix["increment"])
    bill.add("DynamoDB", "writes (one copy)", region, writes / 1e6, "dynamodb_write_million")
    bill.add("DynamoDB", "index writes", region, requests * mix["update"] * kb_units * (users.indexes if users else 0) / 1e6,
             "dynamodb_write_million")
    bill.add("DynamoDB", "storage", region, load.storage_gb, "dynamodb_storage_gb_month")
    bill.add("DynamoDB", "PITR backups", region, load.storage_gb, "dynamodb_pitr_gb_month")
    logs_gb = requests * LOG_BYTES_PER_REQUEST / 1024 / GB
    via_endpoints = f.interface_endpoints > 0
    bill.add("NAT gateway", f"{f.nat_gateways} gateway{'s' if f.nat_gateways != 1 else ''}", region, f.nat_gateways * HOURS_PER_MONTH, "nat_hour")
    bill.add("NAT gateway", "data processed", region, 0.0 if via_endpoints else logs_gb, "nat_gb")
    bill.add("VPC endpoints", f"{f.interface_endpoints} interface endpoints x {f.interface_enis // max(f.interface_endpoints, 1)} AZs", region, f.interface_enis * HOURS_PER_MONTH, "endpoint_eni_hour")
    bill.add("VPC endpoints", "data processed", region, logs_gb if via_endpoints else 0.0, "endpoint_gb")
    bill.add("CloudWatch", "alarm metrics", region, f.alarm_metrics - f.peer_alarm_metrics, "cloudwatch_alarm_metric_month")
    bill.add("CloudWatch", "composite alarms", region, f.composite_alarms, "cloudwatch_composite_alarm_month")
    bill.add("CloudWatch", "log ingestion", region, logs_gb, "cloudwatch_logs_ingest_gb")
    bill.add("CloudWatch", f"log storage ({f.log_retention_days} days)", region, logs_gb * f.log_retention_days / 30, "cloudwatch_logs_storage_gb_month")
    bill.add("CloudWatch", "dashboards", region, f.dashboards, "cloudwatch_dashboard_month")
    bill.add("Route 53", "hosted zone", "global", 1, "route53_zone_month")
    return region, bill.items


# -- rendering the stack --------------------------------------------------------------------------------------
def render(path: Path, network_mode: str | None) -> Plan:
    """The stack's plan as `meridian plan` renders it, with ``meridian:networkMode`` overridden if asked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulumi_aws.lambda_ warns on import
        from infra.render import RenderError, render_config
        from meridian.stackfile import StackConfigError, encode, read_stack

        try:
            config = read_stack(path)
            if network_mode is not None:
                config = replace(config, values={**config.values, "meridian:networkMode": encode(network_mode)})
            return render_config(config)
        except (RenderError, StackConfigError) as exc:
            raise UsageError(str(exc)) from None


# -- the command ----------------------------------------------------------------------------------------------
def _number(flag: str, raw: str | None, default: float | None = None) -> float:
    if raw is None:
        if default is None:
            raise UsageError(f"{flag} is required, e.g. {flag} 50000")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{flag} is {raw!r}; give a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} is {raw!r}; give a finite number")
    return value


def load_from_args(args: argparse.Namespace) -> Load:
    load = Load(
        rps=_number("--rps", args.rps),
        write_ratio=_number("--write-ratio", args.write_ratio, 1 - DEFAULT_MIX["read"]),
        item_kb=_number("--item-kb", args.item_kb, 1.0),
        cpu_ms=_number("--cpu-ms", args.cpu_ms, CPU_MS_PER_REQUEST),
        storage_gb=_number("--storage-gb", args.storage_gb, DEFAULT_STORAGE_GB),
        cpu_ms_source="--cpu-ms",
    )
    if args.cpu_ms is not None:
        return load
    measured = measured_cpu_ms(load.mix)
    if measured is None:
        return replace(load, cpu_ms_source=Load.cpu_ms_source)
    return replace(load, cpu_ms=measured[0], cpu_ms_source=measured[1])


def measured_cpu_ms(mix: Mapping[str, float], path: Path | None = None) -> tuple[float, str] | None:
    """CPU ms per request at ``mix`` from bench/cost_per_request.py's figures (each operation's measured
    CPU, weighed by its share), and where they come from; None when the figures are absent or lack one of
    the mix's operations."""
    from meridian_cli.capacity import FIGURES, load_figures

    try:
        figures = load_figures(path or FIGURES)
    except UsageError:
        return None
    if not set(mix) <= set(figures.cpu_ms):
        return None
    return round(sum(share * figures.cpu_ms[op] for op, share in mix.items()), 3), f"measured: {figures.source}"


def cmd_cost(args: argparse.Namespace) -> int:
    load = load_from_args(args)  # bad flags fail before the (slower) render
    if args.network_mode is not None and args.network_mode not in NETWORK_MODES:
        raise UsageError(f"--network-mode is {args.network_mode!r}; use {' or '.join(NETWORK_MODES)}")
    path = stack_file(args)
    prices = PriceBook.load(args.prices)
    facts = PlanFacts.from_plan(render(path, args.network_mode))
    result = estimate(facts, load, prices)
    # Both network layouts, each from its own plan: what the other one would cost.
    other_mode = next(m for m in NETWORK_MODES if m != facts.network_mode)
    other = estimate(PlanFacts.from_plan(render(path, other_mode)), load, PriceBook(prices.data))
    result.assumptions["network_modes"] = {facts.network_mode: result.total, other_mode: other.total}
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return 0
    print_table(result, facts.topology, other_mode, other.total)
    return 0


#: Units as the table shows them (the JSON keeps the price file's).
SHORT_UNITS = {
    "million read request units": "M read units", "million write request units": "M write units",
    "million stream records": "M records", "million queries": "M queries", "NAT gateway-hour": "gateway-h",
    "endpoint ENI-hour": "ENI-h", "task-hour": "task-h", "ALB-hour": "ALB-h", "LCU-hour": "LCU-h",
    "accelerator-hour": "h", "hosted zone-month": "zone", "health check-month": "checks", "alarm metric-month": "metrics",
    "composite alarm-month": "alarms", "metric-month": "metrics", "dashboard-month": "dashboards",
}


def _quantity(value: float, unit: str) -> str:
    shown = f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.2f}"
    return f"{shown} {SHORT_UNITS.get(unit, unit)}"


def print_table(result: Estimate, topology: Topology, other_mode: str, other_total: float) -> None:
    from rich.table import Table

    out = console()
    load = result.assumptions
    table = Table(
        title=f"Monthly cost of {topology.project}/{topology.stack} at {load['rps']:,.0f} requests/s "
        f"({len(topology.regions)} regions, network {load['network_mode']}, prices of {load['prices_compiled']})",
        title_justify="left",
        caption=f"Not priced: {'; '.join(NOT_PRICED)}.",
        caption_justify="left",
    )
    for column, justify in (("service", "left"), ("item", "left"), ("region", "left"), ("quantity", "right"), ("monthly USD", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    subtotal = subtotals(result.items)
    previous = None
    for item in result.items:
        if previous is not None and item.service != previous:
            table.add_row("", f"[dim]{previous} subtotal[/]", "", "", f"[dim]{subtotal[previous]:,.2f}[/]", end_section=True)
        table.add_row(item.service if item.service != previous else "", item.item, item.region,
                      _quantity(item.quantity, item.unit), f"{item.monthly_usd:,.2f}")
        previous = item.service
    if previous is not None:
        table.add_row("", f"[dim]{previous} subtotal[/]", "", "", f"[dim]{subtotal[previous]:,.2f}[/]", end_section=True)
    table.add_row("[bold]total[/]", "", "", "", f"[bold]{result.total:,.2f}[/]")
    out.print(table)
    single = result.single_region_total
    ratio = result.total / single if single else float("inf")
    out.print(f"Single region ({result.single_region_name}) carrying the same load: [bold]${single:,.2f}[/] a month "
              f"(no replicas, accelerator, health checks or lost-region headroom).")
    out.print(f"Multi-region premium: [bold]{ratio:.2f}x[/] the single region (${result.total - single:,.2f} more a month).")
    delta = other_total - result.total
    out.print(f"Network mode {load['network_mode']}; with meridian:networkMode {other_mode} the total would be ${other_total:,.2f} "
              f"({'+' if delta >= 0 else '-'}${abs(delta):,.2f}).")
    out.print(f"Fargate: {load['cpu_ms_per_request']:g} ms CPU per request ({load['cpu_ms_source']}), target {CPU_TARGET:.0%} CPU; "
              f"tasks per region {', '.join(f'{r} {t}' for r, t in load['fargate_tasks_per_region'].items())}.")
    for warning in result.warnings:
        out.print(f"[yellow]warning: {warning}[/]")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("cost", help="monthly cost of a stack at a given load, by line item and region, beside a single region")
    add_stack_options(parser)
    # Numbers are read as text and checked by the command, so that a bad value is one line and exit 2.
    parser.add_argument("--rps", metavar="N", help="peak requests per second across all regions (required)")
    parser.add_argument("--write-ratio", metavar="R", help="share of requests that write, 0..1 (default 0.25)")
    parser.add_argument("--item-kb", metavar="K", help="item size in KB (default 1)")
    parser.add_argument("--cpu-ms", metavar="MS", help="CPU milliseconds per request (default: bench/cost_per_request.py's "
                        f"measured figures at the request mix, else {CPU_MS_PER_REQUEST})")
    parser.add_argument("--storage-gb", metavar="GB", help=f"data size in GB, split across zones by traffic (default {DEFAULT_STORAGE_GB:g})")
    parser.add_argument("--network-mode", metavar="MODE", help="price the stack with meridian:networkMode ha or lean (default: the stack's)")
    parser.add_argument("--prices", metavar="PATH", help="a price file instead of the packaged prices.json")
    parser.add_argument("--json", action="store_true", help="print total, single-region total, items and assumptions as JSON")
    parser.set_defaults(handler=cmd_cost)


REGISTRY.append(register)

"""The Meridian topology: regions, residency zones, tables, sizing and routing, typed and validated.

This module is the one source of truth shared by the Pulumi program, the regional service, the Lambdas,
`meridian plan` and the local emulator. It imports nothing from Pulumi: the program reads stack config
and hands it to :func:`load_topology`; everything else reads a stack file with :func:`load_stack_file`
or the serialized form the ECS task receives (:meth:`Topology.to_json`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CONFIG_NAMESPACE",
    "DEFAULT_TABLES",
    "GLOBAL_ZONE",
    "MRSC_REGION_SETS",
    "Index",
    "KeyAttribute",
    "Operations",
    "Release",
    "Routing",
    "Sizing",
    "TableSpec",
    "Topology",
    "TopologyError",
    "Zone",
    "known_regions",
    "load_stack_file",
    "load_topology",
    "topology_from_cli_config",
]

CONFIG_NAMESPACE = "meridian"
GLOBAL_ZONE = "global"

#: Multi-Region strong consistency (MRSC) is offered only inside these region sets (AWS docs, 2025).
MRSC_REGION_SETS: dict[str, frozenset[str]] = {
    "US": frozenset({"us-east-1", "us-east-2", "us-west-2"}),
    "EU": frozenset({"eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1"}),
    "AP": frozenset({"ap-northeast-1", "ap-northeast-2", "ap-northeast-3"}),
}


class TopologyError(ValueError):
    """A stack configuration that cannot be deployed; the message says what to fix, in one line."""


@cache
def known_regions() -> frozenset[str]:
    """Every region botocore's own partition data lists for DynamoDB, in every partition."""
    import boto3  # boto3 is a dependency of every Meridian part; imported lazily to keep this module cheap

    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("dynamodb", partition_name=partition))
    return frozenset(regions)


KeyType = Literal["S", "N", "B"]
Consistency = Literal["eventual", "strong"]
#: How a strong table keeps its promise in a zone (meridian.strong): MRSC, or one owner region per key.
Mechanism = Literal["mrsc", "owner"]
#: ``mrsc``: MRSC or refused (a table a stack declares strong); ``auto``: MRSC where the zone allows it,
#: else one owner region per key (the service's strong keys: stock, reservations, email claims).
StrongMode = Literal["mrsc", "auto"]
Scope = Literal["zone", "global"]
NetworkMode = Literal["ha", "lean"]
#: ``meridian:networkMode`` values; ``ha`` is today's layout (and the default).
NETWORK_MODES: tuple[NetworkMode, ...] = ("ha", "lean")


@dataclass(frozen=True, kw_only=True)
class KeyAttribute:
    name: str
    type: KeyType = "S"


@dataclass(frozen=True, kw_only=True)
class Index:
    """A global secondary index (projection ALL)."""

    name: str
    hash_key: KeyAttribute
    range_key: KeyAttribute | None = None


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """A table the service needs. ``scope="zone"`` tables exist once per residency zone, replicated only
    inside that zone; ``scope="global"`` tables (the directory) live in the all-regions zone."""

    name: str
    hash_key: KeyAttribute
    range_key: KeyAttribute | None = None
    indexes: tuple[Index, ...] = ()
    ttl_attribute: str | None = None
    stream: bool = True
    scope: Scope = "zone"
    consistency: Consistency = "eventual"
    witness_region: str | None = None
    strong_mode: StrongMode = "mrsc"

    def key_attributes(self) -> tuple[KeyAttribute, ...]:
        """Every attribute used by the table's or an index's key schema, once, in declaration order."""
        seen: dict[str, KeyAttribute] = {}
        for attr in (self.hash_key, self.range_key, *[a for i in self.indexes for a in (i.hash_key, i.range_key)]):
            if attr is not None and attr.name not in seen:
                seen[attr.name] = attr
        return tuple(seen.values())


def _s(name: str) -> KeyAttribute:
    return KeyAttribute(name=name, type="S")


#: The tables the Meridian service uses. The Pulumi program declares exactly these, per zone; the local
#: emulator creates them only from the program's resources, so a table missing here fails locally.
DEFAULT_TABLES: tuple[TableSpec, ...] = (
    TableSpec(name="directory", hash_key=_s("user_id"), scope="global"),
    TableSpec(name="users", hash_key=_s("user_id"), indexes=(Index(name="by-email", hash_key=_s("email")),)),
    TableSpec(name="orders", hash_key=_s("user_id"), range_key=_s("order_id")),
    TableSpec(name="idempotency", hash_key=_s("key"), ttl_attribute="expires_at"),
    TableSpec(name="counters", hash_key=_s("name"), range_key=_s("shard")),
    TableSpec(name="conflicts", hash_key=_s("item_key"), range_key=_s("conflict_id"), ttl_attribute="expires_at"),
    # The strong keys (meridian.strong): global data, no PII (claims are keyed hashes of emails).
    TableSpec(name="stock", hash_key=_s("sku"), scope="global", consistency="strong", strong_mode="auto"),
    TableSpec(name="reservations", hash_key=_s("reservation_id"), scope="global", consistency="strong", strong_mode="auto"),
    TableSpec(name="claims", hash_key=_s("claim"), scope="global", consistency="strong", strong_mode="auto"),
)


@dataclass(frozen=True, kw_only=True)
class Zone:
    name: str
    regions: tuple[str, ...]
    implicit: bool = False


@dataclass(frozen=True, kw_only=True)
class Sizing:
    #: empty: `pulumi up` builds services/Dockerfile and pushes it to each region's ECR repository
    image: str = ""
    cpu: int = 512
    memory: int = 1024
    desired_count: int = 2
    min_count: int = 2
    max_count: int = 10
    container_port: int = 8080
    log_retention_days: int = 30


@dataclass(frozen=True, kw_only=True)
class Routing:
    health_check_interval: int = 30
    failure_threshold: int = 3
    dns_ttl: int = 60
    global_accelerator: bool = True
    traffic_dials: Mapping[str, int] = field(default_factory=dict)

    def dial(self, region: str) -> int:
        return self.traffic_dials.get(region, 100)


@dataclass(frozen=True, kw_only=True)
class Release:
    """How a release reaches the regions (docs/releases.md). Deploy-time only: left out of the serialized
    topology the tasks and Lambdas read, so that a pin moving in one region changes no other region."""

    #: ECS deployment strategy of every region's service: ROLLING | BLUE_GREEN | CANARY | LINEAR
    strategy: str = "ROLLING"
    #: minutes a wave bakes with its alarms OK before the next wave (and ECS's bake time, traffic-shifting strategies)
    bake_minutes: int = 10
    #: the region that receives a release first; empty: the least loaded one
    canary_region: str = ""
    #: region -> the image it runs, by digest (REPO@sha256:...); a region without a pin runs the built image
    pins: Mapping[str, str] = field(default_factory=dict)

    def pin(self, region: str) -> str | None:
        return self.pins.get(region)


@dataclass(frozen=True, kw_only=True)
class Operations:
    """Who hears the alarms and how the stack may be torn down (docs/runbooks/). Deploy-time only, like
    :class:`Release`: left out of the serialized topology, so that adding an address changes no task."""

    #: e-mail addresses subscribed to every region's alarm topic (each confirms by mail)
    alert_emails: tuple[str, ...] = ()
    #: HTTPS endpoints (a pager's webhook) subscribed to every region's alarm topic
    alert_https_endpoints: tuple[str, ...] = ()
    #: false only for a teardown: table deletion protection off and Pulumi ``protect`` off
    deletion_protection: bool = True
    #: conflicts recorded per minute in a region above which, 5 minutes in a row, the conflict alarm fires
    conflicts_per_minute: int = 10
    #: days between scheduled rotations of the signing keys (meridian.rotation); 0: no scheduled rotation
    key_rotation_days: int = 30


@dataclass(frozen=True, kw_only=True)
class Topology:
    project: str
    stack: str
    regions: tuple[str, ...]
    zones: tuple[Zone, ...]
    tables: tuple[TableSpec, ...] = DEFAULT_TABLES
    domain: str = "api.meridian.example.com"
    hosted_zone_id: str | None = None
    sizing: Sizing = field(default_factory=Sizing)
    routing: Routing = field(default_factory=Routing)
    #: zone name -> the region whose provider declares the zone's global tables (pinned, never list order)
    home_regions: Mapping[str, str] = field(default_factory=dict)
    #: the region that owns the session-key secret (replicated to the others)
    primary_region: str = ""
    #: strategy, bake time and per-region pins of releases (not serialized: see :class:`Release`)
    release: Release = field(default_factory=Release)
    #: ``ha``: a NAT gateway and interface endpoints in every AZ; ``lean``: one NAT gateway, no interface endpoints
    network_mode: NetworkMode = "ha"
    #: alert subscriptions, deletion protection, conflict alarm threshold (not serialized: see :class:`Operations`)
    operations: Operations = field(default_factory=Operations)

    # -- lookups -------------------------------------------------------------------------------------
    @property
    def global_zone(self) -> Zone:
        """The zone that covers every region: an explicit one if the stack has it, else the implicit one."""
        for zone in self.zones:
            if set(zone.regions) == set(self.regions):
                return zone
        raise AssertionError("a validated topology always has an all-regions zone")

    def zone(self, name: str) -> Zone:
        for zone in self.zones:
            if zone.name == name:
                return zone
        raise KeyError(name)

    def zones_of(self, region: str) -> tuple[Zone, ...]:
        return tuple(z for z in self.zones if region in z.regions)

    def table(self, name: str) -> TableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def table_zones(self, spec: TableSpec) -> tuple[Zone, ...]:
        """The zones that hold a copy of ``spec``: every zone, or only the all-regions zone."""
        return (self.global_zone,) if spec.scope == "global" else self.zones

    def table_name(self, table: str, zone: str) -> str:
        """The physical DynamoDB name of ``table`` in ``zone``, e.g. ``meridian-prod-eu-users``."""
        spec = self.table(table)
        if spec.scope == "global":
            return f"{self.project}-{self.stack}-{spec.name}"
        return f"{self.project}-{self.stack}-{zone}-{spec.name}"

    def tables_in_region(self, region: str) -> dict[str, dict[str, str]]:
        """``{zone: {table: physical name}}`` for every table that has a replica in ``region``."""
        out: dict[str, dict[str, str]] = {}
        for spec in self.tables:
            for zone in self.table_zones(spec):
                if region in zone.regions:
                    out.setdefault(zone.name, {})[spec.name] = self.table_name(spec.name, zone.name)
        return out

    def home_region(self, zone: Zone) -> str:
        """The region whose provider declares a zone's global tables; the others are its replicas.

        Pinned by ``meridian:homeRegions``; by default the zone's alphabetically first region. Never the
        list order: reordering ``meridian:regions`` must not move (replace) a protected table.
        """
        return self.home_regions.get(zone.name) or default_home_region(zone.regions)

    @property
    def secret_region(self) -> str:
        """Where the session-key secret lives (``meridian:primaryRegion``, else the global zone's home)."""
        return self.primary_region or self.home_region(self.global_zone)

    def mechanism(self, spec: TableSpec, zone: Zone) -> Mechanism | None:
        """How ``spec`` is strong in ``zone``: ``mrsc`` where the zone's regions (and the table's witness)
        form a valid MRSC set, else ``owner``; None for an eventually consistent table."""
        if spec.consistency != "strong":
            return None
        if spec.strong_mode == "mrsc":
            return "mrsc"
        return "mrsc" if mrsc_problem(spec, zone) is None else "owner"

    def replica_order(self, zone: Zone) -> tuple[str, ...]:
        """The zone's regions, its home region first."""
        home = self.home_region(zone)
        return (home, *[r for r in zone.regions if r != home])

    # -- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What the service and the Lambdas read (``MERIDIAN_TOPOLOGY``): everything but ``release``, whose
        pins differ per region and would otherwise change every region's task definition at once."""
        plain: dict[str, Any] = _to_plain(self)
        plain.pop("release", None)
        plain.pop("operations", None)
        return plain

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        try:
            return _topology_from_plain(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise TopologyError(f"serialized topology is malformed ({exc}); regenerate it from the stack") from None

    @classmethod
    def from_json(cls, text: str) -> Topology:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TopologyError(f"serialized topology is not JSON ({exc.msg}); regenerate it from the stack") from None
        return cls.from_dict(data)


def _to_plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _key(data: Mapping[str, Any] | None) -> KeyAttribute | None:
    return None if data is None else KeyAttribute(name=data["name"], type=data["type"])


def _topology_from_plain(data: Mapping[str, Any]) -> Topology:
    tables = tuple(
        TableSpec(
            name=t["name"],
            hash_key=KeyAttribute(**t["hash_key"]),
            range_key=_key(t["range_key"]),
            indexes=tuple(
                Index(name=i["name"], hash_key=KeyAttribute(**i["hash_key"]), range_key=_key(i["range_key"]))
                for i in t["indexes"]
            ),
            ttl_attribute=t["ttl_attribute"],
            stream=t["stream"],
            scope=t["scope"],
            consistency=t["consistency"],
            witness_region=t["witness_region"],
            strong_mode=t.get("strong_mode", "mrsc"),
        )
        for t in data["tables"]
    )
    return Topology(
        project=data["project"],
        stack=data["stack"],
        regions=tuple(data["regions"]),
        zones=tuple(Zone(name=z["name"], regions=tuple(z["regions"]), implicit=z["implicit"]) for z in data["zones"]),
        tables=tables,
        domain=data["domain"],
        hosted_zone_id=data["hosted_zone_id"],
        sizing=Sizing(**data["sizing"]),
        routing=Routing(**{**data["routing"], "traffic_dials": dict(data["routing"]["traffic_dials"])}),
        home_regions=dict(data.get("home_regions", {})),
        primary_region=data.get("primary_region", ""),
        network_mode=data.get("network_mode", "ha"),
    )


def default_home_region(regions: tuple[str, ...] | list[str]) -> str:
    """Deterministic and independent of list order: the alphabetically first region."""
    return min(regions)


# ---------------------------------------------------------------------------------------------------
# Loading from stack config
# ---------------------------------------------------------------------------------------------------

#: Every key Meridian reads under the ``meridian:`` namespace, with its Python type, default and meaning.
#: ``Pulumi.yaml`` repeats these as typed project config; a test keeps the two in step.
CONFIG_KEYS: dict[str, tuple[str, Any, str]] = {
    "regions": ("array", None, "AWS regions that serve traffic, nearest-first is not implied (at least 2)."),
    "residencyZones": ("object", {}, "Residency zones: zone name -> list of regions that may store its data."),
    "domain": ("string", "api.meridian.example.com", "Public API name; each region also gets <region>.<domain>."),
    "hostedZoneId": ("string", "", "Existing Route 53 public zone for the domain; empty creates one."),
    "image": ("string", Sizing.image, "Prebuilt service image to deploy; empty builds services/Dockerfile into ECR."),
    "serviceCpu": ("integer", Sizing.cpu, "Fargate task CPU units."),
    "serviceMemory": ("integer", Sizing.memory, "Fargate task memory (MiB)."),
    "desiredCount": ("integer", Sizing.desired_count, "Tasks per region at deploy time."),
    "minCount": ("integer", Sizing.min_count, "Autoscaling floor per region."),
    "maxCount": ("integer", Sizing.max_count, "Autoscaling ceiling per region."),
    "containerPort": ("integer", Sizing.container_port, "Port the service listens on inside the task."),
    "logRetentionDays": ("integer", Sizing.log_retention_days, "CloudWatch Logs retention of the service logs."),
    "healthCheckInterval": ("integer", Routing.health_check_interval, "Route 53 / Global Accelerator check interval (10 or 30 s)."),
    "failureThreshold": ("integer", Routing.failure_threshold, "Consecutive failed checks before a region is unhealthy (1-10)."),
    "dnsTtl": ("integer", Routing.dns_ttl, "TTL of non-alias records (alias records use the target's TTL)."),
    "globalAccelerator": ("boolean", Routing.global_accelerator, "Declare a Global Accelerator in front of the regions."),
    "trafficDials": ("object", {}, "Global Accelerator traffic dial per region, 0-100 (default 100)."),
    "tables": ("object", {}, "Per-table overrides: {table: {consistency: eventual|strong, witnessRegion: region}}."),
    "homeRegions": ("object", {}, "Zone -> region that declares its global tables (default: the zone's alphabetically first region)."),
    "primaryRegion": ("string", "", "Region of the session-key secret (default: the home region of the all-regions zone)."),
    "networkMode": ("string", "ha", "ha: a NAT gateway and interface endpoints per AZ; lean: one NAT gateway per region, no interface endpoints."),
    "deploymentStrategy": ("string", Release.strategy, "ECS deployment strategy in each region: ROLLING, BLUE_GREEN, CANARY or LINEAR."),
    "bakeMinutes": ("integer", Release.bake_minutes, "Minutes a release bakes in a wave, its alarms OK, before the next wave (0-1440)."),
    "canaryRegion": ("string", "", "Region that receives a release first (default: the least loaded region)."),
    "release": ("object", {}, "Region -> the image it runs, pinned by digest (REPO@sha256:...); unpinned regions run the built image."),
    "alertEmails": ("array", [], "E-mail addresses subscribed to every region's alarm topic."),
    "alertHttpsEndpoints": ("array", [], "HTTPS endpoints (https://...) subscribed to every region's alarm topic."),
    "deletionProtection": ("boolean", Operations.deletion_protection, "false only for a teardown: tables lose deletion protection and Pulumi protect."),
    "conflictsPerMinute": ("integer", Operations.conflicts_per_minute, "Conflicts per minute in a region that, 5 minutes in a row, fire its conflict alarm."),
    "faultInjection": ("boolean", True, "AWS FIS role and experiment templates for `meridian gameday --target aws` (false for a stack on an emulator)."),
    "keyRotationDays": ("integer", Operations.key_rotation_days, "Days between scheduled rotations of the signing keys (0: off; else 2 to 365)."),
}

_TABLE_OVERRIDE_KEYS = {"consistency", "witnessRegion"}
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def load_topology(config: Mapping[str, Any], *, project: str = "meridian", stack: str = "dev") -> Topology:
    """Build and validate a topology from ``meridian:`` config values (keys without the namespace).

    Raises :class:`TopologyError` with a one-line message for anything that could not be deployed.
    """
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TopologyError(f"unknown config key meridian:{unknown[0]}; known keys: {', '.join(sorted(CONFIG_KEYS))}")
    get = {k: (config[k] if k in config and config[k] is not None else default) for k, (_, default, _) in CONFIG_KEYS.items()}

    regions = _regions(get["regions"])
    zones = _zones(get["residencyZones"], regions)
    routing = Routing(
        health_check_interval=_int(get, "healthCheckInterval"),
        failure_threshold=_int(get, "failureThreshold"),
        dns_ttl=_int(get, "dnsTtl"),
        global_accelerator=_bool(get, "globalAccelerator"),
        traffic_dials=_dials(get["trafficDials"], regions),
    )
    if routing.health_check_interval not in (10, 30):
        raise TopologyError(
            f"meridian:healthCheckInterval is {routing.health_check_interval}; Route 53 and Global Accelerator accept 10 or 30"
        )
    if not 1 <= routing.failure_threshold <= 10:
        raise TopologyError(f"meridian:failureThreshold is {routing.failure_threshold}; Route 53 accepts 1 to 10")
    if routing.dns_ttl < 0:
        raise TopologyError("meridian:dnsTtl must be 0 or more seconds")
    sizing = Sizing(
        image=_str(get, "image"),
        cpu=_int(get, "serviceCpu"),
        memory=_int(get, "serviceMemory"),
        desired_count=_int(get, "desiredCount"),
        min_count=_int(get, "minCount"),
        max_count=_int(get, "maxCount"),
        container_port=_int(get, "containerPort"),
        log_retention_days=_int(get, "logRetentionDays"),
    )
    if not 1 <= sizing.min_count <= sizing.desired_count <= sizing.max_count:
        raise TopologyError("need 1 <= meridian:minCount <= meridian:desiredCount <= meridian:maxCount")
    domain = _str(get, "domain").rstrip(".").lower()
    if not re.fullmatch(r"([a-z0-9-]+\.)+[a-z]{2,}", domain):
        raise TopologyError(f"meridian:domain {domain!r} is not a DNS name like api.example.com")
    tables = _tables(get["tables"], zones)
    if not _NAME.match(stack):
        raise TopologyError(f"stack name {stack!r} must be lowercase letters, digits and dashes (it names tables)")
    home_regions = _home_regions(get["homeRegions"], zones)
    primary = _str(get, "primaryRegion")
    if primary and primary not in regions:
        raise TopologyError(f"meridian:primaryRegion is {primary!r}, which is not in meridian:regions")
    release = _release(get, regions)
    operations = _operations(get)
    network_mode = _str(get, "networkMode")
    if network_mode not in NETWORK_MODES:
        raise TopologyError(f"meridian:networkMode is {network_mode!r}; use {' or '.join(NETWORK_MODES)}")
    return Topology(
        project=project,
        stack=stack,
        regions=regions,
        zones=zones,
        tables=tables,
        domain=domain,
        hosted_zone_id=_str(get, "hostedZoneId") or None,
        sizing=sizing,
        routing=routing,
        home_regions=home_regions,
        primary_region=primary,
        network_mode=network_mode,
        release=release,
        operations=operations,
    )


def _operations(get: Mapping[str, Any]) -> Operations:
    """``meridian:alertEmails``, ``alertHttpsEndpoints``, ``deletionProtection`` and ``conflictsPerMinute``."""
    lists: dict[str, tuple[str, ...]] = {}
    for key, pattern, example in (("alertEmails", r"[^@\s]+@[^@\s]+\.[^@\s]+", "oncall@example.com"),
                                  ("alertHttpsEndpoints", r"https://\S+", "https://events.example.com/hook")):
        value = get[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(pattern, v) for v in value):
            raise TopologyError(f"meridian:{key} must be a list like [{example}], got {value!r}")
        if len(set(value)) != len(value):
            raise TopologyError(f"meridian:{key} lists an address more than once")
        lists[key] = tuple(value)
    conflicts = _int(get, "conflictsPerMinute")
    if conflicts < 1:
        raise TopologyError(f"meridian:conflictsPerMinute is {conflicts}; use 1 or more")
    rotation_days = _key_rotation_days(get)
    return Operations(alert_emails=lists["alertEmails"], alert_https_endpoints=lists["alertHttpsEndpoints"],
                      deletion_protection=_bool(get, "deletionProtection"), conflicts_per_minute=conflicts,
                      key_rotation_days=rotation_days)


def _key_rotation_days(get: Mapping[str, Any]) -> int:
    """``meridian:keyRotationDays``: 0 (off) or at least two token lifetimes (meridian.rotation)."""
    from meridian.rotation import LONGEST_TOKEN_TTL, MAX_ROTATION_DAYS, MIN_ROTATION_DAYS

    days = _int(get, "keyRotationDays")
    if days != 0 and not MIN_ROTATION_DAYS <= days <= MAX_ROTATION_DAYS:
        raise TopologyError(
            f"meridian:keyRotationDays is {days}; use 0 (no scheduled rotation) or {MIN_ROTATION_DAYS} to {MAX_ROTATION_DAYS}: "
            f"a rotation drops the key before the current one, which must outlive every token it signed ({LONGEST_TOKEN_TTL // 3600} h)"
        )
    return days


def _release(get: Mapping[str, Any], regions: tuple[str, ...]) -> Release:
    """``meridian:deploymentStrategy``, ``bakeMinutes``, ``canaryRegion`` and ``release`` (the pins)."""
    from meridian.releases import MAX_BAKE_MINUTES, STRATEGIES, reference_problem

    strategy = _str(get, "deploymentStrategy").strip().upper()
    if strategy not in STRATEGIES:
        raise TopologyError(f"meridian:deploymentStrategy is {get['deploymentStrategy']!r}; use {', '.join(STRATEGIES)}")
    bake = _int(get, "bakeMinutes")
    if not 0 <= bake <= MAX_BAKE_MINUTES:
        raise TopologyError(f"meridian:bakeMinutes is {bake}; ECS takes bake times of 0 to {MAX_BAKE_MINUTES} minutes")
    canary = _str(get, "canaryRegion")
    if canary and canary not in regions:
        raise TopologyError(f"meridian:canaryRegion is {canary!r}, which is not in meridian:regions")
    pins = get["release"]
    if not isinstance(pins, Mapping):
        raise TopologyError("meridian:release must be a map of region -> image reference by digest (REPO@sha256:...)")
    for region, reference in pins.items():
        if region not in regions:
            raise TopologyError(f"meridian:release pins region {region!r}, which is not in meridian:regions")
        problem = reference_problem(reference)
        if problem:
            raise TopologyError(f"meridian:release.{region}: {problem}")
    return Release(strategy=strategy, bake_minutes=bake, canary_region=canary, pins=dict(pins))


def _home_regions(value: Any, zones: tuple[Zone, ...]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TopologyError("meridian:homeRegions must be a map of zone name -> region")
    names = {z.name: z for z in zones}
    out: dict[str, str] = {}
    for zone_name, region in value.items():
        if zone_name not in names:
            raise TopologyError(f"meridian:homeRegions names zone {zone_name!r}; the stack's zones are {', '.join(names)}")
        if region not in names[zone_name].regions:
            raise TopologyError(f"meridian:homeRegions.{zone_name} is {region!r}, which is not one of that zone's regions")
        out[zone_name] = region
    return out


def _regions(value: Any) -> tuple[str, ...]:
    if value is None:
        raise TopologyError("meridian:regions is not set; list at least 2 AWS regions, e.g. [us-east-1, eu-west-1]")
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise TopologyError("meridian:regions must be a list of AWS region names")
    dupes = sorted({r for r in value if value.count(r) > 1})
    if dupes:
        raise TopologyError(f"meridian:regions lists {dupes[0]} more than once")
    unknown = [r for r in value if r not in known_regions()]
    if unknown:
        raise TopologyError(f"meridian:regions: {unknown[0]!r} is not an AWS region botocore knows (e.g. us-east-1)")
    if len(value) < 2:
        raise TopologyError(f"meridian:regions has {len(value)} region; active-active needs at least 2")
    return tuple(value)


def _zones(value: Any, regions: tuple[str, ...]) -> tuple[Zone, ...]:
    if not isinstance(value, Mapping):
        raise TopologyError("meridian:residencyZones must be a map of zone name -> list of regions")
    zones: list[Zone] = []
    for name, members in value.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise TopologyError(f"residency zone name {name!r} must be lowercase letters, digits and dashes")
        if not isinstance(members, list) or not members or not all(isinstance(r, str) for r in members):
            raise TopologyError(f"residency zone {name!r} must list at least one region")
        for region in members:
            if region not in regions:
                raise TopologyError(
                    f"residency zone {name!r} names region {region!r}, which is not in meridian:regions"
                )
        if len(set(members)) != len(members):
            raise TopologyError(f"residency zone {name!r} lists a region more than once")
        zones.append(Zone(name=name, regions=tuple(members)))
    if not any(set(z.regions) == set(regions) for z in zones):
        if GLOBAL_ZONE in value:
            raise TopologyError(f"zone {GLOBAL_ZONE!r} is reserved for the all-regions zone; it must list every region")
        zones.append(Zone(name=GLOBAL_ZONE, regions=regions, implicit=True))
    return tuple(zones)


def _dials(value: Any, regions: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TopologyError("meridian:trafficDials must be a map of region -> percentage")
    dials: dict[str, int] = {}
    for region, dial in value.items():
        if region not in regions:
            raise TopologyError(f"meridian:trafficDials names {region!r}, which is not in meridian:regions")
        if isinstance(dial, bool) or not isinstance(dial, int) or not 0 <= dial <= 100:
            raise TopologyError(f"meridian:trafficDials[{region}] is {dial!r}; a dial is a whole number 0..100")
        dials[region] = dial
    return dials


def _tables(value: Any, zones: tuple[Zone, ...]) -> tuple[TableSpec, ...]:
    if not isinstance(value, Mapping):
        raise TopologyError("meridian:tables must be a map of table name -> overrides")
    by_name = {t.name: t for t in DEFAULT_TABLES}
    for name, override in value.items():
        if name not in by_name:
            raise TopologyError(f"meridian:tables names {name!r}; the service's tables are {', '.join(by_name)}")
        if not isinstance(override, Mapping) or set(override) - _TABLE_OVERRIDE_KEYS:
            raise TopologyError(f"meridian:tables.{name} takes only {sorted(_TABLE_OVERRIDE_KEYS)}")
        consistency = override.get("consistency", "eventual")
        if consistency not in ("eventual", "strong"):
            raise TopologyError(f"meridian:tables.{name}.consistency is {consistency!r}; use eventual or strong")
        witness = override.get("witnessRegion")
        # A stack that names a table strong asks for MRSC itself: refused where it cannot be. The service's
        # strong keys (strong_mode auto) keep their mode; a witness makes MRSC possible for a 2-region zone.
        mode = by_name[name].strong_mode if consistency == "strong" and by_name[name].strong_mode == "auto" and not witness else "mrsc"
        by_name[name] = replace(by_name[name], consistency=consistency, witness_region=witness,
                                strong_mode=mode if consistency == "strong" else "mrsc")
    all_regions = max(zones, key=lambda z: len(z.regions))
    for spec in by_name.values():
        if spec.consistency == "strong" and spec.strong_mode == "mrsc":
            for zone in (all_regions,) if spec.scope == "global" else zones:
                _check_mrsc(spec, zone)
        elif spec.witness_region:
            raise TopologyError(f"meridian:tables.{spec.name}: a witness region needs consistency: strong")
    return tuple(by_name.values())


def mrsc_problem(spec: TableSpec, zone: Zone) -> str | None:
    """Why ``spec`` cannot be an MRSC global table over ``zone`` (AWS's rules), or None if it can."""
    where = f"table {spec.name!r} in zone {zone.name!r}"
    if spec.ttl_attribute:
        return f"{where}: strong consistency does not support TTL, which this table needs"
    count, witness = len(zone.regions), spec.witness_region
    if witness is not None and (witness in zone.regions or witness not in known_regions()):
        return f"{where}: witness {witness!r} must be an AWS region that holds no replica of the table"
    if not ((count == 3 and witness is None) or (count == 2 and witness is not None)):
        has = f"{count} region(s)" + (" and a witness" if witness else "")
        return f"{where}: strong consistency needs exactly 3 replicas, or 2 plus a witness; the zone has {has}"
    members = set(zone.regions) | ({witness} if witness else set())
    if not any(members <= s for s in MRSC_REGION_SETS.values()):
        sets = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in MRSC_REGION_SETS.items())
        return f"{where}: strong consistency needs all replicas in one MRSC region set ({sets})"
    return None


def _check_mrsc(spec: TableSpec, zone: Zone) -> None:
    problem = mrsc_problem(spec, zone)
    if problem is not None:
        raise TopologyError(problem)


def _int(get: Mapping[str, Any], key: str) -> int:
    value = get[key]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # `pulumi config set` stores scalars as strings
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"meridian:{key} must be a whole number, got {value!r}")
    return value


def _bool(get: Mapping[str, Any], key: str) -> bool:
    value = get[key]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise TopologyError(f"meridian:{key} must be true or false, got {value!r}")
    return value


def _str(get: Mapping[str, Any], key: str) -> str:
    value = get[key]
    if not isinstance(value, str):
        raise TopologyError(f"meridian:{key} must be a string, got {value!r}")
    return value


def topology_from_cli_config(
    values: Mapping[str, str], *, project: str, stack: str, secret_keys: frozenset[str] = frozenset()
) -> Topology:
    """A topology from ``meridian:`` config as the Pulumi CLI hands it (every value a string), each key
    read by its declared type. ``infra/__main__.py`` does the same through ``pulumi.Config``'s typed getters."""
    from meridian.stackfile import StackConfigError, typed

    config: dict[str, Any] = {}
    for key, raw in values.items():
        if f"{CONFIG_NAMESPACE}:{key}" in secret_keys:
            raise TopologyError(f"meridian:{key} is a secret; Meridian reads no secret config")
        if key not in CONFIG_KEYS:
            config[key] = raw  # refused by load_topology with the list of known keys
            continue
        try:
            config[key] = typed(f"meridian:{key}", CONFIG_KEYS[key][0], raw)
        except StackConfigError as exc:
            raise TopologyError(str(exc)) from None
    return load_topology(config, project=project, stack=stack)


def load_stack_file(path: str | Path, *, project_file: str | Path | None = None) -> Topology:
    """Load a ``Pulumi.<stack>.yaml`` without the Pulumi CLI, as ``pulumi up`` would hand its config."""
    from meridian.stackfile import StackConfigError, read_stack

    try:
        config = read_stack(path, project_file=project_file)
    except StackConfigError as exc:
        raise TopologyError(str(exc)) from None
    return topology_from_cli_config(
        config.namespace(CONFIG_NAMESPACE), project=config.project, stack=config.stack, secret_keys=config.secret_keys
    )


def find_stack_file(stack: str, root: str | Path = ".") -> Path:
    """``--stack NAME`` means ``Pulumi.NAME.yaml`` next to ``Pulumi.yaml``."""
    for suffix in ("yaml", "yml"):
        candidate = Path(root) / f"Pulumi.{stack}.{suffix}"
        if candidate.is_file():
            return candidate
    raise TopologyError(f"no stack file Pulumi.{stack}.yaml in {Path(root).resolve()}; create it or pass --config PATH")

"""DynamoDB global tables: for each residency zone, each table the service needs, with replicas only in
that zone's regions. The table is declared in the zone's first region; its ``replicas`` argument names
the others (never also separate TableReplica resources)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from meridian.topology import TableSpec, Topology, Zone

STREAM_VIEW = "NEW_AND_OLD_IMAGES"


@dataclass(frozen=True, kw_only=True)
class GlobalTablesArgs:
    topology: Topology
    providers: Mapping[str, aws.Provider]

    def __post_init__(self) -> None:
        missing = [r for r in self.topology.regions if r not in self.providers]
        if missing:
            raise ValueError(f"no provider for region(s) {missing}")


class GlobalTables(pulumi.ComponentResource):
    #: (zone, table) -> the Table resource (declared in the zone's home region)
    tables: dict[tuple[str, str], aws.dynamodb.Table]

    def __init__(self, name: str, args: GlobalTablesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:data:GlobalTables", name, None, opts)
        self._topology = args.topology
        self.tables = {}
        for spec in args.topology.tables:
            for zone in args.topology.table_zones(spec):
                home = args.topology.home_region(zone)
                self.tables[(zone.name, spec.name)] = self._table(name, spec, zone, args.providers[home])
        self.register_outputs({"table_names": {f"{z}/{t}": tbl.name for (z, t), tbl in self.tables.items()}})

    def _table(self, name: str, spec: TableSpec, zone: Zone, provider: aws.Provider) -> aws.dynamodb.Table:
        topology = self._topology
        physical = topology.table_name(spec.name, zone.name)
        strong = topology.mechanism(spec, zone) == "mrsc"
        replicas = [
            aws.dynamodb.TableReplicaArgs(
                region_name=region,
                point_in_time_recovery=True,
                propagate_tags=True,
                deletion_protection_enabled=topology.operations.deletion_protection,
                consistency_mode="STRONG" if strong else "EVENTUAL",
            )
            for region in topology.replica_order(zone)[1:]
        ]
        return aws.dynamodb.Table(
            f"{name}-{zone.name}-{spec.name}",
            name=physical,
            billing_mode="PAY_PER_REQUEST",
            hash_key=spec.hash_key.name,
            range_key=spec.range_key.name if spec.range_key else None,
            attributes=[aws.dynamodb.TableAttributeArgs(name=a.name, type=a.type) for a in spec.key_attributes()],
            global_secondary_indexes=[
                aws.dynamodb.TableGlobalSecondaryIndexArgs(
                    name=index.name,
                    key_schemas=[
                        aws.dynamodb.TableGlobalSecondaryIndexKeySchemaArgs(attribute_name=a.name, key_type=kind)
                        for a, kind in ((index.hash_key, "HASH"), (index.range_key, "RANGE"))
                        if a is not None
                    ],
                    projection_type="ALL",
                )
                for index in spec.indexes
            ]
            or None,
            stream_enabled=True,
            stream_view_type=STREAM_VIEW,
            point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=True),
            deletion_protection_enabled=topology.operations.deletion_protection,
            # AWS-managed KMS key: a customer-managed key would need one key per replica region.
            server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
            ttl=aws.dynamodb.TableTtlArgs(attribute_name=spec.ttl_attribute, enabled=True) if spec.ttl_attribute else None,
            replicas=replicas,
            global_table_witness=(
                aws.dynamodb.TableGlobalTableWitnessArgs(region_name=spec.witness_region) if strong and spec.witness_region else None
            ),
            tags={"meridian:zone": zone.name, "meridian:zone-regions": "+".join(zone.regions), "meridian:table": spec.name},
            # Replacing a table would drop its data: refuse it, and refuse deleting it by accident. Both come off
            # only with meridian:deletionProtection false, for a teardown (docs/runbooks/teardown.md).
            opts=pulumi.ResourceOptions(parent=self, provider=provider, protect=topology.operations.deletion_protection),
        )

    def stream_arn(self, zone: str, table: str, region: str) -> pulumi.Output[str]:
        """The stream ARN of ``table`` of ``zone`` as replicated in ``region``."""
        resource = self.tables[(zone, table)]
        if self._topology.home_region(self._topology.zone(zone)) == region:
            return resource.stream_arn
        return resource.replicas.apply(
            lambda replicas: next(r.stream_arn for r in replicas or [] if r.region_name == region) or ""
        )

    def streams_in_region(self, region: str) -> dict[str, pulumi.Output[str]]:
        """physical table name -> its stream ARN in ``region``, for every table with a replica there."""
        return {
            self._topology.table_name(table, zone): self.stream_arn(zone, table, region)
            for (zone, table) in self.tables
            if region in self._topology.zone(zone).regions
        }

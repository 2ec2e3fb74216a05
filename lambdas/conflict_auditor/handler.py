"""Consumes the DynamoDB stream of every zone table in its region and records overwritten concurrent
writes (AWS keeps no record of global-table LWW conflicts). Idempotent under redelivery: a conflict's
id is derived from the two versions, and the record is written only if absent."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from lambdas import runtime
from meridian.conflicts import observed_overwrite
from meridian.store import Store, from_item


def _table_of(arn: str) -> str:
    return arn.split(":table/", 1)[1].split("/", 1)[0]


@runtime.logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    topology, here = runtime.topology(), runtime.region()
    store = Store(client=runtime.client("dynamodb"), topology=topology, region=here)
    by_name = {topology.table_name(s.name, z.name): (s, z.name) for s in topology.tables for z in topology.table_zones(s)}
    failures, recorded = [], 0
    for record in event.get("Records", []):
        try:
            if record.get("eventName") != "MODIFY":
                continue
            table = _table_of(record["eventSourceARN"])
            if table not in by_name or by_name[table][0].name == "conflicts":
                continue
            spec, zone = by_name[table]
            data = record["dynamodb"]
            new, old = from_item(data.get("NewImage", {})), from_item(data.get("OldImage", {}))
            if new.get("origin_region") in (None, here):
                continue  # written here: a local overwrite is seen by the writer, not a replication conflict
            keys = from_item(data["Keys"])
            key = "#".join(str(keys[k]) for k in sorted(keys))
            conflict = observed_overwrite(spec.name, key, old, new, region=here)
            if conflict is not None and store.record_conflict(zone, conflict):
                recorded += 1
        except Exception:  # noqa: BLE001 - report this record for retry, keep the batch going
            runtime.logger.exception("record failed", extra={"sequence": record.get("dynamodb", {}).get("SequenceNumber")})
            failures.append({"itemIdentifier": record.get("dynamodb", {}).get("SequenceNumber")})
    if recorded:
        with single_metric(name="Conflicts", unit=MetricUnit.Count, value=recorded, namespace="Meridian/Replication") as m:
            m.add_dimension(name="Region", value=here)
    return {"batchItemFailures": failures}

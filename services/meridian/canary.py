"""Replication canary: heartbeats written into every zone table a region holds, read back elsewhere.

Each run writes one heartbeat item per table (``<hash key> = __meridian_heartbeat__#<region>``) and reads
the other regions' heartbeats from the local replica. For each (source, table): staleness = now minus
the heartbeat's write time; lag = the same, reported only the first time a newer heartbeat is seen
(an upper bound of the replication delay, since the reader runs on its own schedule).
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from meridian.hlc import HLC, Version
from meridian.store import from_item, to_item
from meridian.topology import Topology

HEARTBEAT_PREFIX = "__meridian_heartbeat__#"
RANGE_VALUE = "__heartbeat__"


@dataclass(frozen=True)
class Observation:
    table: str
    source: str
    receiver: str
    staleness_s: float
    lag_s: float | None


def heartbeat_key(topology: Topology, table_logical: str, source: str) -> dict[str, Any]:
    spec = topology.table(table_logical)
    key = {spec.hash_key.name: f"{HEARTBEAT_PREFIX}{source}"}
    if spec.range_key:
        key[spec.range_key.name] = RANGE_VALUE
    return key


def beat(client: Any, topology: Topology, region: str, *, clock: HLC | None = None,
         seen: MutableMapping[tuple[str, str], int] | None = None, now_ms: int | None = None) -> list[Observation]:
    """Write this region's heartbeats, read the others'; ``seen`` carries last-seen write times between runs."""
    clock = clock or HLC()
    seen = {} if seen is None else seen
    observations: list[Observation] = []
    for zone, tables in topology.tables_in_region(region).items():
        peers = [r for r in topology.zone(zone).regions if r != region]
        for logical, physical in sorted(tables.items()):
            if logical == "directory" and zone != topology.global_zone.name:
                continue
            written = now_ms if now_ms is not None else int(time.time() * 1000)
            item = {**heartbeat_key(topology, logical, region), "origin_region": region, "written_at": written,
                    "version": Version(clock.now(), region).encode()}
            client.put_item(TableName=physical, Item=to_item(item))
            for peer in peers:
                found = client.get_item(TableName=physical, Key=to_item(heartbeat_key(topology, logical, peer))).get("Item")
                now = now_ms if now_ms is not None else int(time.time() * 1000)
                if not found:
                    continue
                at = int(from_item(found)["written_at"])
                newer = seen.get((physical, peer), -1) < at
                seen[(physical, peer)] = at
                observations.append(Observation(physical, peer, region, (now - at) / 1000, (now - at) / 1000 if newer else None))
    return observations

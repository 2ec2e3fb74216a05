"""The one place that reads the environment. The ECS task definition (and the local run) set these."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from meridian.topology import Topology, TopologyError

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    region: str
    topology: Topology
    session_key: bytes
    peer_key: bytes
    peers: Mapping[str, str] = field(default_factory=dict)  # region -> base URL
    probe_interval: float = 10.0  # seconds between probes of peers' /health/ready (0: no probing)
    forward_timeout: float = 2.0

    def peer_url(self, region: str) -> str:
        return self.peers[region]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        missing = [k for k in ("MERIDIAN_REGION", "MERIDIAN_TOPOLOGY", "MERIDIAN_SESSION_KEY", "MERIDIAN_PEER_KEY") if not env.get(k)]
        if missing:
            raise TopologyError(f"environment lacks {', '.join(missing)}; the ECS task definition (or meridian up --local) sets them")
        topology = Topology.from_json(env["MERIDIAN_TOPOLOGY"])
        region = env["MERIDIAN_REGION"]
        if region not in topology.regions:
            raise TopologyError(f"MERIDIAN_REGION {region} is not one of the topology's regions")
        template = env.get("MERIDIAN_PEER_URL_TEMPLATE", f"https://{{region}}.{topology.domain}")
        peers = {r: template.format(region=r) for r in topology.regions}
        if env.get("MERIDIAN_PEERS"):
            peers.update(json.loads(env["MERIDIAN_PEERS"]))
        return cls(
            region=region,
            topology=topology,
            session_key=env["MERIDIAN_SESSION_KEY"].encode(),
            peer_key=env["MERIDIAN_PEER_KEY"].encode(),
            peers=peers,
            probe_interval=float(env.get("MERIDIAN_PROBE_INTERVAL", topology.routing.health_check_interval)),
            forward_timeout=float(env.get("MERIDIAN_FORWARD_TIMEOUT", "2.0")),
        )

"""The one place that reads the environment. The ECS task definition (and the local run) set these."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from meridian.auth import OidcIssuer
from meridian.keys import KeyRing, KeyRingError
from meridian.topology import Topology, TopologyError

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    region: str
    topology: Topology
    session_key: KeyRing  # read-your-writes session tokens
    peer_key: KeyRing  # region-to-region signatures
    user_key: KeyRing  # built-in user bearer tokens (JWT HS256)
    operator_key: KeyRing  # the operator credential(s)
    claim_key: bytes  # keys the email claims' hashes (meridian.strong); never rotated: claims are keyed by it
    oidc: OidcIssuer | None = None  # an external identity provider for user tokens (meridian.auth)
    builtin_tokens: bool = True
    #: False where the storage cannot give MRSC (the local run's emulated replication): strong tables then
    #: use one owner region per key everywhere, which the local run can keep truthfully.
    mrsc: bool = True
    peers: Mapping[str, str] = field(default_factory=dict)  # region -> base URL
    probe_interval: float = 10.0  # seconds between probes of peers' /health/ready (0: no probing)
    forward_timeout: float = 2.0
    #: REHEARSAL FAULT (MERIDIAN_FAULT_5XX): the share of requests this process answers 500 on purpose, so that
    #: a bad release can be rehearsed on the local run (`meridian rollout --local --inject-fault`). 0 everywhere else.
    fault_5xx: float = 0.0

    def peer_url(self, region: str) -> str:
        return self.peers[region]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        required = ("MERIDIAN_REGION", "MERIDIAN_TOPOLOGY", "MERIDIAN_SESSION_KEY", "MERIDIAN_PEER_KEY", "MERIDIAN_USER_KEY",
                    "MERIDIAN_OPERATOR_KEY", "MERIDIAN_CLAIM_KEY")
        missing = [k for k in required if not env.get(k)]
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
        def ring(name: str) -> KeyRing:
            try:
                return KeyRing.parse(env[name], name=name)
            except KeyRingError as exc:
                raise TopologyError(str(exc)) from None

        oidc = None
        if env.get("MERIDIAN_OIDC_ISSUER"):
            absent = [k for k in ("MERIDIAN_OIDC_JWKS_URL", "MERIDIAN_OIDC_AUDIENCE") if not env.get(k)]
            if absent:
                raise TopologyError(f"MERIDIAN_OIDC_ISSUER is set but {', '.join(absent)} is not; set both (see meridian.auth)")
            oidc = OidcIssuer(issuer=env["MERIDIAN_OIDC_ISSUER"], jwks_url=env["MERIDIAN_OIDC_JWKS_URL"],
                              audience=env["MERIDIAN_OIDC_AUDIENCE"], user_claim=env.get("MERIDIAN_OIDC_USER_CLAIM", "sub"))
        return cls(
            region=region,
            topology=topology,
            session_key=ring("MERIDIAN_SESSION_KEY"),
            peer_key=ring("MERIDIAN_PEER_KEY"),
            user_key=ring("MERIDIAN_USER_KEY"),
            operator_key=ring("MERIDIAN_OPERATOR_KEY"),
            claim_key=env["MERIDIAN_CLAIM_KEY"].encode(),
            mrsc=env.get("MERIDIAN_MRSC", "1") != "0",
            oidc=oidc,
            builtin_tokens=env.get("MERIDIAN_BUILTIN_TOKENS", "1") != "0",
            peers=peers,
            probe_interval=float(env.get("MERIDIAN_PROBE_INTERVAL", topology.routing.health_check_interval)),
            forward_timeout=float(env.get("MERIDIAN_FORWARD_TIMEOUT", "2.0")),
            fault_5xx=_share(env.get("MERIDIAN_FAULT_5XX", "0"), "MERIDIAN_FAULT_5XX"),
        )


def _share(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise TopologyError(f"{name} is {text!r}; a share of requests from 0 to 1")
    return value

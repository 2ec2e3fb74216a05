"""What every concern of a region needs to declare its resources: the component's name (children are
named from it), the component as their parent, the topology and region, and the account's identity.

The concerns (certificate, load balancer, service, functions, alarms) are functions that take a
:class:`Scope`, not components of their own: a component per concern would move every child under a new
parent, and a new parent is a new URN, which on a deployed stack means replacing each resource (or
carrying an alias for each). As functions they keep every URN the stacks already have.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi

from infra import layout
from meridian.topology import Topology


@dataclass(frozen=True, kw_only=True)
class Scope:
    name: str
    parent: pulumi.Resource
    topology: Topology
    region: str
    account: pulumi.Output[str]
    partition: pulumi.Output[str]

    @property
    def prefix(self) -> str:
        """The stack's physical-name prefix (``meridian-prod``)."""
        return layout.resource_prefix(self.topology)

    def opts(self, **options: Any) -> pulumi.ResourceOptions:
        """Options of a child: parented to the component (and so on its provider), plus ``options``."""
        return pulumi.ResourceOptions(parent=self.parent, **options)

    def account_policy(self, build: Callable[[str, str], dict[str, Any]]) -> pulumi.Output[str]:
        """A policy document built from this account's partition and id."""
        return pulumi.Output.all(self.partition, self.account).apply(lambda pa: json.dumps(build(pa[0], pa[1])))

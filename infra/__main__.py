"""Entry point of `pulumi up` / `pulumi preview` (and of `meridian plan`, the tests and the local run,
which run this file with the config the CLI would hand it): read the config, declare the stack, export."""

import pulumi

from infra.config import read_topology
from infra.program import define_stack
from meridian.topology import TopologyError

try:
    topology = read_topology()
except TopologyError as exc:
    # One line in `pulumi up`'s diagnostics, not a Python traceback.
    raise pulumi.RunError(f"meridian config: {exc}") from None

for name, value in define_stack(topology).items():
    pulumi.export(name, value)

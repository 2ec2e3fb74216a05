"""Entry point of `pulumi up` / `pulumi preview`: read the stack's config, declare the stack, export."""

import pulumi

from infra.program import define_stack
from meridian.topology import CONFIG_KEYS, CONFIG_NAMESPACE, TopologyError, load_topology

config = pulumi.Config(CONFIG_NAMESPACE)
values = {key: config.get_object(key) for key in CONFIG_KEYS}
try:
    topology = load_topology(
        {k: v for k, v in values.items() if v is not None},
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
    )
except TopologyError as exc:
    # One line in `pulumi up`'s diagnostics, not a Python traceback.
    raise pulumi.RunError(f"meridian config: {exc}") from None

for name, value in define_stack(topology).items():
    pulumi.export(name, value)

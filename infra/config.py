"""Read the stack's ``meridian:`` config the way the Pulumi CLI hands it: each key by its declared type.

The CLI passes every value as a string; ``pulumi.Config.get_int``/``get_bool`` parse scalars and
``get_object`` parses JSON, so ``get_object`` is used only for the keys declared ``array`` or ``object``
(on a plain string such as the domain it raises ``ConfigTypeError``: the bug that stopped ``pulumi preview``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi

from meridian.topology import CONFIG_KEYS, CONFIG_NAMESPACE, Topology, TopologyError, load_topology

_EXPECTED = {
    "string": "a string",
    "integer": "a whole number (type integer)",
    "boolean": "true or false (type boolean)",
    "array": "a YAML list (type array)",
    "object": "a YAML map (type object)",
}


def getters(config: pulumi.Config) -> dict[str, Callable[[str], Any]]:
    return {
        "string": config.get,
        "integer": config.get_int,
        "boolean": config.get_bool,
        "array": config.get_object,
        "object": config.get_object,
    }


def read_topology(config: pulumi.Config | None = None) -> Topology:
    """The validated topology of the running stack. Raises :class:`TopologyError` (one line)."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    read = getters(config)
    values: dict[str, Any] = {}
    for key, (kind, _, _) in CONFIG_KEYS.items():
        try:
            values[key] = read[kind](key)
        except pulumi.ConfigTypeError as exc:
            raise TopologyError(f"meridian:{key} must be {_EXPECTED[kind]}, got {exc.value!r}") from None
        if kind in ("array", "object") and values[key] is not None and not isinstance(values[key], list if kind == "array" else dict):
            raise TopologyError(f"meridian:{key} must be {_EXPECTED[kind]}, got {values[key]!r}")
    return load_topology(
        {k: v for k, v in values.items() if v is not None}, project=pulumi.get_project(), stack=pulumi.get_stack()
    )

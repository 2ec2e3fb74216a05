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


# -- the stack's `aws:` settings, passed on to every explicit provider ------------------------------------
#: Endpoint keys (pulumi-aws ``endpoints``) of every AWS API the program calls: its resources' services
#: and its data sources' (availability zones: ec2; caller identity: sts; ECR token: ecr; random
#: password: secretsmanager). tests/infra/test_localstack_stack.py derives the set from the rendered
#: plan and fails when a new service is missing here.
SERVICES = (
    "acm", "appautoscaling", "cloudwatch", "dynamodb", "ec2", "ecr", "ecs", "elbv2", "events", "fis",
    "globalaccelerator", "iam", "kms", "lambda", "logs", "route53", "secretsmanager", "sns", "sts",
)

#: The ``aws:`` keys LocalStack documents for Pulumi (and ``pulumilocal`` writes), by declared type.
#: Explicit providers do not inherit the stack's ``aws:`` config, so the program hands these on to each
#: of them; ``aws:region`` is never passed on (every provider has its own region).
FORWARDED_AWS_KEYS = {
    "endpoints": "array",
    "skipCredentialsValidation": "boolean",
    "skipRequestingAccountId": "boolean",
    "skipMetadataApiCheck": "boolean",
    "s3UsePathStyle": "boolean",
    "accessKey": "string",
    "secretKey": "string",
}


class ProviderConfigError(ValueError):
    """The stack's ``aws:`` settings would aim a provider partly at an emulator, partly at AWS (one line)."""


def read_provider_settings(config: pulumi.Config | None = None) -> dict[str, Any]:
    """Keyword arguments every explicit ``aws.Provider`` gets from the stack's ``aws:`` config.

    Empty for a stack without such settings (dev, prod: real AWS). With ``aws:endpoints``, every service
    in :data:`SERVICES` must have an endpoint, or that service's calls would leave for real AWS.
    """
    config = config or pulumi.Config("aws")
    read = getters(config)
    settings: dict[str, Any] = {}
    for key, kind in FORWARDED_AWS_KEYS.items():
        try:
            value = read[kind](key)
        except pulumi.ConfigTypeError as exc:
            raise ProviderConfigError(f"aws:{key} must be {_EXPECTED[kind]}, got {exc.value!r}") from None
        if value is not None:
            settings[key] = value
    if "endpoints" in settings:
        settings["endpoints"] = _endpoints(settings["endpoints"])
    return settings


def _endpoints(value: Any) -> dict[str, str]:
    """``aws:endpoints`` as LocalStack documents it (a list of service -> URL maps), merged into one map."""
    entries = value if isinstance(value, list) else [value]
    merged: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise ProviderConfigError(f"aws:endpoints must be a list of maps from service to URL, e.g. [{{dynamodb: http://localhost:4566}}]; got {value!r}")
        merged |= {("lambda" if k == "lambda_" else str(k)): v for k, v in entry.items()}
    missing = [s for s in SERVICES if not merged.get(s)]
    if missing:
        raise ProviderConfigError(
            f"aws:endpoints has no endpoint for {', '.join(missing)}: those calls would go to real AWS; "
            "add them (Pulumi.localstack.yaml lists every service the program uses)"
        )
    return merged


# -- meridian:faultInjection: the AWS FIS role and experiment templates of `meridian gameday --target aws` --
FAULT_INJECTION_KEY = "faultInjection"


def fault_injection_enabled(config: pulumi.Config | None = None, provider_settings: dict[str, Any] | None = None) -> bool:
    """``meridian:faultInjection``; by default on, except for a stack whose providers point at an emulator
    (``aws:endpoints``: LocalStack or moto offer no AWS FIS), as Global Accelerator is off there."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    try:
        value = config.get_bool(FAULT_INJECTION_KEY)
    except pulumi.ConfigTypeError as exc:
        # One line in `pulumi up`'s diagnostics (the program runs past read_topology's handler here).
        raise pulumi.RunError(f"meridian config: meridian:{FAULT_INJECTION_KEY} must be {_EXPECTED['boolean']}, got {exc.value!r}") from None
    if value is not None:
        return value
    settings = read_provider_settings() if provider_settings is None else provider_settings
    return "endpoints" not in settings

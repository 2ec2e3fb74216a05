"""CrossGuard pack: `pulumi preview --policy-pack policy/` runs the same rules as `meridian plan`.

The rules see what `meridian plan` gives them: plain dicts and lists in Pulumi's camelCase names, the
provider region of each resource, and the stack's regions. Two things differ in a real preview and are
adapted here:

- ``resource.props`` is a proxy that raises ``UnknownValueError`` on any value computed later (an ARN, an
  id), and a raised error makes the whole policy "can't run during preview". The proxy is unwrapped to plain
  values, unknown ones kept as Pulumi's sentinel strings, which the rules skip (``policy.rules._known``).
- the stack's regions (``meridian:regions``) come from the stack config the CLI hands the pack, or from the
  pack's own config (``--policy-pack-config``: ``{"region-complete": {"regions": [...]}}``); with neither,
  ``None`` lets region-completeness infer the regions from the resources, as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import EnforcementLevel, PolicyPack, ReportViolation, StackValidationArgs, StackValidationPolicy

from policy.rules import RULES, Res, Rule

REGIONS_KEY = "meridian:regions"


def plain(value: Any) -> Any:
    """``value`` without pulumi_policy's unknown-checking proxies: dicts, lists and scalars, unknowns as sentinels."""
    if isinstance(value, Mapping):
        target = _target(value)
        return {k: plain(target[k]) for k in target}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        target = _target(value)
        return [plain(target[i]) for i in range(len(target))]
    return value


def _target(proxy: Any) -> Any:
    """The object behind a pulumi_policy proxy (which answers ``proxy["__target"]``), or ``proxy`` itself."""
    if type(proxy).__name__ in ("_DictProxy", "_ListProxy"):
        return proxy["__target"]
    return proxy


def to_res(resource: Any) -> Res:
    provider = getattr(resource, "provider", None)
    provider_props = plain(provider.props or {}) if provider is not None else {}
    region = provider_props.get("region")
    return Res(
        type=resource.resource_type,
        name=resource.name,
        region=region if isinstance(region, str) else None,
        inputs=plain(resource.props or {}),
    )


def parse_regions(value: Any) -> list[str] | None:
    """A region list as stack config holds it (a JSON-encoded array, as the CLI hands every value) or as a list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, list) and value and all(isinstance(r, str) for r in value):
        return list(value)
    return None


def stack_regions(policy_config: Mapping[str, Any] | None = None) -> list[str] | None:
    """The stack's regions: the pack's config first, then the stack config the CLI passes (PULUMI_CONFIG)."""
    from_pack = parse_regions((policy_config or {}).get("regions"))
    if from_pack is not None:
        return from_pack
    try:
        import pulumi.runtime

        return parse_regions(pulumi.runtime.get_config(REGIONS_KEY))
    except Exception:  # no runtime config in this process: fall back to inferring regions
        return None


def policy(rule: Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [to_res(r) for r in args.resources]
        for violation in rule.check(resources, stack_regions(args.get_config())):
            report_violation(f"{violation.resource}: {violation.message}", None)

    return StackValidationPolicy(
        name=rule.name, description=rule.description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


if __name__ == "__main__":
    PolicyPack(name="meridian", enforcement_level=EnforcementLevel.MANDATORY, policies=[policy(rule) for rule in RULES])

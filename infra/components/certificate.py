"""One region's certificate: the latency name, the accelerator name and the region's own name, validated
through DNS in the stack's hosted zone.

ACM asks every region for the *same* validation record of a name the certificates share, so only the
first region declares those records; the others reuse their FQDNs (declaring them again fails with
"already exists" on a real `pulumi up`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components.scope import Scope


@dataclass(frozen=True)
class RegionCertificate:
    validation: aws.acm.CertificateValidation
    #: FQDNs of the validation records of the shared names, for the next regions
    shared_validation_fqdns: list[pulumi.Output[str]]


def certificate(
    scope: Scope,
    *,
    dns_provider: aws.Provider,
    hosted_zone_id: pulumi.Input[str],
    shared_validation_fqdns: Sequence[pulumi.Input[str]] | None,
) -> RegionCertificate:
    name, topology = scope.name, scope.topology
    names = layout.certificate_names(topology, scope.region)
    cert = aws.acm.Certificate(
        f"{name}-cert",
        domain_name=names[0],
        subject_alternative_names=names[1:],
        validation_method="DNS",
        opts=scope.opts(delete_before_replace=False),
    )

    def record_for(domain: str, suffix: str) -> pulumi.Output[str]:
        def pick(options: Sequence[Any], attr: str) -> str:
            return str(next(getattr(o, attr) for o in options if o.domain_name == domain))

        options = cert.domain_validation_options
        record = aws.route53.Record(
            f"{name}-cert-validation-{suffix}",
            zone_id=hosted_zone_id,
            name=options.apply(lambda o: pick(o, "resource_record_name")),
            type=options.apply(lambda o: pick(o, "resource_record_type")),
            records=[options.apply(lambda o: pick(o, "resource_record_value"))],
            # The only non-alias records the program declares: meridian:dnsTtl is their TTL.
            ttl=topology.routing.dns_ttl,
            opts=scope.opts(provider=dns_provider),
        )
        return record.fqdn

    own = [record_for(names[2], "region")]
    if shared_validation_fqdns is None:
        shared = [record_for(n, ["apex", "global"][i]) for i, n in enumerate(layout.shared_certificate_names(topology))]
    else:
        shared = [pulumi.Output.from_input(f) for f in shared_validation_fqdns]
    validation = aws.acm.CertificateValidation(
        f"{name}-cert", certificate_arn=cert.arn, validation_record_fqdns=[*shared, *own], opts=scope.opts()
    )
    return RegionCertificate(validation, shared)

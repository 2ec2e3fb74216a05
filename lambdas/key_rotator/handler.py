"""Rotates the stack's signing keys on the schedule ``meridian:keyRotationDays`` (EventBridge, in the primary
region): the code path of ``meridian keys rotate`` (``meridian.rotation``), over the secret in
``MERIDIAN_KEYS_SECRET_ARN``. Each region's service picks the new keys up within its refresh period.

Events: the scheduled event (any ``aws.events`` payload: the session, peer and user-token rings), or a manual
``{"rings": ["session", ...], "dry_run": true}``. A rotation refused because the current key is too young (an
operator rotated recently) is skipped and logged, not an error; any other failure raises, so that the
function's ``Errors`` metric fires the ``<prefix>-key-rotation-failed`` alarm. Key ids are logged, secrets
never.
"""

from __future__ import annotations

import os
from typing import Any

from lambdas import runtime
from meridian.rotation import ALL_SIGNING, KeyTooYoung, rotate_secret


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    secret = os.environ["MERIDIAN_KEYS_SECRET_ARN"]
    rings = event.get("rings") or list(ALL_SIGNING)
    dry_run = bool(event.get("dry_run", False))
    try:
        rotation = rotate_secret(runtime.client("secretsmanager"), secret, rings, dry_run=dry_run)
    except KeyTooYoung as exc:
        runtime.logger.warning("key rotation skipped", extra={"reason": str(exc)})
        return {"rotated": False, "reason": str(exc)}
    changes = [c.describe() for c in rotation.changes]
    runtime.logger.info("key rotation" + (" (dry run)" if dry_run else ""), extra={"changes": changes, "version_id": rotation.version_id})
    return {"rotated": not dry_run, "version_id": rotation.version_id, "changes": changes}

"""``emflow status``'s facts: versions, aliases, decisions and the last rollback."""

from __future__ import annotations

import json
from typing import Any

from emflow.config import Settings
from emflow.registry import aliases as registry
from emflow.registry.tracking import connect, missing_sqlite_store, with_retries


def status(settings: Settings) -> dict[str, Any]:
    """Versions (newest first) with their decisions and aliases, for ``emflow status``.

    Returns
    -------
    dict
        ``model_name``, ``tracking_uri``, ``aliases`` (alias -> version), ``versions``: list of
        dicts with ``version``, ``aliases``, ``decision``, ``reason``, ``run_key``,
        ``data_window``, ``run_id``, ``created``, ``holdout_mean_loglik`` and rollback fields.
    """
    from datetime import UTC, datetime

    name = settings.model_name
    out: dict[str, Any] = {
        "model_name": name,
        "tracking_uri": settings.tracking_uri,
        "aliases": {},
        "versions": [],
    }
    if missing_sqlite_store(settings.tracking_uri) is not None:
        return out  # nothing registered; and reading must not create a database here
    client = connect(settings)
    if not with_retries(
        "look up the model", lambda: registry.registered_model_exists(client, name), settings
    ):
        return out
    model = with_retries("read the model", lambda: client.get_registered_model(name), settings)
    aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
    out["aliases"] = aliases
    last_rollback = (model.tags or {}).get("emflow.last_rollback")
    out["last_rollback"] = json.loads(last_rollback) if last_rollback else None
    versions = with_retries("list versions", lambda: registry.list_versions(client, name), settings)
    for v in versions:
        tags = v.tags or {}
        out["versions"].append(
            {
                "version": str(v.version),
                "aliases": sorted(a for a, target in aliases.items() if target == str(v.version)),
                "decision": tags.get(registry.TAG_DECISION, ""),
                "reason": tags.get(registry.TAG_REASON, ""),
                "run_key": tags.get(registry.TAG_RUN_KEY, ""),
                "data_window": tags.get(registry.TAG_DATA_WINDOW, ""),
                "run_id": v.run_id,
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "holdout_mean_loglik": tags.get("emflow.holdout_mean_loglik"),
                "rollback_by": tags.get(registry.TAG_ROLLBACK_BY),
                "rollback_at": tags.get(registry.TAG_ROLLBACK_AT),
                "rollback_reason": tags.get(registry.TAG_ROLLBACK_REASON),
            }
        )
    return out

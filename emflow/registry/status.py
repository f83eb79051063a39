"""``emflow status``'s facts: versions, aliases, decisions and the last rollback."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.registry import aliases as registry
from emflow.registry.tracking import missing_sqlite_store, with_retries

log = logging.getLogger(__name__)


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
    facts = _read_sqlite_store(settings.tracking_uri, name)
    if facts is None:
        facts = _read_through_mlflow(settings, name)
    if facts is None:
        return out
    model_tags, aliases, versions = facts
    out["aliases"] = aliases
    last_rollback = model_tags.get("emflow.last_rollback")
    out["last_rollback"] = json.loads(last_rollback) if last_rollback else None
    for v in versions:
        tags = v["tags"]
        out["versions"].append(
            {
                "version": v["version"],
                "aliases": sorted(a for a, target in aliases.items() if target == v["version"]),
                "decision": tags.get(registry.TAG_DECISION, ""),
                "reason": tags.get(registry.TAG_REASON, ""),
                "run_key": tags.get(registry.TAG_RUN_KEY, ""),
                "data_window": tags.get(registry.TAG_DATA_WINDOW, ""),
                "run_id": v["run_id"],
                "created": datetime.fromtimestamp(v["created_ms"] / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "holdout_mean_loglik": tags.get("emflow.holdout_mean_loglik"),
                "rollback_by": tags.get(registry.TAG_ROLLBACK_BY),
                "rollback_at": tags.get(registry.TAG_ROLLBACK_AT),
                "rollback_reason": tags.get(registry.TAG_ROLLBACK_REASON),
            }
        )
    return out


#: (model tags, alias -> version, versions newest first as dicts with version, run_id,
#: created_ms and tags)
_Facts = tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]


def _read_through_mlflow(settings: Settings, name: str) -> _Facts | None:
    """The registry facts of ``name`` through MLflow's client; None when it is not registered."""
    from emflow.registry.tracking import connect

    client = connect(settings)
    if not with_retries(
        "look up the model", lambda: registry.registered_model_exists(client, name), settings
    ):
        return None
    model = with_retries("read the model", lambda: client.get_registered_model(name), settings)
    aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
    versions = with_retries("list versions", lambda: registry.list_versions(client, name), settings)
    return (
        dict(model.tags or {}),
        aliases,
        [
            {
                "version": str(v.version),
                "run_id": v.run_id,
                "created_ms": v.creation_timestamp,
                "tags": dict(v.tags or {}),
            }
            for v in versions
        ],
    )


def _read_sqlite_store(tracking_uri: str, name: str) -> _Facts | None:
    """The same facts read straight from an embedded SQLite store, without importing MLflow.

    Importing MLflow and opening its store take about 2 s of the 2-5 s a status took on the
    embedded default; four read-only queries take milliseconds. The tables are MLflow's own
    (``registered_models``, ``model_versions`` and their tags, ``registered_model_aliases``);
    any mismatch (another schema, a row outside the default workspace, a locked file) returns
    None and the caller asks MLflow instead. ``tests/integration/test_registry_status.py`` compares
    both readings on a real store, so a schema change in a new MLflow shows up there.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0]).absolute()
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5) as db:
            workspaces = {
                row[0]
                for table in ("registered_models", "model_versions", "registered_model_aliases")
                for row in db.execute(f"SELECT workspace FROM {table} WHERE name = ?", (name,))
            }
            if workspaces - {"default"}:
                return None
            if (
                db.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,)).fetchone()
                is None
            ):
                return ({}, {}, [])
            model_tags = dict(
                db.execute("SELECT key, value FROM registered_model_tags WHERE name = ?", (name,))
            )
            aliases = {
                str(alias): str(version)
                for alias, version in db.execute(
                    "SELECT alias, version FROM registered_model_aliases WHERE name = ?", (name,)
                )
            }
            rows = db.execute(
                "SELECT version, run_id, creation_time FROM model_versions "
                "WHERE name = ? AND current_stage != 'Deleted_Internal' ORDER BY version DESC",
                (name,),
            ).fetchall()
            tags: dict[str, dict[str, str]] = {}
            for version, key, value in db.execute(
                "SELECT version, key, value FROM model_version_tags WHERE name = ?", (name,)
            ):
                tags.setdefault(str(version), {})[key] = value
    except sqlite3.Error as error:
        log.debug("reading %s directly failed (%s); asking MLflow", path, error)
        return None
    versions = [
        {"version": str(v), "run_id": run_id, "created_ms": created, "tags": tags.get(str(v), {})}
        for v, run_id, created in rows
    ]
    return model_tags, aliases, versions

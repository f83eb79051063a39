"""A quarantined batch moved back under its source: is it a release, and setting the old copy aside.

:func:`validation.quarantine.check_batch` asks :func:`released` when the run that quarantined a
batch meets its source again; a release is checked anew under the same run id after
:func:`set_aside` renamed the earlier copy (nothing is deleted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from validation.contract import Contract
from validation.moves import checksums
from validation.quarantine import (
    MANIFEST,
    RESULT,
    SUMMARY,
    _now,
    _sha_map,
    _sidecar,
    _write_json,
    delivered_path,
    log,
)


def released(manifest: dict[str, Any], source: Path, contract: Contract | None) -> bool:
    """Whether a batch this run quarantined is back under its source path to be checked again.

    Released: the move had finished (or its setting aside began: status ``released``), and
    the source holds other bytes (fixed and moved back) or the contract changed since. The same
    bytes under the same contract get the stored outcome: a retry ends as the first try did.
    """
    if manifest["status"] == "released":
        return True
    if manifest["status"] != "quarantined" or not manifest.get("source_removed", True):
        return False
    if not source.exists() or str(delivered_path(source)) != manifest.get("source"):
        return False
    now = _sha_map(checksums(source))
    if not now or not set(manifest["files"]) <= set(now):
        # not the quarantined batch moved back: a late file in a recreated day folder, an empty
        # folder (a release brings back every file, fixed or not; a new delivery is a new run)
        return False
    if now != _sha_map(manifest["files"]):
        return True
    from validation.contract import load_contract

    fingerprint = (contract or load_contract()).fingerprint
    return bool(fingerprint != (manifest.get("contract") or {}).get("fingerprint"))


def set_aside(target: Path, manifest: dict[str, Any]) -> None:
    """Rename a released batch's quarantined copy and sidecars to ``<name>.released-<stamp>``.

    Nothing is deleted: the earlier bytes and their report stay in quarantine under the new
    name. The manifest is marked ``released`` first and renamed last, so a task killed halfway
    finishes the same renames when retried (the stamp is the manifest's ``moved_at``).
    """
    if manifest["status"] != "released":
        manifest.update(status="released", released_at=_now())
        _write_json(_sidecar(target, MANIFEST), manifest)
    stamp = re.sub(r"[^0-9]", "", str(manifest.get("moved_at") or manifest["released_at"]))[:20]
    aside = target.with_name(f"{target.name}.released-{stamp}")
    for suffix in ("", RESULT, SUMMARY, MANIFEST):
        if os.path.lexists(_sidecar(target, suffix)):
            os.rename(_sidecar(target, suffix), _sidecar(aside, suffix))
    log.warning(
        "run %s: %s is back under %s; its quarantined copy is kept as %s and it is checked again",
        manifest.get("run_id"),
        target.name,
        manifest.get("source"),
        aside,
    )

"""Gate a batch: validate it, then quarantine it (moved byte-for-byte) or mark it validated.

Layout under the data root. ``<key>`` names the batch: its path under ``incoming/`` (e.g.
``2026-11-23/telemetry.parquet``) or, for a batch elsewhere, its file or folder name; ``<run id>``
is made path-safe. One run may check several batches (one per file of a multi-day window)::

    quarantine/<run id>/<key>                   the batch file, or a folder's batch files, moved
                                                unchanged (a file still being written stays)
    quarantine/<run id>/<key>.validation.json   ValidationResult.to_json_dict() (GX JSON inside)
    quarantine/<run id>/<key>.summary.txt       the human-readable summary
    quarantine/<run id>/<key>.manifest.json     source, destination, sha256 before and after
    validated/<run id>/<key>.manifest.json      source, sha256 of every file, rows, contract
    validated/<run id>/<key>.validation.json

Nothing is ever deleted: a batch is renamed into quarantine (on another filesystem: copied,
verified by sha256, and only then unlinked at the source). Running :func:`check_batch` again for the
same run id gives the same outcome and leaves one quarantined copy, and resumes a move that a killed
task left half-done; a source left behind by a move killed before its unlink is finished by the
next check of any run id (the manifest records ``source_removed``), never quarantined twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from validation.batch import ValidationResult, validate_batch
from validation.contract import Contract
from validation.moves import (
    QuarantineConflict,
    QuarantineIntegrityError,
    checksums,
    holds,
    move_batch,
    prune,
)

__all__ = ["QuarantineConflict", "QuarantineIntegrityError", "check_batch"]

log = logging.getLogger(__name__)

MANIFEST = ".manifest.json"
#: Longest run key: with a batch key's suffixes (``.manifest.json``) a folder or file name stays
#: far below the 255 bytes file systems allow.
MAX_KEY_LENGTH = 160
RESULT = ".validation.json"
SUMMARY = ".summary.txt"


def run_folder_name(run_id: str) -> str:
    """File-system-safe key of a run id: the folder of its batches (Airflow ids hold ``:``, ``+``).

    Characters outside ``[A-Za-z0-9._-]`` become ``-``; where that changed the id, 8 hex digits
    of its SHA-256 follow, so run ids that differ only there (``a:b`` and ``a-b``) never share
    a folder. A safe id is its own key; a longer one than :data:`MAX_KEY_LENGTH` is cut and gets
    the digest too.

    >>> run_folder_name("scheduled__2026-11-20T00:00:00+00:00")
    'scheduled__2026-11-20T00-00-00-00-00-f16325f7'
    >>> run_folder_name("manual__backfill-7")
    'manual__backfill-7'
    """
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", str(run_id)).strip("-.")
    if not key:
        raise ValueError(f"run id {run_id!r} has no usable characters for a run key")
    if key != run_id or len(key) > MAX_KEY_LENGTH:
        # a folder name holds at most 255 bytes; Airflow run ids may have 250 characters
        key = f"{key[: MAX_KEY_LENGTH - 9]}-{hashlib.sha256(str(run_id).encode()).hexdigest()[:8]}"
    return key


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _left_at(source: Path, manifest: dict[str, Any]) -> list[Path]:
    """The batch's files still at ``source`` with their recorded bytes (a killed move's)."""
    if source.is_symlink() or not source.is_dir():
        return [source] if os.path.lexists(source) else []
    return [
        source / rel
        for rel, facts in manifest["files"].items()
        if holds(source / rel, facts["sha256"])
    ]


def _complete(target: Path, manifest: dict[str, Any], source: Path) -> None:
    """Finish a quarantine a killed task left: the rest of the move, then the verification."""
    if manifest["status"] == "moving" and source.exists():
        move_batch(source, target, list(manifest["files"]))
    _finish_quarantine(target, manifest, source)


def _source_key(path: Path) -> str:
    return str(path.resolve())


def delivered_path(path: Path) -> Path:
    """``path`` made absolute without following a symbolic link: where the batch was delivered."""
    return Path(os.path.abspath(path))


def batch_key(source: Path, data_root: Path) -> Path:
    """Relative name of a batch: its path under ``data_root/incoming/``, else its own name.

    A symbolic link is named by where it lies, not by its target.
    """
    incoming = data_root / "incoming"
    for base, path in (
        (delivered_path(incoming), delivered_path(source)),
        (incoming.resolve(), delivered_path(source).parent.resolve() / source.name),
    ):
        try:
            return path.relative_to(base)
        except ValueError:
            continue
    return Path(source.name)


def _sidecar(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def _finish_quarantine(target: Path, manifest: dict[str, Any], source: Path) -> None:
    """Verify the moved bytes, remove what is left of the source, mark the manifest done.

    The bytes are checked against the recorded checksums. Across filesystems a move is copy,
    verify, rename into quarantine, unlink the source: a task killed before the unlink leaves
    the source in place. It goes here, once the quarantined copy is verified, so that no later
    run (of any id) quarantines a second copy of it.
    """
    after = checksums(target)
    manifest["files"] = {
        rel: {**facts, "sha256_after": after.get(rel, {}).get("sha256")}
        for rel, facts in manifest["files"].items()
    }
    intact = all(f["sha256"] == f["sha256_after"] for f in manifest["files"].values())
    if intact and os.path.lexists(source) and str(delivered_path(source)) == manifest["source"]:
        _remove_leftover(source, manifest)
    manifest.update(
        status="quarantined" if intact else "checksum_mismatch",
        moved_at=_now(),
        source_removed=not _left_at(source, manifest),
    )
    _write_json(_sidecar(target, MANIFEST), manifest)
    if not intact:
        raise QuarantineIntegrityError(
            f"bytes in {target} differ from the source's recorded sha256 "
            f"(see {_sidecar(target, MANIFEST)}); nothing was deleted"
        )


def _remove_leftover(source: Path, manifest: dict[str, Any]) -> None:
    """Unlink the source of a verified move, if it still holds the recorded bytes."""
    if source.is_symlink():
        source.unlink()  # the link only: its target is the producer's
    elif source.is_dir():  # the batch's files with their recorded bytes; nothing else
        left = _left_at(source, manifest)
        for path in left:
            path.unlink()
        prune(source, list(manifest["files"]))
        if not left:
            return
    elif _sha_map(checksums(source)) == _sha_map(manifest["files"]):
        source.unlink()
    else:  # new bytes under the old name: a new delivery, not ours to remove
        return
    log.warning("removed %s: its bytes were already quarantined and verified", source)


def _unfinished_move(source: Path, key: Path, root: Path, before: dict[str, Any]) -> Path | None:
    """Where an earlier run quarantined these bytes from this path without finishing, or None.

    Unfinished: the source is still here (the task was killed between copy and unlink), or a
    folder's files are split between the source and the target, each with its recorded bytes
    (killed between two files). Manifests written before ``source_removed`` was recorded count
    only while ``moving``.
    """
    quarantine = root / "quarantine"
    if not quarantine.is_dir():
        return None
    for run_dir in sorted(quarantine.iterdir()):
        target = run_dir / key
        marker = _sidecar(target, MANIFEST)
        if not marker.is_file() or not target.exists():
            continue
        manifest = json.loads(marker.read_text())
        if not manifest.get("source_removed", manifest.get("status") != "moving") and manifest.get(
            "source"
        ) == str(delivered_path(source)):
            recorded, now = _sha_map(manifest["files"]), _sha_map(before)
            if now == recorded:
                return target
            # a folder's move killed between files: the rest here, the moved ones verified there
            moved = set(recorded) - set(now)
            if (
                manifest.get("status") == "moving"
                and now.items() <= recorded.items()
                and all(holds(target / rel, recorded[rel]) for rel in moved)
            ):
                return target
    return None


def _stored_result(target: Path) -> ValidationResult:
    return ValidationResult.from_json_dict(json.loads(_sidecar(target, RESULT).read_text()))


def _sha_map(files: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {rel: facts["sha256"] for rel, facts in files.items()}


def check_batch(
    source_path: str | os.PathLike[str],
    *,
    run_id: str,
    data_root: str | os.PathLike[str],
    contract: Contract | None = None,
    window: Any = None,
    progress: bool = False,
) -> ValidationResult:
    """Validate the batch at ``source_path`` and quarantine it or mark it validated.

    Parameters
    ----------
    source_path : path-like
        A Parquet/CSV file or a folder of them (e.g. ``incoming/2026-11-23/telemetry.parquet``).
    run_id : str
        The pipeline run this check belongs to (the Airflow ``run_id`` or a run key).
    data_root : path-like
        Root holding ``incoming/``, ``quarantine/`` and ``validated/`` (``Settings().data_root``).
    contract, window, progress
        As for :func:`validation.validate_batch`.

    Returns
    -------
    ValidationResult
        ``report_path`` names the JSON report; on failure ``quarantined_to`` is where the batch's
        bytes now are. Raise with ``result.raise_for_failure()``.

    Raises
    ------
    QuarantineConflict
        If this run id already recorded different bytes under the same batch key.
    FileNotFoundError
        If the source does not exist and this run id never saw it.
    """
    source = Path(source_path)
    root = Path(data_root)
    key = batch_key(source, root)
    run_dir = run_folder_name(run_id)
    quarantined = root / "quarantine" / run_dir / key
    validated = root / "validated" / run_dir / key

    if _sidecar(quarantined, MANIFEST).exists():  # this run already quarantined the batch
        manifest = json.loads(_sidecar(quarantined, MANIFEST).read_text())
        from validation.release import released, set_aside

        if released(manifest, source, contract):
            # moved back fixed, or the contract changed since: check it again under this run
            set_aside(quarantined, manifest)
            return check_batch(
                source,
                run_id=run_id,
                data_root=data_root,
                contract=contract,
                window=window,
                progress=progress,
            )
        if manifest["status"] == "moving":  # a killed task left the move half-done: resume it
            _complete(quarantined, manifest, source)
        elif os.path.lexists(source) and not manifest.get("source_removed", True):
            # killed after the copy landed and before the source was unlinked
            _finish_quarantine(quarantined, manifest, source)
        elif source.exists() and checksums(source):  # (a day folder left holding no data)
            if _sha_map(checksums(source)) != _sha_map(manifest["files"]):
                raise QuarantineConflict(
                    f"{source} differs from the batch run {run_id!r} quarantined as "
                    f"{quarantined}; check the new delivery under a new run id"
                )
            log.warning(
                "%s was re-delivered unchanged; its copy is already in %s, source left as is",
                source,
                quarantined,
            )
        log.info("run %s: batch %s already quarantined in %s", run_id, key, quarantined)
        return _stored_result(quarantined)

    if not source.exists():
        raise FileNotFoundError(
            f"batch {source} does not exist and run {run_id!r} has no record of it "
            f"under {root}: check the path / data window"
        )
    before = checksums(source)
    earlier = _unfinished_move(source, key, root, before)
    if earlier is not None:  # a killed run's move: finish it, no second copy under this run
        manifest = json.loads(_sidecar(earlier, MANIFEST).read_text())
        log.warning(
            "run %s: %s was quarantined by run %s, whose task was killed before removing it "
            "here; finishing that move (%s) instead of quarantining a second copy",
            run_id,
            source,
            manifest.get("run_id"),
            earlier,
        )
        _complete(earlier, manifest, source)
        return _stored_result(earlier)
    result = validate_batch(source, contract, window=window, progress=progress)

    if result.success:
        marker = _sidecar(validated, MANIFEST)
        result.report_path = str(_sidecar(validated, RESULT))
        if marker.exists():
            recorded = json.loads(marker.read_text())
            if _sha_map(recorded["files"]) != _sha_map(before):
                raise QuarantineConflict(
                    f"{source} changed since run {run_id!r} validated it ({marker}); "
                    "validate the new delivery under a new run id"
                )
            log.info("run %s: batch %s already marked validated (%s)", run_id, key, marker)
            return result
        validated.parent.mkdir(parents=True, exist_ok=True)
        _write_json(_sidecar(validated, RESULT), result.to_json_dict())
        _write_json(
            marker,
            {
                "run_id": run_id,
                "status": "validated",
                "source": str(delivered_path(source)),
                "files": before,
                "n_rows": result.n_rows,
                "window": result.window,
                "contract": result.contract,
                "validated_at": _now(),
                "summary": result.summary,
            },
        )
        log.info("run %s: %s", run_id, result.summary)
        return result

    quarantined.parent.mkdir(parents=True, exist_ok=True)
    if quarantined.exists():  # bytes without a manifest: never overwrite them
        raise QuarantineConflict(
            f"{quarantined} exists without a manifest; move it aside by hand, then re-run"
        )
    result.report_path = str(_sidecar(quarantined, RESULT))
    result.quarantined_to = str(quarantined)
    _write_json(_sidecar(quarantined, RESULT), result.to_json_dict())
    _write_text(_sidecar(quarantined, SUMMARY), result.summary)
    manifest = {
        "run_id": run_id,
        "status": "moving",
        "source": str(delivered_path(source)),
        "destination": str(quarantined.resolve()),
        "files": before,
        "contract": result.contract,
        "failed_expectations": sorted(set(result.failed_expectations)),
        "started_at": _now(),
    }
    _write_json(_sidecar(quarantined, MANIFEST), manifest)  # before the move: a retry resumes
    move_batch(source, quarantined, list(before))
    _finish_quarantine(quarantined, manifest, source)
    # the summary is the caller's to show (the CLI prints it, the DAG raises it)
    log.warning("run %s: batch quarantined to %s", run_id, quarantined)
    return result

"""Moving a batch's bytes without losing any: renames, or across filesystems copy, verify, unlink.

Used by :mod:`validation.quarantine`, whose module docstring gives the layout and the retry
rules; here only the moves and the checksums that verify them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any


class QuarantineConflict(RuntimeError):
    """The run id already holds other bytes under this batch key; the message names the fix.

    Nothing was moved or overwritten.
    """


class QuarantineIntegrityError(RuntimeError):
    """Checksums after the move differ from before; both copies are kept for inspection."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def holds(path: Path, sha256: str) -> bool:
    """Whether ``path`` is a file with these bytes."""
    return path.is_file() and sha256_file(path) == sha256


def checksums(path: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "size_bytes"}}`` of a file, or of a folder's data files.

    A folder's are the files the contract reads (:func:`validation.reader.list_batch_files`):
    a file still being written (``.name``, ``_name``) or a note beside the data is not part of
    the batch, so its coming and going changes nothing here.
    """
    from validation.reader import list_batch_files

    files = [path] if path.is_file() else list_batch_files(path)
    base = path.parent if path.is_file() else path
    return {
        str(p.relative_to(base)): {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
        for p in files
    }


def move(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``; across filesystems copy, verify, then unlink.

    A symbolic link is not renamed: its bytes live in its target, which the producer may
    remove later. They are copied (and verified) into quarantine; then only the link goes, the
    target stays where the producer put it.
    """
    if destination.exists():
        raise QuarantineConflict(f"{destination} exists already; refusing to overwrite it")
    linked = source.is_symlink()
    if not linked:
        try:
            os.rename(source, destination)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    partial = destination.with_name(f".{destination.name}.partial")
    # a copy a killed task left behind: only a copy (the source is unlinked after the rename
    # below), so start it again
    if partial.is_dir():
        shutil.rmtree(partial)
    elif partial.exists():
        partial.unlink()
    if source.is_dir():
        shutil.copytree(source, partial)
    else:
        shutil.copy2(source, partial)
    same = (
        checksums(partial) == checksums(source)
        if source.is_dir()
        else sha256_file(partial) == sha256_file(source)
    )
    if not same:
        raise QuarantineIntegrityError(f"copy of {source} to {partial} differs; source kept")
    os.rename(partial, destination)
    # the verified copy now lives in quarantine: only then is the source unlinked
    if linked or not source.is_dir():
        source.unlink()  # a link: the link itself, never its target
    else:
        shutil.rmtree(source)


def move_batch(source: Path, destination: Path, files: list[str]) -> None:
    """Move a batch: a file (or a link) whole, a folder's recorded files one by one.

    ``files``: the folder's batch files as recorded before the move (relative paths), which go
    to the same paths under ``destination``. Nothing else moves: a file the producer is still
    writing (``.name``/``_name``), a note, or a file that arrived after the record (a new
    delivery, checked under a new run) stays where it is. A file already at its destination (a
    killed task's move) is not moved again: the caller verifies it and removes its source copy.
    """
    if source.is_symlink() or not source.is_dir():
        if not os.path.lexists(destination):
            move(source, destination)
        return
    stale = destination.with_name(f".{destination.name}.partial")
    if stale.is_dir():  # a whole-folder copy an older version's killed task left: a copy only
        shutil.rmtree(stale)  # (that version unlinked the source after renaming it in)
    destination.mkdir(parents=True, exist_ok=True)
    for rel in files:
        path, target = source / rel, destination / rel
        if os.path.lexists(path) and not os.path.lexists(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            move(path, target)
    prune(source, files)


def prune(folder: Path, files: list[str]) -> None:
    """Remove the folders that held ``files`` (relative to ``folder``) where they are empty now.

    Deepest first, ``folder`` itself last. A folder holding anything else (a producer's file,
    one arriving now) stays, and so does any folder the batch did not use.
    """
    held = {folder / parent for rel in files for parent in Path(rel).parents}
    for sub in sorted(held, key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:  # not empty, or gone already
            continue

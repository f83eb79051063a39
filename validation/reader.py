"""The one telemetry reader: which files a batch is, and their rows.

Files are read with pyarrow (Parquet: ``.parquet``/``.pq``; CSV: ``.csv``; any letter case),
never row by row. The validator, the pipeline's split/evaluate/publish and ``emflow train`` all
read through here, so a batch that passed validation is read the same way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
BATCH_SUFFIXES = PARQUET_SUFFIXES + CSV_SUFFIXES


def printable(text: str, limit: int = 200) -> str:
    r"""``text`` safe to print on a terminal or a log line, at most ``limit`` characters.

    A parser's error on a binary file quotes the "line" it choked on: kilobytes of bytes, escape
    sequences that drive the terminal among them. The text is cut at the first character that
    is neither printable nor whitespace (U+FFFD, undecodable bytes, counts as binary too), with
    ``[binary content not shown]``; line breaks and tabs become spaces; a longer text is cut to
    ``limit`` with ``...``.

    >>> printable("CSV parse error: Expected 2 columns, got 1: ab\x1b[2J\x00\ufffd")
    'CSV parse error: Expected 2 columns, got 1: ab [binary content not shown]'
    """
    out = []
    for char in text:
        if char in "\n\r\t":
            out.append(" ")
        elif char.isprintable() and char != "\ufffd":
            out.append(char)
        else:
            out.append(" [binary content not shown]")
            break
    safe = "".join(out)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def list_batch_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a batch consists of: ``path`` itself, or the data files under a folder (sorted).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"batch {root} does not exist: check the path / data window")
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in BATCH_SUFFIXES
        # a name, or a folder on its way, starting with . or _: a file still being written
        # (a producer's temporary name, Spark's _temporary/, a .staging/ folder) or a marker
        and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    )


def read_file(path: Path) -> pd.DataFrame:
    """Read one Parquet or CSV file with pyarrow into pandas.

    Timezone-aware timestamps come out in UTC whatever zone the file names: pyarrow reads a
    CSV's ``+01:00`` offsets as UTC instants, so a Parquet column in ``Europe/Berlin`` (the
    same instants) is converted alike; naive timestamps stay naive (the contract refuses them).
    """
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        return _in_utc(pq.read_table(path).to_pandas())
    if suffix in CSV_SUFFIXES:
        import pyarrow.csv as pacsv

        return _in_utc(pacsv.read_csv(path).to_pandas())
    raise ValueError(f"unsupported file type {suffix!r}: deliver {', '.join(BATCH_SUFFIXES)}")


def _in_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Timezone-aware columns of ``frame`` converted to UTC (in place; the same instants)."""
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) != "UTC":
            frame[name] = frame[name].dt.tz_convert("UTC")
    return frame


def read_batch(
    files: Iterable[Path], *, progress: bool = False
) -> tuple[pd.DataFrame | None, list[dict[str, Any]]]:
    """Read every file; return the rows (None if nothing was readable) and per-file facts."""
    files = list(files)
    if progress:
        from tqdm.auto import tqdm

        files_iter: Iterable[Path] = tqdm(files, desc="reading", unit="file", disable=None)
    else:
        files_iter = files
    frames, facts = [], []
    for path in files_iter:
        fact: dict[str, Any] = {"file": str(path), "size_bytes": path.stat().st_size}
        try:
            frame = read_file(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            fact.update(readable=False, error=printable(f"{type(exc).__name__}: {exc}"), n_rows=0)
        else:
            frames.append(frame)
            fact.update(readable=True, error=None, n_rows=len(frame))
        facts.append(fact)
    if not frames:
        return None, facts
    data = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return data, facts

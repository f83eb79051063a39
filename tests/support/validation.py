"""Helpers for the validation tests: the day every batch is for, and file digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from validation import window_for_day

DAY = "2026-11-01"
WINDOW = window_for_day(DAY)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())

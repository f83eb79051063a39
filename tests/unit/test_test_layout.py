"""The test tree itself: what pytest's default (rootdir-relative "prepend") import mode needs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_modules_have_unique_basenames():
    """Two ``test_x.py`` in different folders (no ``__init__.py``) stop the whole collection.

    ``make check`` collects ``tests/unit`` only, so a GPU or integration module named as a unit
    one surfaced first in CI; this catches it in the edit loop.
    """
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]

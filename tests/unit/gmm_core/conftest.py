"""``slow`` markers for gmm_core tests that take seconds each (kept here, not in the files, so
the test modules stay as the engine work edits them)."""

from __future__ import annotations

import pytest

# module -> tests (name prefixes) that take seconds: a local Dask cluster, nvcc for sm_90
SLOW = {
    "test_dask_engine.py": ("",),
    "test_cuda_compile.py": ("test_cuda_source_compiles_for_sm90",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        prefixes = SLOW.get(item.path.name, ())
        if any(item.name.startswith(prefix) for prefix in prefixes):
            item.add_marker(pytest.mark.slow)

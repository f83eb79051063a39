"""Fixtures every layer uses (a pytest plugin, registered in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def blobs() -> np.ndarray:
    """Four well separated 3-D clusters, offset far from the origin (600 x 3, float64)."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(600, n_features=3, centers=4, cluster_std=1.5, random_state=0)
    return X + 50.0


@pytest.fixture()
def settings(tmp_path: Path):
    """emflow ``Settings`` with everything under ``<tmp_path>/home`` (SQLite MLflow, files)."""
    from emflow.config import Settings

    return Settings(home=tmp_path / "home")

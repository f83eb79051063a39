"""Fixtures of the registry tests (``test_registry_*.py``): seeded holdout rows and two saved
models, a good fit and one fitted on 120 rows."""

from __future__ import annotations

import pytest
from support.lifecycle import telemetry, train


@pytest.fixture(scope="module")
def holdout():
    return telemetry(400, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = telemetry(1500, seed=1)
    return {
        "good": (root / "good", train(data, root / "good", seed=0)[1]),
        "small": (root / "small", train(data.iloc[:120], root / "small", seed=3, n_init=1)[1]),
    }

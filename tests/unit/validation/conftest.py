"""Fixtures of the validation tests (``test_validation_*.py``): the default contract and a
good in-window batch."""

from __future__ import annotations

import pytest
from support.validation import WINDOW

from validation import load_contract
from validation.synthetic import make_telemetry


@pytest.fixture(scope="module")
def contract():
    return load_contract()


@pytest.fixture(scope="module")
def good_frame():
    return make_telemetry(600, *WINDOW, seed=3)

"""Where a fit's time went and its device memory peak: logged by the train step and
``emflow train``, published as ``emflow_train_device_peak_bytes`` with the run metrics."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import generate_latest

import gmm_core
from emflow.cli import main
from emflow.config import Settings
from emflow.metrics import build_registry
from emflow.model.fit_report import device_peak_bytes, fit_timings, log_fit, ms_per_iteration
from emflow.run.request import build_request
from emflow.run.split import split_window
from emflow.run.state import Validated
from emflow.run.summary import StepOutputs, run_summary
from emflow.run.train import train_challenger

TIMINGS = {"validate": 0.001, "transfer": 0.002, "init": 0.003, "em": 0.048, "finish": 0.004}
PEAK = 123_456_789


@pytest.fixture()
def gpu_like_fit(monkeypatch):
    """GaussianMixture.fit as on a GPU that measures itself: a real fit, then the attributes
    the CuPy engine sets (``fit_timings_``, ``device_peak_bytes_``)."""
    real_fit = gmm_core.GaussianMixture.fit

    def fit(self, X, y=None):
        real_fit(self, X, y)
        self.fit_timings_ = dict(TIMINGS)
        self.device_peak_bytes_ = PEAK
        return self

    monkeypatch.setattr(gmm_core.GaussianMixture, "fit", fit)


def _fitted(blobs):
    model = gmm_core.GaussianMixture(3, n_init=1, max_iter=20, random_state=0, backend="numpy").fit(
        blobs
    )
    model.fit_timings_ = dict(TIMINGS)
    model.device_peak_bytes_ = PEAK
    return model


def test_each_phase_iterations_and_peak_get_one_log_line(blobs, caplog):
    model = _fitted(blobs)
    logger = logging.getLogger("test.fit_report")
    with caplog.at_level(logging.INFO, logger="test.fit_report"):
        assert log_fit(logger, model) == TIMINGS
    lines = [r.getMessage() for r in caplog.records]
    for phase in TIMINGS:
        assert any(re.fullmatch(rf"time {phase} +{TIMINGS[phase]:.3f} s", line) for line in lines)
    per_iteration = 1000 * TIMINGS["em"] / model.n_iter_
    assert f"iterations {model.n_iter_}, {per_iteration:.3f} ms per iteration" in lines
    assert f"device peak memory {PEAK} bytes (117.7 MiB)" in lines


def test_a_cpu_model_without_the_attributes_reports_what_it_has(blobs, caplog):
    model = gmm_core.GaussianMixture(2, max_iter=10, random_state=0, backend="numpy").fit(blobs)
    for name in ("fit_timings_", "device_peak_bytes_"):
        if hasattr(model, name):  # gmm_core versions that measure themselves
            delattr(model, name)
    assert fit_timings(model) == {} and device_peak_bytes(model) is None
    assert ms_per_iteration(model) == pytest.approx(1000 * model.fit_seconds_ / model.n_iter_)
    with caplog.at_level(logging.INFO, logger="test.fit_report"):
        log_fit(logging.getLogger("test.fit_report"), model)
    assert "device peak" not in caplog.text and "iterations" in caplog.text


def test_train_step_logs_the_phases_and_the_peak_reaches_the_gauge(tmp_path, caplog, gpu_like_fit):
    import pandas as pd

    settings = Settings(home=tmp_path / "home").ensure_dirs()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"f0": rng.normal(size=300), "f1": rng.normal(size=300)})
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, index=False)
    request = build_request(
        {"n_components": 2, "n_init": 1, "max_iter": 20, "backend": "numpy"},
        run_id="manual__peak",
        logical_date="2026-11-20",
    )
    validated = Validated(
        files=[str(path)],
        reports=[],
        rows_validated=300,
        feature_columns=["f0", "f1"],
        contract="x",
    )
    split = split_window(request, validated, settings)
    with caplog.at_level(logging.INFO, logger="emflow.run.train"):
        trained = train_challenger(request, split, settings)
    text = caplog.text
    order = [text.index(f"time {phase} ") for phase in ("read", *TIMINGS, "save")]
    assert order == sorted(order)  # read, the fit's phases, save: where the time went, in order
    assert re.search(r"iterations \d+, [\d.]+ ms per iteration", text)
    assert f"device peak memory {PEAK} bytes" in text
    assert trained.device_peak_bytes == PEAK
    assert list(trained.timings) == ["read", *TIMINGS, "save"]

    summary = run_summary(
        request, StepOutputs(validate=validated, split=split, train=trained), settings=settings
    )
    assert summary["device_peak_bytes"] == PEAK
    gauge = build_registry(summary).get_sample_value(
        "emflow_train_device_peak_bytes", {"model": settings.model_name}
    )
    assert gauge == PEAK


def test_a_cpu_run_sends_no_device_peak(blobs):
    summary = {"model_name": "m", "status": "success", "n_iter": 3}
    assert "emflow_train_device_peak_bytes" not in generate_latest(build_registry(summary)).decode()


def test_emflow_train_logs_where_the_time_went(tmp_path, caplog, capsys, gpu_like_fit):
    from validation.synthetic import make_telemetry

    path = tmp_path / "telemetry.parquet"
    make_telemetry(400, "2026-11-01", "2026-11-02", seed=4).to_parquet(path, index=False)
    with caplog.at_level(logging.INFO, logger="emflow.cli.train"):
        rc = main(
            [
                "train",
                str(path),
                "--n-components",
                "2",
                "--n-init",
                "1",
                "--max-iter",
                "20",
                "--backend",
                "numpy",
                "--out",
                str(tmp_path / "model"),
            ]
        )
    assert rc == 0
    for phase in ("read", *TIMINGS, "save"):
        assert re.search(rf"time {phase} +[\d.]+ s", caplog.text), phase
    assert "ms per iteration" in caplog.text
    assert f"device peak memory {PEAK} bytes" in caplog.text
    assert f"device peak    {PEAK} bytes" in capsys.readouterr().out


def test_a_selected_model_reports_no_time_per_iteration():
    """QA probe: ``train --n-components auto`` reported the whole sweep's time over the chosen
    model's iterations as its time per iteration (326 ms)."""
    model = SimpleNamespace(n_iter_=6, fit_seconds_=1.96, fit_timings_={"selection": 1.96})
    assert ms_per_iteration(model) is None
    assert ms_per_iteration(SimpleNamespace(n_iter_=4, fit_seconds_=float("nan"))) is None


def test_the_train_step_reports_the_fits_measured_device_peak():
    """QA probe: the train step read CuPy's pool after fit, which fit empties when it ends
    (about 0 on every GPU run); it reports gmm_core's device_peak_bytes_ of the fit now."""
    from emflow.run.train import _gpu_memory_peak_bytes

    on_gpu = SimpleNamespace(backend_="cupy", device_peak_bytes_=268_435_456)
    assert _gpu_memory_peak_bytes(on_gpu) == 268_435_456
    assert (
        _gpu_memory_peak_bytes(SimpleNamespace(backend_="numpy", device_peak_bytes_=None)) is None
    )

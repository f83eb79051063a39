"""Helpers for the model lifecycle tests: small seeded telemetry, trained and saved models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emflow.config import Settings

FEATURES = ["cpu_util", "mem_util", "latency_ms", "error_rate", "req_rate", "temp_c"]


def telemetry(n_rows: int, seed: int, *, shift: float = 0.0, n_modes: int = 4) -> pd.DataFrame:
    """Synthetic telemetry rows (ids, timestamps and the six feature columns)."""
    from validation.synthetic import make_telemetry

    return make_telemetry(
        n_rows, "2026-11-01", "2026-11-02", seed=seed, shift=shift, n_modes=n_modes
    )


def train(
    frame: pd.DataFrame,
    directory: Path,
    *,
    n_components: int = 4,
    seed: int = 0,
    n_init: int = 2,
    max_iter: int = 100,
) -> tuple[Any, dict[str, Any]]:
    """Fit gmm_core on ``frame``'s features, save it to ``directory``; return model and info."""
    import gmm_core

    model = gmm_core.GaussianMixture(
        n_components,
        covariance_type="full",
        n_init=n_init,
        random_state=seed,
        max_iter=max_iter,
        backend="numpy",
    ).fit(frame[FEATURES].to_numpy())
    gmm_core.save_model(
        model, directory, feature_names=FEATURES, metadata={"seed": seed, "n_train": len(frame)}
    )
    info = {
        "params": {"n_components": n_components, "n_init": n_init, "seed": seed},
        "backend": model.backend_,
        "device": "cpu",
        "fit_seconds": float(model.fit_seconds_),
        "n_train": len(frame),
        "restart_lower_bounds": [np.asarray(c).tolist() for c in model.restart_lower_bounds_],
    }
    return model, info


def cycle(
    settings: Settings,
    model_dir: Path,
    holdout: pd.DataFrame,
    run_key: str,
    info: dict[str, Any],
    *,
    sample: pd.DataFrame | None = None,
) -> tuple[Any, Any, Any]:
    """evaluate -> gate -> publish, as the pipeline runs them; return the three results."""
    from emflow.registry.publish import publish
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    evaluation = evaluate(model_dir, holdout, settings)
    decision = gate(evaluation.to_dict(), model_dir, settings)
    result = publish(
        decision.to_dict(),
        model_dir,
        run_key=run_key,
        data_window=("2026-11-01", "2026-11-02"),
        train_info=info,
        settings=settings,
        validation_report={"success": True, "rows": 10},
        train_sample=sample if sample is not None else holdout,
    )
    return evaluation, decision, result

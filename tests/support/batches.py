"""A validated batch of three well separated 2-D clusters, written where the split step reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def three_clusters_batch(settings: Any, n_rows: int = 900, seed: int = 3) -> tuple[Any, Any]:
    """``(Validated, frame)``: ``n_rows`` rows of 3 clusters under ``incoming/2026-11-20``."""
    from emflow.run.state import Validated

    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [8.0, 8.0], [-8.0, 6.0]])
    X = centers[rng.integers(0, 3, n_rows)] + rng.normal(size=(n_rows, 2))
    frame = pd.DataFrame({"event_id": np.arange(n_rows), "f0": X[:, 0], "f1": X[:, 1]})
    folder = settings.data_root / "incoming" / "2026-11-20"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "telemetry.parquet"
    frame.to_parquet(path, index=False)
    validated = Validated(
        files=[str(path)],
        reports=[],
        rows_validated=n_rows,
        feature_columns=["f0", "f1"],
        contract="x",
    )
    return validated, frame

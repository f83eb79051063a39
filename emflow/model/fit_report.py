"""Where the time of one fit went, and how much device memory it held: log lines and numbers.

gmm_core fills ``fit_timings_`` (seconds per phase: ``validate``, ``transfer``, ``init``, ``em``,
``finish``) and ``device_peak_bytes_`` (None on the CPU) on fitted models that measure them;
both are read with ``getattr``, so models without them report what they have.
"""

from __future__ import annotations

import logging
import math
from typing import Any


def fit_timings(model: Any) -> dict[str, float]:
    """``model.fit_timings_`` as ``{phase: seconds}`` (empty when the model has none)."""
    timings = getattr(model, "fit_timings_", None) or {}
    return {str(phase): float(seconds) for phase, seconds in dict(timings).items()}


def device_peak_bytes(model: Any) -> int | None:
    """``model.device_peak_bytes_`` as int, or None (CPU fit, or not measured)."""
    peak = getattr(model, "device_peak_bytes_", None)
    return None if peak is None else int(peak)


def ms_per_iteration(model: Any) -> float | None:
    """Milliseconds per EM iteration: the ``em`` phase (else the whole fit) over ``n_iter_``.

    None for the model a selection chose (timings ``{"selection": ...}``): its candidates
    shared their passes, so the sweep's time over the chosen model's iterations means nothing.
    """
    n_iter = int(getattr(model, "n_iter_", 0) or 0)
    timings = fit_timings(model)
    if "em" not in timings and "selection" in timings:
        return None
    seconds = timings.get("em", getattr(model, "fit_seconds_", None))
    if not n_iter or seconds is None or not math.isfinite(float(seconds)):
        return None
    return 1000.0 * float(seconds) / n_iter


def log_phase(logger: logging.Logger, phase: str, seconds: float) -> None:
    """One INFO line: ``time <phase> <seconds> s``."""
    logger.info("time %-9s %9.3f s", phase, seconds)


def log_fit(logger: logging.Logger, model: Any) -> dict[str, float]:
    """Log each phase of ``fit_timings_``, the iterations and ms per iteration, the device peak.

    Returns
    -------
    dict of str to float
        The fit's phases (:func:`fit_timings`).
    """
    timings = fit_timings(model)
    for phase, seconds in timings.items():
        log_phase(logger, phase, seconds)
    per_iteration = ms_per_iteration(model)
    logger.info(
        "iterations %d, %s per iteration",
        int(getattr(model, "n_iter_", 0) or 0),
        "?" if per_iteration is None else f"{per_iteration:.3f} ms",
    )
    peak = device_peak_bytes(model)
    if peak is not None:
        logger.info("device peak memory %d bytes (%.1f MiB)", peak, peak / 2**20)
    return timings

"""The retrain parameters: one table of names, types, bounds, enums and defaults.

Everything that asks an operator for a training parameter is generated from :data:`PARAMS`:
the ``gmm_retrain`` DAG's typed ``Param``s (:func:`airflow_params`, the trigger form in the UI),
the options of ``emflow train`` (:func:`add_cli_options`) and the checks of a run request
(:func:`check_params`). This module imports nothing heavy: the DAG file imports it at parse
time.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Covariance types of ``gmm_core.GaussianMixture`` (scikit-learn's).
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
#: Compute backends of ``gmm_core.GaussianMixture`` (equal to ``gmm_core.BACKENDS``, which is
#: not imported here: gmm_core pulls in scikit-learn, too slow for DAG parsing).
BACKENDS = ("auto", "numpy", "cupy", "dask", "multigpu")
#: How ``n_components="auto"`` chooses K (``gmm_core.selection.CRITERIA``).
SELECTION_CRITERIA = ("bic", "aic", "holdout")
#: The value of ``n_components`` that asks for model selection over ``k_min..k_max``.
AUTO = "auto"
#: How the train step makes the challenger: a fresh fit of the window, or one ``partial_fit``
#: step of the champion on the window's newest day.
MODES = ("retrain", "update")


@dataclass(frozen=True)
class ParamSpec:
    """One run parameter.

    Attributes
    ----------
    name : str
        Key in the run's conf and in :class:`emflow.run.state.RunRequest`.
    kind : str
        ``"integer"``, ``"number"``, ``"string"`` or ``"date"`` (a ``YYYY-MM-DD`` string).
    default : Any
        Value when the run does not set it (None: empty in the UI).
    title : str
        Label in the trigger form.
    description : str
        Help text (form and ``--help``).
    minimum, maximum : float or None
        Inclusive bounds of a number.
    choices : tuple of str
        Allowed values of a string (empty: free text).
    cli : bool
        Whether ``emflow train`` takes it as an option.
    auto : bool
        An integer that may also be the string ``"auto"``.
    """

    name: str
    kind: str
    default: Any
    title: str
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    cli: bool = True
    auto: bool = False

    @property
    def nullable(self) -> bool:
        """Whether the parameter may be left empty."""
        return self.default is None

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema keywords of Airflow's ``Param`` for this parameter."""
        base = "string" if self.kind == "date" else self.kind
        schema: dict[str, Any] = {"type": ["null", base] if self.nullable else base}
        if self.kind == "date":
            schema["format"] = "date"
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.auto:  # minimum/maximum bind the numbers, the pattern the string
            schema["type"] = [base, "string"]
            schema["pattern"] = f"^{AUTO}$"
        return schema


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "window_start",
        "date",
        None,
        "Window start (YYYY-MM-DD)",
        "First day of telemetry to train on; empty: the day of the logical date.",
        cli=False,
    ),
    ParamSpec(
        "window_end",
        "date",
        None,
        "Window end (exclusive)",
        "Day after the last day of the window; empty: window start + 1 day.",
        cli=False,
    ),
    ParamSpec(
        "n_components",
        "integer",
        4,
        "Mixture components (K)",
        'A number, or "auto": fit every K from k_min to k_max in one sweep and keep the one '
        "criterion prefers (gmm_core.GaussianMixtureSelect).",
        minimum=1,
        maximum=256,
        auto=True,
    ),
    ParamSpec("covariance_type", "string", "full", "Covariance type", choices=COVARIANCE_TYPES),
    ParamSpec(
        "n_init", "integer", 3, "Seeded restarts (best lower bound wins)", minimum=1, maximum=64
    ),
    ParamSpec("max_iter", "integer", 100, "EM iterations cap", minimum=1, maximum=10_000),
    ParamSpec(
        "seed", "integer", 0, "Random seed (split and restarts)", minimum=0, maximum=2**32 - 1
    ),
    ParamSpec(
        "backend",
        "string",
        "auto",
        "Compute backend",
        "auto: the Dask cluster when EMFLOW_DASK_SCHEDULER is set, else CuPy when a GPU "
        "is usable, else NumPy. multigpu: every GPU of the worker.",
        choices=BACKENDS,
    ),
    # n_components="auto" (model selection, emflow.model.selection)
    ParamSpec(
        "k_min", "integer", 1, "Smallest K tried (n_components=auto)", minimum=1, maximum=256
    ),
    ParamSpec(
        "k_max", "integer", 16, "Largest K tried (n_components=auto)", minimum=1, maximum=256
    ),
    ParamSpec(
        "criterion",
        "string",
        "bic",
        "How auto chooses K",
        "bic/aic: lowest on the train rows; holdout: highest mean log-likelihood on a seeded "
        "fifth of the train rows (the run's holdout stays unseen for the gate).",
        choices=SELECTION_CRITERIA,
    ),
    ParamSpec(
        "holdout_fraction", "number", 0.2, "Holdout fraction", minimum=0.05, maximum=0.5, cli=False
    ),
    ParamSpec(
        "promotion_margin",
        "number",
        None,
        "Promotion margin (nats/sample)",
        "Largest holdout log-likelihood drop still promoted; empty: "
        "EMFLOW_PROMOTION_MARGIN (0.05).",
        minimum=0,
        maximum=100,
        cli=False,
    ),
    ParamSpec(
        "sample_weight_half_life_days",
        "number",
        None,
        "Sample weight half-life (days)",
        "Time decay across a multi-day window: a row's weight is "
        "0.5 ** (age_days / half_life), age 0 on the window's last day; empty: equal weights. "
        "Weighted fits run on the NumPy or Dask backend.",
        minimum=0.01,
        maximum=3650,
        cli=False,
    ),
    ParamSpec(
        "false_alarm_rate",
        "number",
        0.01,
        "Anomaly false-alarm rate (target)",
        "The challenger's anomaly threshold is calibrated at this rate on half of the holdout; "
        "the gate checks the rate measured on the other half; empty: no threshold.",
        minimum=0.0001,
        maximum=0.5,
        cli=False,
    ),
    ParamSpec(
        "mode",
        "string",
        "retrain",
        "Challenger mode",
        "retrain: fit the window from scratch. update: one partial_fit step of the champion on "
        "the window's newest day (cheap; a first run without a champion retrains).",
        choices=MODES,
        cli=False,
    ),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}

#: Training parameters with their defaults.
DEFAULT_PARAMS: dict[str, Any] = {spec.name: spec.default for spec in PARAMS}


def airflow_params() -> dict[str, Any]:
    """The DAG's ``Param`` objects (typed, bounded), keyed by name."""
    from airflow.sdk import Param

    params = {}
    for spec in PARAMS:
        keywords: dict[str, Any] = {"title": spec.title, **spec.json_schema()}
        if spec.description:
            keywords["description"] = spec.description
        params[spec.name] = Param(spec.default, **keywords)
    return params


def add_cli_options(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add ``--n-components``, ``--covariance-type``, ... (the ``cli`` parameters) to ``parser``.

    ``defaults`` overrides a parameter's default for this command only.
    """
    for spec in PARAMS:
        if not spec.cli:
            continue
        default = defaults.get(spec.name, spec.default)
        kwargs: dict[str, Any] = {"default": default, "help": f"{spec.title} (default {default})"}
        if spec.choices:
            kwargs["choices"] = spec.choices
        elif spec.auto:
            kwargs["type"] = _int_or_auto
        elif spec.kind in ("integer", "number"):
            kwargs["type"] = int if spec.kind == "integer" else float
        parser.add_argument("--" + spec.name.replace("_", "-"), **kwargs)


def _int_or_auto(text: str) -> int | str:
    """An ``--n-components`` value: an integer or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or {AUTO!r}, got {text!r}") from None


def is_auto(n_components: Any) -> bool:
    """Whether a run's ``n_components`` asks for model selection."""
    return n_components == AUTO


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` merged over :data:`DEFAULT_PARAMS` and checked; the errors name the fix.

    Raises
    ------
    ValueError
        An unknown name, or a value of the wrong type or out of its choices.
    """
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    merged = {**DEFAULT_PARAMS, **params}
    for name in ("n_components", "n_init", "max_iter", "k_min", "k_max"):
        if name == "n_components" and is_auto(merged[name]):
            continue
        if not isinstance(merged[name], int) or isinstance(merged[name], bool) or merged[name] < 1:
            hint = ' or "auto"' if SPECS[name].auto else ""
            raise ValueError(f"{name} must be a positive integer{hint}, got {merged[name]!r}")
    if is_auto(merged["n_components"]) and merged["k_min"] > merged["k_max"]:
        raise ValueError(
            f"k_min ({merged['k_min']}) must not exceed k_max ({merged['k_max']}) for "
            'n_components="auto"'
        )
    if not isinstance(merged["seed"], int) or merged["seed"] < 0:
        raise ValueError(f"seed must be a non-negative integer, got {merged['seed']!r}")
    for name in ("covariance_type", "backend", "criterion", "mode"):
        choices = SPECS[name].choices
        if merged[name] not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {merged[name]!r}")
    if not 0.0 < float(merged["holdout_fraction"]) < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {merged['holdout_fraction']!r}")
    margin = merged["promotion_margin"]
    if margin is not None and (not isinstance(margin, int | float) or margin < 0):
        raise ValueError(f"promotion_margin must be a number >= 0 or empty, got {margin!r}")
    half_life = merged["sample_weight_half_life_days"]
    if half_life is not None and (not _is_number(half_life) or half_life <= 0):
        raise ValueError(
            f"sample_weight_half_life_days must be a number > 0 or empty, got {half_life!r}"
        )
    rate = merged["false_alarm_rate"]
    if rate is not None and (not _is_number(rate) or not 0.0 < rate < 1.0):
        raise ValueError(f"false_alarm_rate must be in (0, 1) or empty, got {rate!r}")
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

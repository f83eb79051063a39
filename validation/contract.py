"""The telemetry data contract: one declarative YAML file, loaded into a :class:`Contract`.

The contract says which columns a telemetry batch has (an id, a timestamp and numeric features),
their types and ranges, how many rows a batch needs, whether extra columns are allowed, and the
drift thresholds. :mod:`validation.expectations` turns it into Great Expectations suites.

The default file is ``validation/contracts/telemetry.yaml``; ``EMFLOW_CONTRACT`` points at another.

Examples
--------
>>> from validation.contract import load_contract
>>> contract = load_contract(feature_columns=["cpu_util", "latency_ms"], extra_columns="allow")
>>> contract.required_columns
('event_id', 'ts', 'cpu_util', 'latency_ms')
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_CONTRACT_PATH = Path(__file__).resolve().parent / "contracts" / "telemetry.yaml"
EXTRA_COLUMN_POLICIES = ("allow", "refuse")


class ContractError(ValueError):
    """The contract file or an override is invalid; the message names the fix."""


@dataclass(frozen=True)
class FeatureSpec:
    """One numeric feature column: its inclusive range and what it measures."""

    name: str
    min: float
    max: float
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class DriftThresholds:
    """Thresholds above which :func:`validation.drift.drift_report` calls a batch drifted.

    Attributes
    ----------
    n_bins : int
        Number of reference-quantile bins used for PSI (and for the score histogram).
    psi : float
        Per-feature Population Stability Index threshold (0.1 moderate, 0.25 major shift).
    wasserstein : float
        Per-feature Wasserstein-1 distance threshold, in reference standard deviations.
    score_divergence : float
        Jensen-Shannon divergence (nats, at most ln 2) between the log-likelihood score
        distributions of the reference window and of the batch under the model.
    """

    n_bins: int = 10
    psi: float = 0.2
    wasserstein: float = 0.25
    score_divergence: float = 0.05


@dataclass(frozen=True)
class Contract:
    """A loaded telemetry contract (see ``validation/contracts/telemetry.yaml``).

    Attributes
    ----------
    name, version : str, int
        Identify the contract; they name the GX suites.
    id_column, timestamp_column : str
        Unique row id and timezone-aware timestamp columns.
    id_types, timestamp_types, feature_types : tuple of str
        Accepted pandas dtype names, as pandas prints them (``float64``, ``datetime64[us, UTC]``).
    features : dict of str to FeatureSpec
        Every feature the contract knows, with its range.
    feature_columns : tuple of str
        The features a batch must carry and the model trains on (a subset of ``features``).
    min_rows, max_rows : int, int or None
        Row-count bounds of one batch.
    extra_columns : {"allow", "refuse"}
        Policy for columns that are neither id, timestamp nor a feature column.
    drift : DriftThresholds
        Drift thresholds.
    path : str
        File the contract was loaded from (informational).
    """

    name: str
    version: int
    id_column: str
    id_types: tuple[str, ...]
    timestamp_column: str
    timestamp_types: tuple[str, ...]
    features: Mapping[str, FeatureSpec]
    feature_columns: tuple[str, ...]
    feature_types: tuple[str, ...]
    min_rows: int = 1
    max_rows: int | None = None
    extra_columns: str = "refuse"
    drift: DriftThresholds = field(default_factory=DriftThresholds)
    path: str = ""

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns every batch must have: id, timestamp, then the feature columns."""
        return (self.id_column, self.timestamp_column, *self.feature_columns)

    def feature(self, name: str) -> FeatureSpec:
        """Return the spec of feature ``name``."""
        return self.features[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (used for the fingerprint and stored beside reports)."""
        data = asdict(self)
        data["features"] = {name: asdict(spec) for name, spec in self.features.items()}
        return data

    @property
    def fingerprint(self) -> str:
        """sha256 of the contract's content (path excluded): changes when any rule changes."""
        content = self.to_dict()
        content.pop("path")
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def with_(self, **overrides: Any) -> Contract:
        """Return a checked copy with ``overrides`` applied (same keys as :func:`load_contract`)."""
        if "drift" in overrides and isinstance(overrides["drift"], Mapping):
            overrides["drift"] = replace(self.drift, **overrides["drift"])
        if "feature_columns" in overrides and overrides["feature_columns"] is not None:
            overrides["feature_columns"] = tuple(overrides["feature_columns"])
        elif "feature_columns" in overrides:
            overrides["feature_columns"] = tuple(self.features)
        unknown = set(overrides) - {f for f in self.__dataclass_fields__}
        if unknown:
            raise ContractError(
                f"unknown contract setting(s) {sorted(unknown)}; "
                f"valid ones are {sorted(self.__dataclass_fields__)}"
            )
        contract = replace(self, **overrides)
        _check(contract)
        return contract


def _check(contract: Contract) -> None:
    where = contract.path or "the contract"
    unknown = [c for c in contract.feature_columns if c not in contract.features]
    if unknown:
        raise ContractError(
            f"feature column(s) {unknown} have no range in {where}: add them under `features:` "
            f"with min/max, or choose from {list(contract.features)}"
        )
    if not contract.feature_columns:
        raise ContractError(f"no feature columns selected in {where}: list at least one")
    if len(set(contract.required_columns)) != len(contract.required_columns):
        raise ContractError(f"duplicate column names in {contract.required_columns} ({where})")
    if contract.extra_columns not in EXTRA_COLUMN_POLICIES:
        raise ContractError(
            f"extra_columns must be one of {EXTRA_COLUMN_POLICIES}, got {contract.extra_columns!r}"
        )
    for spec in contract.features.values():
        if not spec.min < spec.max:
            raise ContractError(f"feature {spec.name!r}: min must be below max in {where}")
    if contract.min_rows < 0 or (
        contract.max_rows is not None and contract.max_rows < contract.min_rows
    ):
        raise ContractError(f"need 0 <= min_rows <= max_rows in {where}")


def contract_from_dict(raw: Mapping[str, Any], *, path: str = "") -> Contract:
    """Build a :class:`Contract` from the parsed YAML mapping ``raw``."""
    try:
        features = {
            name: FeatureSpec(
                name=name,
                min=float(spec["min"]),
                max=float(spec["max"]),
                unit=str(spec.get("unit", "")),
                description=str(spec.get("description", "")),
            )
            for name, spec in raw["features"].items()
        }
        selected = raw.get("feature_columns") or list(features)
        contract = Contract(
            name=str(raw["name"]),
            version=int(raw.get("version", 1)),
            id_column=str(raw["id_column"]["name"]),
            id_types=tuple(raw["id_column"]["types"]),
            timestamp_column=str(raw["timestamp_column"]["name"]),
            timestamp_types=tuple(raw["timestamp_column"]["types"]),
            features=features,
            feature_columns=tuple(selected),
            feature_types=tuple(raw["feature_types"]),
            min_rows=int(raw.get("min_rows", 1)),
            max_rows=None if raw.get("max_rows") is None else int(raw["max_rows"]),
            extra_columns=str(raw.get("extra_columns", "refuse")),
            drift=DriftThresholds(**(raw.get("drift") or {})),
            path=path,
        )
    except (KeyError, TypeError) as exc:
        raise ContractError(
            f"contract {path or '<dict>'} is missing or mistypes {exc}; "
            f"compare it with {DEFAULT_CONTRACT_PATH}"
        ) from exc
    _check(contract)
    return contract


def load_contract(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Contract:
    """Load the contract YAML at ``path`` and apply ``overrides``.

    Parameters
    ----------
    path : path-like, optional
        Contract file; default ``EMFLOW_CONTRACT`` or ``validation/contracts/telemetry.yaml``.
    **overrides
        Any :class:`Contract` field, e.g. ``feature_columns=[...]``, ``extra_columns="allow"``,
        ``min_rows=10``, ``drift={"psi": 0.1}``.

    Returns
    -------
    Contract

    Raises
    ------
    ContractError
        If the file is missing or invalid, or an override is not allowed; the message names the fix.
    """
    import yaml

    chosen = Path(path or os.environ.get("EMFLOW_CONTRACT") or DEFAULT_CONTRACT_PATH)
    try:
        raw = yaml.safe_load(chosen.read_text())
    except FileNotFoundError as exc:
        raise ContractError(
            f"contract file {chosen} not found: pass an existing file or unset EMFLOW_CONTRACT"
        ) from exc
    except OSError as exc:  # a folder, no permission
        raise ContractError(
            f"contract file {chosen} cannot be read ({exc.strerror}): pass a readable YAML file "
            "or unset EMFLOW_CONTRACT"
        ) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:  # a binary file is not YAML either
        raise ContractError(f"contract file {chosen} is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ContractError(
            f"contract file {chosen} must hold a mapping (see {DEFAULT_CONTRACT_PATH})"
        )
    contract = contract_from_dict(raw, path=str(chosen))
    return contract.with_(**overrides) if overrides else contract

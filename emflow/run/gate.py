"""Gate step: align the challenger to the champion it was evaluated against, and decide."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.model.evaluation import Evaluation
from emflow.model.gate import Decision
from emflow.run.request import settings_for
from emflow.run.state import Evaluated, RunRequest, Trained

log = logging.getLogger(__name__)

#: Files written beside the trained model that travel with it into the registered folder.
SIDE_FILES = ("reference_summary.json", "training.json", "selection.json", "selection.csv")


def gate(
    evaluation: Evaluation | Mapping[str, Any], challenger_dir: str | Path, settings: Settings
) -> Decision:
    """Align the challenger to the evaluated champion, write it reordered, decide on promotion.

    :func:`emflow.model.gate.gate_models` with the champion of ``evaluation.champion_version``
    from the registry and the margin and threshold of ``settings``.
    """
    from emflow.model.gate import gate_models
    from emflow.model.telemetry import load_model_dir
    from emflow.registry.champion import version_model_dir
    from emflow.registry.tracking import connect

    evaluation = Evaluation.from_json(evaluation)
    challenger = load_model_dir(challenger_dir)
    champion = None
    if evaluation.champion_version is not None:
        champion = load_model_dir(
            version_model_dir(connect(settings), settings, evaluation.champion_version)
        )
    from emflow.model.selection import SELECTION_JSON

    return gate_models(
        evaluation,
        challenger,
        challenger_dir,
        champion,
        promotion_margin=settings.promotion_margin,
        alignment_threshold=settings.alignment_threshold,
        # K chosen by the selection (its table lies beside the model): a new K is a structure
        k_selected=(Path(challenger_dir) / SELECTION_JSON).is_file(),
    )


def _carry_side_files(trained_dir: Path, publish_dir: Path) -> None:
    """Copy the files written beside the trained model into the folder that gets registered."""
    if trained_dir.resolve() == publish_dir.resolve():
        return
    for name in SIDE_FILES:
        if (trained_dir / name).is_file():
            shutil.copy2(trained_dir / name, publish_dir / name)


def gate_challenger(
    request: RunRequest, trained: Trained, evaluated: Evaluated, settings: Settings | None = None
) -> Decision:
    """:func:`gate` for the run's challenger; the registered folder gets the side files too."""
    settings = settings_for(request, settings)
    decision = gate(evaluated.evaluation, trained.model_dir, settings)
    _carry_side_files(Path(trained.model_dir), Path(decision.model_dir))
    log.info("gate: %s", decision.reason)
    return decision

"""Gate step: align the challenger to the champion it was evaluated against, and decide."""

from __future__ import annotations

import dataclasses
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
    if decision.promote and decision.champion_version is not None:
        from emflow.registry import aliases as registry

        tags = _version_tags(settings, decision.champion_version)
        decision = not_over_a_newer_champion(
            decision, request.window_end, tags.get(registry.TAG_DATA_WINDOW)
        )
        rolled_from = tags.get(registry.TAG_ROLLBACK_FROM)
        if decision.promote and rolled_from:
            decision = not_over_a_rollback(
                decision,
                request.window_end,
                rolled_from,
                _version_tags(settings, rolled_from).get(registry.TAG_DATA_WINDOW),
                tags,
            )
    _carry_side_files(Path(trained.model_dir), Path(decision.model_dir))
    log.info("gate: %s", decision.reason)
    return decision


def not_over_a_newer_champion(
    decision: Decision, window_end: str | None, champion_window: str | None
) -> Decision:
    """``decision``, not promoting where the challenger's window ends before the champion's.

    A backfill (an older day triggered after newer ones) trains on data the champion has
    already outgrown; gated on that old day's holdout it can look better than the champion and
    would put an older model in service (QA probe). Its version is registered, with the reason,
    and ``emflow rollback --version N --force`` serves it where that is meant. Windows are
    ``YYYY-MM-DD`` days (``start..end``, end exclusive); unknown ones change nothing.
    """
    if not decision.promote or window_end is None or not champion_window:
        return decision
    champion_end = champion_window.split("..")[-1].strip()
    if str(window_end) >= champion_end:
        return decision
    return dataclasses.replace(
        decision,
        promote=False,
        reason=(
            f"rejected: the challenger's window ends {window_end}, before champion "
            f"v{decision.champion_version}'s ({champion_window}): a backfill does not replace a "
            "newer champion (serve it with `emflow rollback --version N --force` if that is "
            f"meant); gate said: {decision.reason}"
        ),
    )


def not_over_a_rollback(
    decision: Decision,
    window_end: str | None,
    rolled_from: str,
    rolled_from_window: str | None,
    champion_tags: Mapping[str, str],
) -> Decision:
    """``decision``, not promoting a retrain of a window the rolled-back version covered.

    An operator rolled the champion back from ``rolled_from``; re-running a day that version
    was trained on (a cleared run, a backfill) trains the same model again, and the gate would
    promote it over the version the operator chose (QA probe: the rollback did not stick). A
    window ending after that version's goes through as any: the pipeline moves on.
    """
    from emflow.registry import aliases as registry

    if not decision.promote or window_end is None or not rolled_from_window:
        return decision
    if str(window_end) > rolled_from_window.split("..")[-1].strip():
        return decision
    by = champion_tags.get(registry.TAG_ROLLBACK_BY, "?")
    at = champion_tags.get(registry.TAG_ROLLBACK_AT, "?")
    why = champion_tags.get(registry.TAG_ROLLBACK_REASON, "")
    return dataclasses.replace(
        decision,
        promote=False,
        reason=(
            f"rejected: v{decision.champion_version} serves by a rollback from v{rolled_from} "
            f"({by} at {at}: {why}), and this challenger's window (ends {window_end}) is one "
            f"v{rolled_from} covered ({rolled_from_window}): a retrain does not undo a rollback "
            "(serve it with `emflow rollback --version N --force` if that is meant); gate "
            f"said: {decision.reason}"
        ),
    )


def _version_tags(settings: Settings, version: str) -> dict[str, str]:
    """The tags of registry version ``version``."""
    from emflow.registry.tracking import connect

    found = connect(settings).get_model_version(settings.model_name, str(version))
    return dict(found.tags or {})

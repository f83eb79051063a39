"""Rollback step: move ``champion`` back, with who and why (the ``gmm_rollback`` DAG's task)."""

from __future__ import annotations

import logging
from typing import Any

from emflow.config import Settings

log = logging.getLogger(__name__)


def rollback_champion(
    version: int | str | None,
    reason: str,
    actor: str,
    settings: Settings | None = None,
    *,
    force: bool = False,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Point ``champion`` back at ``version`` (None: the previous champion), with a reason.

    A version that does not exist, or that the gate rejected (unless ``force``), is refused by
    :func:`emflow.registry.rollback.rollback` and the champion stays where it is.

    Returns
    -------
    dict
        What :func:`emflow.registry.rollback.rollback` returned, as JSON types.
    """
    import json

    from emflow.registry.rollback import rollback

    if not str(reason or "").strip():
        raise ValueError("a rollback needs a reason: say why the champion is being moved")
    settings = settings or Settings()
    result = rollback(
        version=None if version in (None, "") else str(version),
        reason=reason,
        actor=actor,
        settings=settings,
        force=force,
        request_id=request_id,
    )
    publish_rollback(result, settings)
    result = json.loads(json.dumps(result, default=str))
    log.info("rollback by %s: %s", actor, result)
    return result


def publish_rollback(result: dict[str, Any], settings: Settings) -> None:
    """The metrics of a rollback that moved the champion (the dashboards then say so).

    Best effort: the rollback is done; a metrics file that cannot be written is logged.
    """
    if not result.get("changed"):
        return
    from emflow.metrics import publish_rollback_metrics

    try:
        where = publish_rollback_metrics(settings.model_name, result["version"], settings)
    except OSError as error:
        log.warning("rollback metrics not written: %s", error)
        return
    log.info("rollback metrics -> %s", where)

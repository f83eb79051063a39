"""Point ``champion`` back at a prior version, after checking that the version loads and scores."""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Any

import numpy as np

from emflow.config import ROLLBACK_REASON_LENGTH, Settings
from emflow.registry import aliases as registry
from emflow.registry.tracking import connect, missing_sqlite_store, with_retries

log = logging.getLogger(__name__)


#: Registered-model tag holding the latest rollback's record (JSON).
TAG_LAST_ROLLBACK = "emflow.last_rollback"


class UnknownVersionError(ValueError):
    """A rollback named a registry version that does not exist."""


class RollbackCheckError(RuntimeError):
    """The rollback target failed to load or to score a sample; the champion was not moved."""


class RejectedVersionError(ValueError):
    """The rollback target is a version the gate rejected, and ``force`` was not given."""


class RepeatedRollbackError(ValueError):
    """A rollback without a version would undo the rollback that set the champion."""


def check_version_serves(settings: Settings, version: str) -> dict[str, Any]:
    """Load registry version ``version`` through pyfunc and score its input example.

    Returns
    -------
    dict
        ``rows`` scored and their ``mean_log_likelihood``.

    Raises
    ------
    RollbackCheckError
        When it does not load, has no input example, or scores non-finite values.
    """
    import mlflow

    from emflow.model.pyfunc_model import OUTPUT_COLUMNS, UntrustedArtifactError, check_artifact

    uri = f"models:/{settings.model_name}/{version}"
    with tempfile.TemporaryDirectory(prefix=f"emflow-check-v{version}-") as staging:
        try:
            # the copy that is checked is the copy that is loaded: nothing of the artifact is
            # imported before check_artifact has seen all of it
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=staging, tracking_uri=settings.tracking_uri
            )
            check_artifact(local)
            loaded = mlflow.pyfunc.load_model(local)
            example = loaded.input_example
            if example is None:
                raise RollbackCheckError(f"{uri} has no input example to score")
            scored = loaded.predict(example)
        except RollbackCheckError:
            raise
        except UntrustedArtifactError as error:
            raise RollbackCheckError(f"{uri}: {error}; champion left unchanged") from error
        except Exception as error:  # noqa: BLE001 - any failure means "do not serve this"
            raise RollbackCheckError(
                f"{uri} failed to load or score its input example ({type(error).__name__}: "
                f"{error}); champion left unchanged"
            ) from error
    missing = [c for c in OUTPUT_COLUMNS if c not in scored.columns]
    loglik = np.asarray(
        [np.nan] if missing else scored["log_likelihood"].to_numpy(dtype=np.float64)
    )
    if missing or not np.isfinite(loglik).all():
        raise RollbackCheckError(
            f"{uri} scored its input example badly (missing {missing} or non-finite "
            "log-likelihood); champion left unchanged"
        )
    return {"rows": int(len(scored)), "mean_log_likelihood": float(loglik.mean())}


def rollback(
    version: str | int | None = None,
    *,
    reason: str,
    actor: str | None = None,
    settings: Settings,
    force: bool = False,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Point ``champion`` at a prior version after checking that it loads and scores.

    A version the gate rejected is served only with ``force`` (and a warning in the log); the
    record says so.

    Parameters
    ----------
    version : str or int, optional
        Target version; default the ``previous-champion`` alias.
    reason : str
        Why (required; recorded on the version).
    actor : str, optional
        Who; default ``user@host`` of this process.
    settings : Settings
    force : bool
        Serve a version whose recorded decision is ``reject``.
    request_id : str, optional
        Identifies this rollback request (the DAG passes its run id): a retry of a request that
        completed returns its record instead of rolling back again.

    Returns
    -------
    dict
        ``version`` (new champion), ``previous`` (old champion), ``actor``, ``at``, ``reason``,
        ``changed`` and the ``check`` result.

    Raises
    ------
    UnknownVersionError
        The version does not exist (or no previous champion is recorded); nothing changed.
    RollbackCheckError
        The target does not load or score; nothing changed.
    RejectedVersionError
        The gate rejected the target and ``force`` is False; nothing changed.
    """
    shortest, longest = ROLLBACK_REASON_LENGTH
    if not reason or not shortest <= len(reason.strip()) <= longest:
        raise ValueError(
            f"a rollback needs a reason of {shortest} to {longest} characters (got "
            f"{len((reason or '').strip())}): pass reason='...' (CLI: --reason TEXT)"
        )
    actor = actor or registry.default_actor()
    name = settings.model_name
    if (missing := missing_sqlite_store(settings.tracking_uri)) is not None:
        raise UnknownVersionError(
            f"no registered model {name!r}: no registry at {missing} (MLflow store "
            f"{settings.tracking_uri}), nothing to roll back; check EMFLOW_HOME / "
            "MLFLOW_TRACKING_URI"
        )
    client = connect(settings)

    def retry(step: str, call: Any) -> Any:
        return with_retries(step, call, settings)

    if not retry("look up the model", lambda: registry.registered_model_exists(client, name)):
        raise UnknownVersionError(
            f"no registered model {name!r} at {settings.tracking_uri}: nothing to roll back "
            "(check MLFLOW_TRACKING_URI / EMFLOW_HOME)"
        )
    retry("clear locks of dead holders", lambda: registry.clear_dead_locks(client, name))
    # a rollback (or promotion) killed between its registry writes left its intent: finish it
    # first, so a retry ends where the uninterrupted run would have
    pending = retry(
        "finish an interrupted champion move",
        lambda: registry.finish_interrupted_move(client, name, holder=f"rollback by {actor}"),
    )
    if pending is not None and _is_this_rollback(pending, version):
        record = json.loads(pending["model_tags"][TAG_LAST_ROLLBACK])
        log.warning("finished the interrupted rollback of %s to v%s", name, record["version"])
        return {**record, "resumed": True}
    if request_id is not None:
        done = _last_rollback(client, name, settings)
        if done is not None and done.get("request_id") == request_id:
            log.info("rollback request %s was completed already: %s", request_id, done)
            return {**done, "resumed": True}
    current = retry(
        "read the champion", lambda: registry.alias_version(client, name, registry.CHAMPION)
    )
    if version is None:
        version = retry(
            "read the previous champion",
            lambda: registry.alias_version(client, name, registry.PREVIOUS_CHAMPION),
        )
        if version is None:
            raise UnknownVersionError(
                f"{name} has no previous champion recorded; pass an explicit version "
                "(--version N; `emflow status` lists them)"
            )
        if current is not None:  # "roll back" twice must not serve the version rolled away from
            _refuse_undoing_a_rollback(client, name, current, str(version), retry)
    target = str(version).strip()
    found = retry("read the version", lambda: registry.get_version(client, name, target))
    if found is None:
        known = [
            str(v.version)
            for v in retry("list versions", lambda: registry.list_versions(client, name))
        ]
        raise UnknownVersionError(
            f"version {target!r} of {name} does not exist (known versions: "
            f"{', '.join(reversed(known)) or 'none'}); champion stays "
            f"{'v' + current if current else 'unset'}"
        )
    target = str(found.version)  # the registry's spelling: "02" is version 2
    at = registry.now_iso()
    if target == current:
        return {
            "version": target,
            "previous": current,
            "actor": actor,
            "at": at,
            "reason": reason,
            "changed": False,
            "check": None,
        }
    tags = found.tags or {}
    rejected = tags.get(registry.TAG_DECISION) == "reject"
    if rejected and not force:
        raise RejectedVersionError(
            f"v{target} of {name} was rejected by the gate ({tags.get(registry.TAG_REASON, '')}"
            f"); champion stays {'v' + current if current else 'unset'}. To serve it anyway, "
            "roll back with force (CLI: --force; gmm_rollback: force=true)"
        )
    if rejected:
        log.warning("rollback by %s serves v%s, which the gate rejected (forced)", actor, target)
    check = check_version_serves(settings, target)
    record = {
        "version": target,
        "previous": current,
        "actor": actor,
        "at": at,
        "reason": reason,
        "changed": True,
        "check": check,
        "forced": rejected,
        "request_id": request_id,
    }
    move = retry(
        "move the champion alias",
        lambda: registry.move_champion(
            client,
            name,
            target,
            expected_champion=current,
            holder=f"rollback by {actor}",
            version_tags={
                registry.TAG_ROLLBACK_BY: actor,
                registry.TAG_ROLLBACK_AT: at,
                registry.TAG_ROLLBACK_REASON: reason[:5000],
                registry.TAG_ROLLBACK_FROM: str(current),
            },
            # the record is part of the move: a retry finds it, however far a killed try got
            model_tags={TAG_LAST_ROLLBACK: json.dumps(record, default=str)[:5000]},
        ),
    )
    if not move.moved:
        raise RuntimeError(
            f"the champion moved from v{current} to v{move.current} during the rollback; "
            "nothing changed: check `emflow status` and retry"
        )
    log.warning(
        "rolled back %s champion v%s -> v%s by %s: %s", name, current, target, actor, reason
    )
    return record


def _last_rollback(client: Any, name: str, settings: Settings) -> dict[str, Any] | None:
    tags = with_retries("read the model", lambda: client.get_registered_model(name), settings).tags
    text = (tags or {}).get(TAG_LAST_ROLLBACK)
    return json.loads(text) if text else None


def _is_this_rollback(intent: dict[str, Any], version: str | int | None) -> bool:
    """Whether a finished-on-retry move was a rollback to the version now asked for."""
    if registry.TAG_ROLLBACK_BY not in (intent.get("version_tags") or {}):
        return False  # a promotion's move: this rollback still has to happen
    return version is None or str(version).strip().lstrip("0") == str(intent["to"])


def _refuse_undoing_a_rollback(
    client: Any, name: str, current: str, previous: str, retry: Any
) -> None:
    """Raise when the champion came from ``previous`` by a rollback (a second one would undo it).

    After a rollback v2 -> v1, ``previous-champion`` is v2: a second plain rollback (an operator
    unsure whether the first worked, QA probe) served v2 again. The version must be named then.
    """
    found = retry("read the champion's record", lambda: registry.get_version(client, name, current))
    tags = (found.tags or {}) if found is not None else {}
    if tags.get(registry.TAG_ROLLBACK_FROM) != previous:
        return
    raise RepeatedRollbackError(
        f"v{current} of {name} is champion by a rollback from v{previous} "
        f"({tags.get(registry.TAG_ROLLBACK_BY, '?')} at {tags.get(registry.TAG_ROLLBACK_AT, '?')}: "
        f"{tags.get(registry.TAG_ROLLBACK_REASON, '')}); rolling back to the previous champion "
        f"would serve v{previous} again. Champion stays v{current}; to undo that rollback, name "
        f"the version (--version {previous}; gmm_rollback: version={previous})"
    )

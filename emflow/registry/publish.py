"""Publish one retrain: an MLflow run, one registered version, the aliases as the gate decided.

:func:`publish` records the run (params, per-iteration curves, plots, model card:
:mod:`emflow.registry.run_record`), registers the pyfunc model version with its decision, moves
``challenger`` and, on promotion, ``champion`` (compare-and-set under the promotion lock).
Retried with the same ``run_key`` it never adds a version.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.model.gate import Decision
from emflow.model.telemetry import load_model_dir
from emflow.records import Record
from emflow.registry import aliases as registry
from emflow.registry.run_record import (
    example_frame,
    log_run_contents,
    model_card,
    run_params,
    window_text,
)
from emflow.registry.tracking import connect, ensure_experiment, find_run_by_key, with_retries

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
#: tag of a logged model: SHA-256 of the model folder's files (a retry reuses a logged model of
#: the same files)
TAG_MODEL_DIGEST = "emflow.model_sha256"
#: prefix of a logged model's writer tags (host, pid): a retry removes the unfinished logged model
#: of an attempt whose process is gone
WRITER_PREFIX = "emflow.writer_"


@dataclass(frozen=True)
class PublishResult(Record):
    """What :func:`publish` left in the registry.

    Attributes
    ----------
    version : str
        Registered model version of this retrain.
    run_id : str
        MLflow run that logged it.
    model_uri : str
        ``models:/<name>/<version>``.
    decision : str
        ``"promote"`` or ``"reject"`` as recorded (a promotion pre-empted by a concurrent run is
        recorded as ``"reject"``).
    promoted : bool
        Whether this version is the champion now.
    champion_version : str or None
        The champion after publishing.
    reason : str
        The recorded reason.
    reused : bool
        True when an earlier attempt with the same ``run_key`` had already registered the version.
    """

    version: str
    run_id: str
    model_uri: str
    decision: str
    promoted: bool
    champion_version: str | None
    reason: str
    reused: bool = False


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the body, restoring the previous values after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas", "scipy")]


def publish(
    decision: Decision | Mapping[str, Any],
    challenger_dir: str | Path,
    *,
    run_key: str,
    data_window: str | tuple[str, str],
    train_info: Mapping[str, Any],
    settings: Settings,
    validation_report: Any = None,
    train_sample: Any = None,
) -> PublishResult:
    """Log one MLflow run for this retrain, register the model version, and move the aliases.

    Parameters
    ----------
    decision : Decision or its ``to_dict()``
        From :func:`gate`; ``decision.model_dir`` (the aligned model) is what gets registered.
    challenger_dir : str or Path
        The trained folder; used when the decision names no ``model_dir``.
    run_key : str
        Identifies the pipeline run (e.g. Airflow's ``dag_id/run_id``). A retry with the same key
        finds the version registered before and only completes what is missing.
    data_window : str or (str, str)
        The telemetry window trained on (``"2026-11-01..2026-11-07"`` or the pair).
    train_info : mapping
        Facts from the train task logged as params/metrics (scalars), e.g. ``n_train_rows``,
        ``device``, ``seed``, ``fit_seconds``; lists/arrays are skipped except
        ``restart_lower_bounds`` (used when the model folder lacks them).
    settings : Settings
        Registry, experiment, retry knobs.
    validation_report : dict, str or Path, optional
        The validation result (JSON-ready dict or a file) logged as ``validation/`` artifact.
    train_sample : DataFrame, array or path, optional
        Rows drawn in the PCA components plot and used as the input example.

    Returns
    -------
    PublishResult

    Raises
    ------
    emflow.tracking.TrackingUnavailableError
        When the tracking server stays unreachable; the model stays in its folder and the task
        can be retried with the same ``run_key``.
    """
    decision = Decision.from_dict(decision)
    data_window = window_text(data_window)
    model_dir = Path(decision.model_dir or challenger_dir)
    model = load_model_dir(model_dir)
    name = settings.model_name
    keep_note = (
        f"The model is kept at {model_dir}; retrying with run_key {run_key!r} registers it once."
    )

    def retry(step: str, call: Any) -> Any:
        return with_retries(step, call, settings, keep_note=keep_note)

    client = connect(settings)
    retry("clear locks of dead holders", lambda: registry.clear_dead_locks(client, name))
    existing = retry(
        "look up the run key", lambda: registry.find_version_by_run_key(client, name, run_key)
    )
    if existing is not None and existing.tags.get("emflow.published") == "complete":
        log.info("run key %s already published as version %s", run_key, existing.version)
        return _result_from_version(client, name, existing, reused=True, settings=settings)

    experiment_id = retry("create the experiment", lambda: ensure_experiment(client, settings))
    run = retry("find the run", lambda: find_run_by_key(client, experiment_id, run_key))
    if run is None:
        run = retry(
            "start the run",
            lambda: client.create_run(
                experiment_id,
                run_name=f"retrain {data_window}",
                tags={registry.TAG_RUN_KEY: run_key, registry.TAG_DATA_WINDOW: data_window},
            ),
        )
    run_id = run.info.run_id
    params = run_params(model, train_info, data_window, run_key)

    if existing is None:
        log_run_contents(
            client, run, model, train_info, decision, params, validation_report, train_sample, retry
        )
        existing = retry(
            "register the model version",
            lambda: _register(
                client,
                settings,
                run_id,
                model,
                model_dir,
                decision,
                run_key,
                data_window,
                train_sample,
                experiment_id,
            ),
        )
    version = str(existing.version)

    card = model_card(
        settings=settings,
        version=version,
        run_id=run_id,
        run_key=run_key,
        data_window=data_window,
        decision=decision,
        model=model,
        params=params,
    )
    retry("log the model card", lambda: client.log_text(run_id, card, "model_card.md"))

    final_decision, reason = decision.label, decision.reason
    retry("set the challenger alias", lambda: _point_challenger(client, name, version))
    if decision.promote:
        # a retry after the move (its decision not yet recorded) must not move again: the
        # champion may have moved on since (an operator's rollback, a later run's promotion)
        move = retry(
            "move the champion alias",
            lambda: registry.move_champion(
                client,
                name,
                version,
                expected_champion=decision.champion_version,
                holder=f"{run_key} ({registry.default_actor()})",
                version_tags={registry.TAG_PROMOTED_AT: registry.now_iso()},
                done_tag=registry.TAG_PROMOTED_AT,
            ),
        )
        if not move.moved:
            final_decision = "reject"
            how = retry("read how the champion moved", lambda: _how_it_moved(client, name, move))
            reason = (
                f"not promoted: the champion moved from "
                f"{'none' if move.previous is None else 'v' + move.previous} to v{move.current} "
                f"after this challenger was evaluated ({how}); "
                f"gate said: {decision.reason}"
            )
            log.warning("%s", reason)

    def finish() -> None:
        client.set_model_version_tag(name, version, registry.TAG_DECISION, final_decision)
        client.set_model_version_tag(name, version, registry.TAG_REASON, reason[:5000])
        client.set_tag(run_id, registry.TAG_DECISION, final_decision)
        client.set_tag(run_id, registry.TAG_REASON, reason[:5000])
        client.set_tag(run_id, "emflow.model_version", version)
        client.set_model_version_tag(name, version, "emflow.published", "complete")
        if client.get_run(run_id).info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")

    retry("record the decision", finish)
    result = _result_from_version(
        client, name, client.get_model_version(name, version), reused=False, settings=settings
    )
    log.info("published %s v%s: %s (%s)", name, version, result.decision, result.reason)
    return result


def _how_it_moved(client: Any, name: str, move: Any) -> str:
    """Who moved the champion away from the version this challenger was gated against."""
    if move.current is None:
        return "the champion alias was removed"
    tags = client.get_model_version(name, move.current).tags or {}
    if move.previous is not None and tags.get(registry.TAG_ROLLBACK_FROM) == move.previous:
        return f"a rollback by {tags.get(registry.TAG_ROLLBACK_BY, '?')} moved it"
    return "a concurrent run promoted first"


def _point_challenger(client: Any, name: str, version: str) -> None:
    """``challenger`` -> ``version`` unless a later registration holds it already.

    The alias names the latest trained challenger: a retried publish of an earlier run (its
    version number lower) leaves a later run's challenger in place, as the runs in order would.
    """
    current = registry.alias_version(client, name, registry.CHALLENGER)
    if current is not None and int(current) > int(version):
        return
    client.set_registered_model_alias(name, registry.CHALLENGER, version)


def _register(
    client: Any,
    settings: Settings,
    run_id: str,
    model: Any,
    model_dir: Path,
    decision: Decision,
    run_key: str,
    data_window: str,
    train_sample: Any,
    experiment_id: str,
) -> Any:
    """Log the pyfunc model in ``run_id`` and register it tagged with ``run_key`` (once)."""
    import mlflow
    from mlflow.models import infer_signature

    from emflow.model.pyfunc_model import GMM_ARTIFACT, LOADER_MODULE, score_frame

    name = settings.model_name
    found = registry.find_version_by_run_key(client, name, run_key)
    if found is not None:  # the previous attempt registered before losing the connection
        return found
    tags = {
        registry.TAG_RUN_KEY: run_key,
        registry.TAG_DATA_WINDOW: data_window,
        registry.TAG_DECISION: decision.label,
        registry.TAG_REASON: decision.reason[:5000],
        registry.TAG_MLFLOW_RUN: run_id,
        "emflow.holdout_mean_loglik": str(decision.challenger_mean_loglik),
        "emflow.alignment_mean_cost": str(decision.alignment_mean_cost),
        "emflow.compared_with": str(decision.champion_version),
    }
    example = example_frame(model, train_sample)
    signature = infer_signature(example, score_frame(model, example))
    registry.ensure_registered_model(
        client, name, description="emflow Gaussian mixture over telemetry (gmm_core arrays)"
    )
    digest = _files_digest(Path(model_dir))
    logged = _logged_model_of_attempt(client, experiment_id, run_id, run_key, digest)
    if logged is not None:  # an earlier attempt logged it and was stopped before registering
        return _create_version(client, name, logged.model_uri, logged.model_id, tags, run_key)
    with tempfile.TemporaryDirectory(prefix="emflow-model-") as tmp:
        # MLflow names the data folder after the source folder: stage it as "gmm". Data only:
        # the loader is the installed emflow package (emflow.model.pyfunc_model), no code and
        # no pickle travels with the model (a registry writer cannot change what runs).
        gmm_files = Path(tmp) / GMM_ARTIFACT
        gmm_files.mkdir()
        for path in sorted(Path(model_dir).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, gmm_files / path.name)
        with (
            mlflow.start_run(run_id=run_id, experiment_id=experiment_id),
            _env(MLFLOW_LOG_UV_FILES="false"),
        ):  # not the whole project's lock file
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                loader_module=LOADER_MODULE,
                data_path=str(gmm_files),
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                tags={
                    registry.TAG_RUN_KEY: run_key,
                    TAG_MODEL_DIGEST: digest,
                    **registry.writer_tags(WRITER_PREFIX),
                },
            )
    return _create_version(client, name, info.model_uri, info.model_id, tags, run_key)


def _files_digest(model_dir: Path) -> str:
    """SHA-256 over the model folder's files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _logged_model_of_attempt(
    client: Any, experiment_id: str, run_id: str, run_key: str, digest: str
) -> Any:
    """The finished logged model of these files an earlier attempt left in ``run_id``, or None.

    An attempt stopped between ``log_model`` and the registration would otherwise leave its
    logged model behind, unregistered, beside the retry's. One of other files (the run key
    trained again) is left alone. One still PENDING was stopped while uploading, or is another
    attempt's upload now: it is deleted when its writer's process is gone (same host) or it is
    older than the lock's stale age (an upload of a model folder takes seconds), so the retry
    ends with the one logged model an uninterrupted run leaves.
    """
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{registry.TAG_RUN_KEY}` = '{registry.quoted(run_key)}'",
        )
    except MlflowException as error:  # a run key the filter cannot hold: log the model anew
        if getattr(error, "error_code", "") != "INVALID_PARAMETER_VALUE":
            raise  # the server's other errors go to the caller's retries
        return None
    ours = [
        m
        for m in found
        if m.source_run_id == run_id and (m.tags or {}).get(registry.TAG_RUN_KEY) == run_key
    ]
    for m in ours:
        if m.status == LoggedModelStatus.PENDING and _abandoned(m):
            log.info("deleting logged model %s left unfinished by a stopped attempt", m.model_id)
            try:
                client.delete_logged_model(m.model_id)
            except MlflowException as error:  # deleted by another retry meanwhile
                if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
    ready = [
        m
        for m in ours
        if m.status == LoggedModelStatus.READY and (m.tags or {}).get(TAG_MODEL_DIGEST) == digest
    ]
    return min(ready, key=lambda m: m.creation_timestamp) if ready else None


def _abandoned(logged: Any) -> bool:
    """Whether a PENDING logged model's writer stopped: its process gone, or the upload stale."""
    age_s = time.time() - logged.creation_timestamp / 1000.0
    return registry.writer_gone(logged.tags or {}, WRITER_PREFIX) or (
        age_s > registry.LOCK_STALE_AFTER_S
    )


def _create_version(
    client: Any, name: str, model_uri: str, model_id: str, tags: dict[str, str], run_key: str
) -> Any:
    """Register ``model_uri`` as a version of ``name`` tagged with ``run_key``, once."""
    # two attempts of one run key at once (a zombie task and its retry) both got here: the
    # look-up and the registration happen under the family's register lock, so one registers
    # and the other finds its version
    with registry.family_lock(client, name, purpose="register", holder=run_key):
        found = registry.find_version_by_run_key(client, name, run_key)
        if found is not None:
            return found
        return client.create_model_version(
            name,
            model_uri,
            run_id=tags[registry.TAG_MLFLOW_RUN],
            tags=tags,
            description=f"retrain {tags[registry.TAG_DATA_WINDOW]} ({run_key})",
            model_id=model_id,
        )


def _result_from_version(
    client: Any, name: str, version: Any, *, reused: bool, settings: Settings
) -> PublishResult:
    champion = with_retries(
        "read the champion alias",
        lambda: registry.alias_version(client, name, registry.CHAMPION),
        settings,
    )
    v = str(version.version)
    return PublishResult(
        version=v,
        run_id=str(version.run_id),
        model_uri=f"models:/{name}/{v}",
        decision=version.tags.get(registry.TAG_DECISION, ""),
        promoted=champion == v,
        champion_version=champion,
        reason=version.tags.get(registry.TAG_REASON, ""),
        reused=reused,
    )

"""Registry conventions: one registered model per family, aliases, tags, and safe alias moves.

Aliases
    ``champion`` is what serving loads (``models:/<name>@champion``); ``challenger`` is the latest
    candidate whatever its decision; ``previous-champion`` is the champion before the last move
    (promotion or rollback), the default rollback target.
Version tags (``emflow.*``)
    run key (idempotency), data window, decision, reason, holdout log-likelihood, alignment cost;
    rollbacks add who/when/why.

MLflow has no compare-and-set on aliases, so champion moves happen under a registry-wide lock
built from an operation every backend makes atomic: creating a registered model whose name is
taken fails. Inside the lock the champion is re-read and compared with the version the decision
was made against, so two runs finishing at once never both promote.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"

TAG_RUN_KEY = "emflow.run_key"
TAG_DATA_WINDOW = "emflow.data_window"
TAG_DECISION = "emflow.decision"
TAG_REASON = "emflow.reason"
TAG_MLFLOW_RUN = "emflow.mlflow_run_id"
TAG_PREVIOUS_CHAMPION = "emflow.previous_champion"
TAG_PROMOTED_AT = "emflow.promoted_at"
TAG_ROLLBACK_BY = "emflow.rollback_by"
TAG_ROLLBACK_AT = "emflow.rollback_at"
TAG_ROLLBACK_REASON = "emflow.rollback_reason"
TAG_ROLLBACK_FROM = "emflow.rollback_from"
#: Registered-model tag holding a champion move in progress (cleared when it is done).
TAG_MOVE_INTENT = "emflow.champion_move"

LOCK_STALE_AFTER_S = 300.0


class ChampionMovedError(RuntimeError):
    """The champion changed between the decision and the alias move."""


class LockTimeoutError(RuntimeError):
    """A family lock stayed taken by a live holder (not an unreachable tracking server)."""


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_actor() -> str:
    """``user@host`` of this process (for rollback records when no actor is given)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def _is_error(error: Exception, code: str) -> bool:
    return getattr(error, "error_code", None) == code


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    """Create the registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as error:
        if not _is_error(error, "RESOURCE_ALREADY_EXISTS"):
            raise


def registered_model_exists(client: MlflowClient, name: str) -> bool:
    """Whether ``name`` is a registered model."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if _is_error(error, "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise
    return True


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """Version the alias points at (as str), or None when unset or the model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if _is_error(error, "RESOURCE_DOES_NOT_EXIST") or _is_error(
            error, "INVALID_PARAMETER_VALUE"
        ):
            return None
        raise


def get_version(client: MlflowClient, name: str, version: str | int) -> Any | None:
    """The ModelVersion, or None when ``version`` does not exist (or is not a number)."""
    from mlflow.exceptions import MlflowException

    if not str(version).isdigit():
        return None
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if _is_error(error, "RESOURCE_DOES_NOT_EXIST") or _is_error(
            error, "INVALID_PARAMETER_VALUE"
        ):
            return None
        raise


def quoted(value: str) -> str:
    """``value`` for a quoted string of an MLflow search filter (backslashes, quotes escaped)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_version_by_run_key(client: MlflowClient, name: str, run_key: str) -> Any | None:
    """The version tagged with ``run_key`` (the oldest, should there ever be two), or None."""
    name_quoted = name.replace("'", "\\'")
    found = client.search_model_versions(
        f"name = '{name_quoted}' and tags.`{TAG_RUN_KEY}` = '{quoted(run_key)}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


def list_versions(client: MlflowClient, name: str) -> list[Any]:
    """All versions of ``name``, newest first."""
    name_quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name = '{name_quoted}'")
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def lock_name(name: str, purpose: str = "promotion") -> str:
    """Name of the registered model used as the ``purpose`` lock of model family ``name``."""
    return f"{name}.{purpose}-lock"


def promotion_lock(
    client: MlflowClient, name: str, *, holder: str, timeout_s: float = 120.0
) -> contextlib.AbstractContextManager[None]:
    """Hold the family's promotion lock (champion moves) while the body runs."""
    return family_lock(client, name, purpose="promotion", holder=holder, timeout_s=timeout_s)


@contextlib.contextmanager
def family_lock(
    client: MlflowClient, name: str, *, purpose: str, holder: str, timeout_s: float = 120.0
) -> Iterator[None]:
    """Hold the family's ``purpose`` lock while the body runs.

    Acquiring creates the registered model ``<name>.<purpose>-lock`` (atomic: a taken name fails
    on every backend); releasing deletes it. The lock records its holder's host and process id:
    a holder on this host whose process is gone (killed mid-publish) is broken at once; a lock
    older than ``LOCK_STALE_AFTER_S`` is broken whatever its host.

    Raises
    ------
    LockTimeoutError
        When the lock stays taken for ``timeout_s`` seconds.
    """
    from mlflow.exceptions import MlflowException

    lock = lock_name(name, purpose)
    deadline = time.monotonic() + timeout_s
    wait_s = 0.05
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"holder": holder, "acquired_at": now_iso(), **writer_tags()},
                description=f"emflow {purpose} lock of {name}",
            )
            break
        except MlflowException as error:
            # RESOURCE_DOES_NOT_EXIST: the store saw the name taken, then looked the holder up
            # after it had released: contended all the same, try again.
            if not (
                _is_error(error, "RESOURCE_ALREADY_EXISTS")
                or _is_error(error, "RESOURCE_DOES_NOT_EXIST")
            ):
                raise
        _break_if_stale(client, lock)
        if time.monotonic() > deadline:
            raise LockTimeoutError(
                f"{purpose} lock {lock!r} stayed taken for {timeout_s:.0f} s; if no other "
                f"publish or rollback is running, delete the registered model {lock!r}"
            )
        time.sleep(wait_s)
        wait_s = min(1.0, wait_s * 2)
    try:
        yield
    finally:
        try:
            client.delete_registered_model(lock)
        except MlflowException as error:  # broken as stale by someone else meanwhile
            log.warning("could not release lock %s: %s", lock, error)


def _break_if_stale(client: MlflowClient, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(lock)
    except MlflowException:
        return
    tags = held.tags or {}
    age_s = time.time() - held.creation_timestamp / 1000.0
    gone = writer_gone(tags)
    if not gone and age_s <= LOCK_STALE_AFTER_S:
        return
    log.warning(
        "breaking lock %s held by %s for %.0f s: %s",
        lock,
        tags.get("holder"),
        age_s,
        f"its process {tags.get('pid')} on this host is gone" if gone else "stale",
    )
    with contextlib.suppress(MlflowException):
        again = client.get_registered_model(lock)  # the same lock, not a new holder's
        if again.creation_timestamp == held.creation_timestamp:
            client.delete_registered_model(lock)


LOCK_PURPOSES = ("promotion", "register")


def clear_dead_locks(client: MlflowClient, name: str) -> None:
    """Break the family's locks whose holder process is gone (or that are stale).

    A publish or rollback killed while holding a lock leaves it behind; its retry may not need
    that lock again (the step is done), so it clears what a dead holder left first.
    """
    for purpose in LOCK_PURPOSES:
        _break_if_stale(client, lock_name(name, purpose))


def writer_tags(prefix: str = "") -> dict[str, str]:
    """Tags naming this process (host, pid) on what it writes, for :func:`writer_gone`."""
    return {f"{prefix}host": socket.gethostname(), f"{prefix}pid": str(os.getpid())}


def writer_gone(tags: Mapping[str, str], prefix: str = "") -> bool:
    """Whether the writer named by :func:`writer_tags` ran on this host and its process is gone."""
    host, pid = tags.get(f"{prefix}host"), str(tags.get(f"{prefix}pid", ""))
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass(frozen=True)
class ChampionMove:
    """Outcome of :func:`move_champion`."""

    moved: bool
    version: str
    previous: str | None
    current: str | None


def _apply_move(client: MlflowClient, name: str, intent: dict[str, Any]) -> None:
    """Carry out a recorded champion move; every step is idempotent."""
    version, previous = str(intent["to"]), intent.get("from")
    client.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(previous))
        client.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, str(previous))
    for key, value in (intent.get("version_tags") or {}).items():
        client.set_model_version_tag(name, version, key, value)
    for key, value in (intent.get("model_tags") or {}).items():  # e.g. the rollback's record
        client.set_registered_model_tag(name, key, value)
    client.delete_registered_model_tag(name, TAG_MOVE_INTENT)  # last: the move is complete


def pending_move(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """The champion move an interrupted publish or rollback recorded and did not finish."""
    try:
        tags = client.get_registered_model(name).tags or {}
    except Exception:  # noqa: BLE001 - no model, no move
        return None
    return json.loads(tags[TAG_MOVE_INTENT]) if TAG_MOVE_INTENT in tags else None


def finish_interrupted_move(
    client: MlflowClient, name: str, *, holder: str
) -> dict[str, Any] | None:
    """Finish a champion move a killed process began (under the promotion lock).

    Returns
    -------
    dict or None
        The move's intent (``from``, ``to``, ``version_tags``) when one was finished.
    """
    if pending_move(client, name) is None:
        return None
    with promotion_lock(client, name, holder=holder):
        return _finish_locked(client, name)


def _finish_locked(client: MlflowClient, name: str) -> dict[str, Any] | None:
    intent = pending_move(client, name)
    if intent is not None:
        log.warning(
            "finishing the champion move v%s -> v%s that an interrupted %s began",
            intent.get("from"),
            intent["to"],
            intent.get("holder", "process"),
        )
        _apply_move(client, name, intent)
    return intent


def move_champion(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    expected_champion: str | None,
    holder: str,
    version_tags: dict[str, str] | None = None,
    model_tags: dict[str, str] | None = None,
    done_tag: str | None = None,
) -> ChampionMove:
    """Point ``champion`` at ``version`` iff it still points at ``expected_champion``.

    Under :func:`promotion_lock`: finish a move a killed process left half-done; re-read the
    champion; when it equals ``expected_champion`` (None: no champion), record the move's
    intent on the registered model, move ``champion``, keep the old one as
    ``previous-champion``, tag ``version`` with ``version_tags`` and the registered model
    with ``model_tags``, and clear the intent.
    Otherwise move nothing and report the current champion. A process killed anywhere in
    between leaves the intent, and the next move (or a retry) completes it.

    ``done_tag``: a version tag only this move sets (one of ``version_tags``, e.g. the
    publish's promotion time). A version that carries it was moved by an earlier attempt of
    the same caller, and what happened to the champion since (an operator's rollback, a
    later promotion) stands: reported as moved, nothing is moved again.
    """
    version = str(version)
    with promotion_lock(client, name, holder=holder):
        _finish_locked(client, name)
        current = alias_version(client, name, CHAMPION)
        expected = None if expected_champion is None else str(expected_champion)
        if current == version:  # a retried task whose earlier attempt moved it already
            return ChampionMove(moved=True, version=version, previous=expected, current=version)
        if done_tag is not None and done_tag in (
            client.get_model_version(name, version).tags or {}
        ):
            return ChampionMove(moved=True, version=version, previous=expected, current=current)
        if current != expected:
            return ChampionMove(moved=False, version=version, previous=expected, current=current)
        intent = {
            "from": current,
            "to": version,
            "version_tags": dict(version_tags or {}),
            "model_tags": dict(model_tags or {}),
            "holder": holder,
        }
        client.set_registered_model_tag(name, TAG_MOVE_INTENT, json.dumps(intent))
        _apply_move(client, name, intent)
        return ChampionMove(moved=True, version=version, previous=current, current=version)

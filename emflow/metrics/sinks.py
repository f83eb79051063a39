"""Where a run's metrics go: its model's group on a Pushgateway, else a merged textfile."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emflow.metrics.spec import (
    METRICS,
    PERSISTENT,
    PUSHGATEWAY_JOB,
    ROLLBACK_FAMILIES,
    ROLLBACK_JOB,
    build_registry,
    build_rollback_registry,
)

logger = logging.getLogger(__name__)


class MetricsPushError(RuntimeError):
    """The Pushgateway could not be reached; the metrics were kept in the textfile instead."""


# ---------------------------------------------------------------------------------------------
# sinks


def _merged_textfile_registry(new_registry, old_text: str, model: str, owned=None):
    """``new_registry`` merged with what the old textfile keeps.

    Kept: other models' samples, and this model's :data:`~emflow.metrics.spec.PERSISTENT`
    families that the run did not set. With ``owned`` (family names: a rollback's), only those
    families of this model are replaced and every other sample is kept.
    """
    from prometheus_client.core import CollectorRegistry, Metric
    from prometheus_client.parser import text_string_to_metric_families

    new_families = {family.name: family for family in new_registry.collect()}
    merged: dict[str, Metric] = {}
    for name, family in new_families.items():
        copy = Metric(family.name, family.documentation, family.type)
        copy.samples = list(family.samples)
        merged[name] = copy
    for family in text_string_to_metric_families(old_text):
        # this model's series are the latest run's; only PERSISTENT families it did not set
        # keep their old samples (other models' samples are left alone)
        keep = [
            s
            for s in family.samples
            if s.labels.get("model") != model
            or (family.name in PERSISTENT and family.name not in new_families)
            or (owned is not None and family.name not in owned)
            # a run leaves the rollback's families (on a Pushgateway: a group of their own)
            or (owned is None and family.name in ROLLBACK_FAMILIES)
        ]
        if not keep:
            continue
        target = merged.setdefault(
            family.name, Metric(family.name, family.documentation, family.type)
        )
        target.samples.extend(keep)

    class _Families:
        def collect(self):
            return list(merged.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return registry


def write_textfile(registry, path: Path, model: str, owned=None) -> Path:
    """Merge ``registry`` into the textfile-collector file at ``path`` atomically; return it.

    ``owned``: see :func:`_merged_textfile_registry` (None: a run's, replacing its model's).

    A previous file that cannot be parsed is renamed to ``<name>.unreadable-<unix time>`` (never
    deleted) and a warning is logged.
    """
    from prometheus_client import write_to_textfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_write = registry
    if path.exists():
        old_text = path.read_text(encoding="utf-8")
        try:
            to_write = _merged_textfile_registry(registry, old_text, model, owned)
        except ValueError as error:
            kept = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            path.rename(kept)
            logger.warning(
                "metrics textfile %s was unreadable (%s); kept it as %s", path, error, kept
            )
            to_write = registry
    write_to_textfile(str(path), to_write)
    return path


def _pushgateway_target(url: str, model: str) -> str:
    base = url if "://" in url else f"http://{url}"
    return f"{base.rstrip('/')}/metrics/job/{PUSHGATEWAY_JOB}/model/{model}"


def _gateway_values(url: str, model: str, names: tuple[str, ...]) -> dict[str, float]:
    """The values of ``names`` (unlabelled but for job/model) in this model's Pushgateway group."""
    import json
    import urllib.request

    base = url if "://" in url else f"http://{url}"
    with urllib.request.urlopen(f"{base.rstrip('/')}/api/v1/metrics", timeout=10) as response:
        groups = json.load(response).get("data") or []
    found: dict[str, float] = {}
    for group in groups:
        if group.get("labels") != {"job": PUSHGATEWAY_JOB, "model": model}:
            continue
        for name in names:
            samples = (group.get(name) or {}).get("metrics") or []
            if samples:
                found[name] = float(samples[0]["value"])
    return found


def _replace_group(url: str, registry, model: str) -> None:
    """Replace this model's Pushgateway group with ``registry`` (PUT).

    The :data:`~emflow.metrics.spec.PERSISTENT` values the run did not set are read from the
    group first and carried over; a series of an earlier run that this run did not produce
    does not stay behind.
    """
    from prometheus_client import Gauge, push_to_gateway

    produced = {family.name for family in registry.collect()}
    missing = tuple(name for name in PERSISTENT if name not in produced)
    for name, value in _gateway_values(url, model, missing).items():
        spec = METRICS[name]
        Gauge(name, spec.help, list(spec.labels), registry=registry).labels(model).set(value)
    push_to_gateway(
        url, job=PUSHGATEWAY_JOB, registry=registry, grouping_key={"model": model}, timeout=10
    )


def publish_rollback_metrics(
    model: str, version: str | int, settings, *, now: float | None = None
) -> str:
    """Publish a rollback (when, which version it serves); return where it went.

    Its own Pushgateway group (job ``emflow_rollback``, grouping key ``model``), so the latest
    retrain run's series stay as they are; in the textfile only the two rollback families of
    the model are replaced. An unreachable Pushgateway is logged and the textfile written (the
    rollback itself is done: this never fails it).
    """
    from prometheus_client import push_to_gateway

    registry = build_rollback_registry(model, version, now)
    url = getattr(settings, "pushgateway_url", None)
    if url:
        try:
            push_to_gateway(
                url, job=ROLLBACK_JOB, registry=registry, grouping_key={"model": model}, timeout=10
            )
            return f"{url.rstrip('/')}/metrics/job/{ROLLBACK_JOB}/model/{model}"
        except OSError as error:
            logger.warning(
                "rollback metrics not pushed to %s (%s); writing the textfile", url, error
            )
    path = write_textfile(registry, settings.metrics_textfile, model, owned=set(ROLLBACK_FAMILIES))
    return str(path)


def publish_run_metrics(
    summary: Mapping[str, Any],
    settings,
    *,
    attempts: int = 3,
    retry_wait_seconds: float = 1.0,
    now: float | None = None,
) -> str:
    """Publish the metrics of one retrain run; return where they went.

    The model's series become this run's: a family the run did not set (a failed run has no
    training duration, likelihoods, ...) is removed rather than left showing the previous
    run's values, except :data:`~emflow.metrics.spec.PERSISTENT` (the last success's time).

    Parameters
    ----------
    summary : dict
        Plain run summary (keys in the module docstring); ``model_name`` and ``status`` required.
    settings : emflow.config.Settings
        Uses ``pushgateway_url`` (the group job ``emflow_retrain``, grouping key ``model``,
        replaced) when set, else ``metrics_textfile``.
    attempts : int, default=3
        Push attempts before giving up on the Pushgateway.
    retry_wait_seconds : float, default=1.0
        Wait before the second attempt; doubled for each further one.
    now : float, optional
        Unix time to stamp the run with (tests); the current time by default.

    Returns
    -------
    str
        The push URL (``<gateway>/metrics/job/emflow_retrain/model/<model>``) or the textfile path.

    Raises
    ------
    ValueError, TypeError
        The summary lacks ``model_name``/``status`` or holds a value of the wrong kind.
    MetricsPushError
        The Pushgateway stayed unreachable; the metrics were written to ``metrics_textfile``
        first, so nothing is lost, and the task can be retried.
    """
    registry = build_registry(summary, now=now)
    model = str(summary["model_name"])
    url = getattr(settings, "pushgateway_url", None)
    if not url:
        path = write_textfile(registry, settings.metrics_textfile, model)
        logger.info("run metrics of %s written to %s", model, path)
        return str(path)

    last_error: Exception | None = None
    for attempt in range(1, max(1, attempts) + 1):
        try:
            _replace_group(url, registry, model)
        except OSError as error:  # URLError, ConnectionRefusedError, timeouts
            last_error = error
            logger.warning(
                "push to Pushgateway %s failed (attempt %d/%d): %s", url, attempt, attempts, error
            )
            if attempt < attempts:
                time.sleep(retry_wait_seconds * 2 ** (attempt - 1))
            continue
        target = _pushgateway_target(url, model)
        logger.info("run metrics of %s pushed to %s", model, target)
        return target

    fallback = write_textfile(registry, settings.metrics_textfile, model)
    raise MetricsPushError(
        f"could not push run metrics to the Pushgateway at {url} after {attempts} attempts "
        f"({last_error}); they were written to {fallback} instead. Check that the Pushgateway "
        "runs and that EMFLOW_PUSHGATEWAY points at it, then retry the task."
    ) from last_error

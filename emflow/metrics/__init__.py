"""Prometheus metrics of one retrain run: what on-call, the alert rules and the dashboards read.

The last task of the retrain pipeline (and ``emflow demo``) calls :func:`publish_run_metrics` with a
plain ``summary`` dict. Every key except ``model_name`` and ``status`` is optional; a metric whose
source key is missing is simply not sent (see "Semantics" for what the receiver then shows).

Summary keys
------------
=============================  ===============================================================
key                            meaning
=============================  ===============================================================
``model_name`` (required)      registered model name; becomes the ``model`` label everywhere
``status`` (required)          ``"success"`` or ``"failed"``
``run_key``                    identifier of the pipeline run (Airflow run id or similar)
``failed_step``                name of the step that failed (``"validate"``, ``"train"``, ...)
``train_seconds``              wall time of ``GaussianMixture.fit`` (all restarts), seconds
``n_iter``                     EM iterations of the winning restart
``n_restarts``                 restarts run (``n_init``)
``restart_lower_bounds``       final lower bound of every restart, list of floats (nats/sample)
``winner_lower_bound``         lower bound of the winning restart (nats/sample)
``holdout_loglik_challenger``  mean holdout log-likelihood of the new model (nats/sample)
``holdout_loglik_champion``    the same for the model in service on the same rows
``decision``                   ``"promoted"``, ``"rejected"`` (gate kept the champion) or
                               ``"quarantined"`` (the batch failed validation)
``alignment_cost``             mean matched Bhattacharyya cost of component alignment
``drift``                      dict ``feature -> PSI`` plus ``score_divergence`` (JS, nats)
``rows_validated``             rows checked by the data contract in this run
``rows_quarantined``           of those, rows moved to quarantine
``gpu_memory_peak_bytes``      peak device memory of the fit (gmm_core's device_peak_bytes_)
``device_peak_bytes``          peak device memory of the fit as gmm_core measured it, bytes
``backend``                    resolved ``gmm_core`` backend (``"numpy"``, ``"cupy"``)
``component_weights``          mixing weight per (aligned) component, list of floats
``alarm_rate``                 share of fresh holdout rows the challenger's anomaly threshold
                               flags (calibrated on the other half of the holdout)
``false_alarm_rate``           that threshold's target false-alarm rate
``alarm_rate_band``            ``[low, high]`` the alarm rate must lie in (the gate's band)
=============================  ===============================================================

The exported metrics are listed in :data:`METRICS` (name -> :class:`MetricSpec`); the README's
"Operating emflow" section points here. All are gauges with a ``model`` label.

Semantics: why gauges, and no ``_total`` counters
-------------------------------------------------
A retrain is a batch job: the process that knows the numbers exits right after pushing. A counter
that such a job pushes would either restart at 1 on every push (``rate()`` sees resets, never an
increase) or need a read-modify-write on the Pushgateway (racy, and wrong after a gateway restart).
So, as the Prometheus guidance for batch jobs recommends, every metric is a **per-run gauge** and
runs are counted in PromQL from the timestamps, e.g. runs in a week
``changes(emflow_retrain_last_run_timestamp_seconds[7d])`` and successes
``changes(emflow_retrain_last_success_timestamp_seconds[7d])``.

Each run replaces its model's group on the Pushgateway (HTTP PUT, job ``emflow_retrain``,
grouping key ``model``): a family the run did not set is removed, so a run that fails before
training does not leave the previous run's training numbers looking current. The one exception,
``PERSISTENT`` (``emflow_retrain_last_success_timestamp_seconds``, sent only on success), is read
from the group first and carried over, so the staleness alert measures the age of the last
*good* run. Without a Pushgateway the textfile-collector file (``settings.metrics_textfile``)
follows the same rule: this model's samples are the run's, plus the ``PERSISTENT`` families it
did not set; every other model's samples are carried over, and the new file replaces the old one
atomically (``prometheus_client.write_to_textfile``).
"""

from emflow.metrics.sinks import (
    MetricsPushError,
    publish_rollback_metrics,
    publish_run_metrics,
    write_textfile,
)
from emflow.metrics.spec import (
    DECISIONS,
    METRICS,
    PUSHGATEWAY_JOB,
    STATUSES,
    MetricSpec,
    build_registry,
)

__all__ = [
    "DECISIONS",
    "METRICS",
    "PUSHGATEWAY_JOB",
    "STATUSES",
    "MetricSpec",
    "MetricsPushError",
    "build_registry",
    "publish_rollback_metrics",
    "publish_run_metrics",
    "write_textfile",
]

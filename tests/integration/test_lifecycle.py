"""Model lifecycle against a real MLflow SQLite store: evaluate -> gate -> publish, pyfunc serving.

Covers the issue's "must show": first model promoted, a better challenger promoted, a worse one
rejected with its reason, a permuted challenger aligned back to the champion's component ids, and
an artifact directory without pickle files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.lifecycle import FEATURES, cycle, telemetry, train

from emflow.config import Settings

# every test here writes a real MLflow SQLite store (1-10 s each, 4 s to import mlflow)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def data() -> dict:
    return {"train": telemetry(2500, seed=1), "holdout": telemetry(600, seed=2)}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data: dict) -> dict:
    """Saved models: a good 4-component fit, one fitted on 120 rows, and a 1-component one."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    out["good"] = (root / "good", train(data["train"], root / "good", seed=0)[1])
    out["small"] = (
        root / "small",
        train(data["train"].iloc[:120], root / "small", seed=3, n_init=1)[1],
    )
    out["one"] = (root / "one", train(data["train"], root / "one", n_components=1)[1])
    return out


def _copy(models: dict, key: str, tmp_path: Path, name: str | None = None) -> tuple[Path, dict]:
    source, info = models[key]
    target = tmp_path / (name or key)
    shutil.copytree(source, target)
    return target, info


def test_first_model_is_promoted_and_serves_through_pyfunc(settings, models, data, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    import gmm_core

    model_dir, info = _copy(models, "good", tmp_path)
    evaluation, decision, result = cycle(settings, model_dir, data["holdout"], "run-1", info)

    assert evaluation.champion_version is None and evaluation.champion_mean_loglik is None
    assert evaluation.n_holdout == len(data["holdout"])
    assert decision.promote and "no champion" in decision.reason
    assert result.version == "1" and result.promoted and result.champion_version == "1"

    client = MlflowClient(settings.tracking_uri)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(settings.model_name, "challenger").version) == "1"
    tags = client.get_model_version(settings.model_name, "1").tags
    assert tags["emflow.run_key"] == "run-1"
    assert tags["emflow.data_window"] == "2026-11-01..2026-11-02"
    assert tags["emflow.decision"] == "promote" and tags["emflow.reason"] == decision.reason

    served = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    scored = served.predict(data["holdout"])
    assert list(scored.columns) == ["component", "responsibility", "log_likelihood"]
    reference = gmm_core.load_model(model_dir)
    X = data["holdout"][FEATURES].to_numpy()
    np.testing.assert_allclose(scored["log_likelihood"], reference.score_samples(X), rtol=1e-9)
    np.testing.assert_array_equal(scored["component"], reference.predict(X))
    assert ((scored["responsibility"] > 0) & (scored["responsibility"] <= 1)).all()
    assert np.isclose(scored["log_likelihood"].mean(), evaluation.challenger_mean_loglik)
    signature = served.metadata.signature
    assert [c.name for c in signature.inputs.inputs] == FEATURES
    assert [c.name for c in signature.outputs.inputs] == list(scored.columns)
    assert served.input_example is not None and list(served.input_example.columns) == FEATURES


def test_run_records_params_curves_plots_card_and_report(settings, models, data, tmp_path):
    from mlflow import MlflowClient

    model_dir, info = _copy(models, "good", tmp_path)
    evaluation, _, result = cycle(settings, model_dir, data["holdout"], "run-1", info)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_components"] == "4"
    assert run.data.params["n_init"] == "2"
    assert run.data.params["data_window"] == "2026-11-01..2026-11-02"
    assert run.data.params["backend_used"] == "numpy"
    assert run.data.tags["emflow.decision"] == "promote"

    restarts = client.get_metric_history(result.run_id, "restart_final_lower_bound")
    curves = info["restart_lower_bounds"]
    assert sorted(m.step for m in restarts) == list(range(len(curves)))
    assert sorted(m.value for m in restarts) == pytest.approx(sorted(c[-1] for c in curves))
    winner = client.get_metric_history(result.run_id, "lower_bound")
    best = max(curves, key=lambda c: c[-1])
    assert [m.value for m in sorted(winner, key=lambda m: m.step)] == pytest.approx(best)
    metrics = run.data.metrics
    for key in (
        "holdout_mean_loglik",
        "training_seconds",
        "final_lower_bound",
        "n_train",
        "holdout_aic",
        "holdout_bic",
    ):
        assert key in metrics, key
    # the values, not just the names: each from its source
    assert metrics["holdout_mean_loglik"] == pytest.approx(evaluation.challenger_mean_loglik)
    assert metrics["final_lower_bound"] == pytest.approx(max(c[-1] for c in curves))
    assert metrics["n_train"] == info["n_train"]
    assert run.data.metrics["holdout_bic"] == pytest.approx(evaluation.challenger_bic)
    assert run.data.metrics["holdout_aic"] < run.data.metrics["holdout_bic"]
    weights = client.get_metric_history(result.run_id, "component_weight")
    assert sorted(m.step for m in weights) == [0, 1, 2, 3]
    assert sum(m.value for m in weights) == pytest.approx(1.0)

    listed = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert listed == {
        "plots/convergence.png",
        "plots/components_pca.png",
        "plots/component_weights.png",
    }
    local = Path(client.download_artifacts(result.run_id, "", str(tmp_path / "dl")))
    for png in (local / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    card = (local / "model_card.md").read_text()
    assert f"{settings.model_name} v1" in card and "promote" in card
    assert json.loads((local / "validation" / "validation_report.json").read_text()) == {
        "success": True,
        "rows": 10,
    }
    assert json.loads((local / "gate" / "decision.json").read_text())["promote"] is True


def test_better_challenger_promoted_worse_rejected_with_reason(settings, models, data, tmp_path):
    from mlflow import MlflowClient

    small_dir, small_info = _copy(models, "small", tmp_path)
    _, _, first = cycle(settings, small_dir, data["holdout"], "run-small", small_info)
    assert first.promoted

    good_dir, good_info = _copy(models, "good", tmp_path)
    evaluation, decision, better = cycle(settings, good_dir, data["holdout"], "run-good", good_info)
    assert evaluation.champion_version == "1"
    assert evaluation.challenger_mean_loglik > evaluation.champion_mean_loglik
    assert decision.promote and decision.alignment_mean_cost <= settings.alignment_threshold
    assert better.promoted and better.champion_version == "2"

    one_dir, one_info = _copy(models, "one", tmp_path)
    evaluation, decision, worse = cycle(settings, one_dir, data["holdout"], "run-one", one_info)
    assert evaluation.champion_version == "2"
    assert evaluation.challenger_mean_loglik < evaluation.champion_mean_loglik - 0.05
    assert not decision.promote
    assert "worse than the champion" in decision.reason and "champion v2" in decision.reason
    assert worse.version == "3" and not worse.promoted and worse.decision == "reject"
    client = MlflowClient(settings.tracking_uri)
    name = settings.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
    assert str(client.get_model_version_by_alias(name, "previous-champion").version) == "1"
    assert client.get_model_version(name, "3").tags["emflow.reason"] == decision.reason


def test_tight_alignment_threshold_rejects_moved_components(models, data, tmp_path):
    settings = Settings(home=tmp_path / "home", alignment_threshold=0.0, promotion_margin=100.0)
    small_dir, small_info = _copy(models, "small", tmp_path)
    cycle(settings, small_dir, data["holdout"], "run-small", small_info)
    good_dir, good_info = _copy(models, "good", tmp_path)
    _, decision, result = cycle(settings, good_dir, data["holdout"], "run-good", good_info)
    assert decision.alignment_mean_cost > 0.0
    assert not decision.promote and "alignment mean cost" in decision.reason
    assert not result.promoted and result.champion_version == "1"


def test_permuted_challenger_comes_back_with_champion_ids(settings, models, data, tmp_path):
    import mlflow

    import gmm_core

    good_dir, info = _copy(models, "good", tmp_path)
    cycle(settings, good_dir, data["holdout"], "run-1", info)

    champion = gmm_core.load_model(good_dir)
    order = [2, 3, 0, 1]
    permuted_dir = tmp_path / "permuted"
    gmm_core.save_model(
        gmm_core.reorder_components(champion, order), permuted_dir, feature_names=FEATURES
    )
    X = data["holdout"][FEATURES].to_numpy()
    labels_before = gmm_core.load_model(permuted_dir).predict(X)
    assert (labels_before != champion.predict(X)).mean() > 0.5  # ids really are switched

    evaluation, decision, result = cycle(settings, permuted_dir, data["holdout"], "run-2", info)
    assert decision.permutation == [order.index(k) for k in range(4)]
    assert decision.alignment_mean_cost == pytest.approx(0.0, abs=1e-9)
    assert decision.promote and result.promoted
    assert Path(decision.model_dir) != permuted_dir  # the trained folder is left as it was
    np.testing.assert_array_equal(gmm_core.load_model(permuted_dir).predict(X), labels_before)

    aligned = gmm_core.load_model(decision.model_dir)
    np.testing.assert_allclose(aligned.means_, champion.means_)
    served = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    assert result.version == "2"
    np.testing.assert_array_equal(served.predict(data["holdout"])["component"], champion.predict(X))


def test_logged_artifacts_hold_no_pickle(settings, models, data, tmp_path):
    good_dir, info = _copy(models, "good", tmp_path)
    cycle(settings, good_dir, data["holdout"], "run-1", info)
    files = [p for p in settings.artifact_root.rglob("*") if p.is_file()]
    assert any(p.name == "model.npz" for p in files) and any(p.name == "MLmodel" for p in files)
    suspicious = [
        p
        for p in files
        if p.suffix in (".pkl", ".pickle", ".joblib", ".cloudpickle")
        or "pickle" in p.name.lower()
        or p.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    ]
    assert suspicious == []
    import yaml

    flavor = yaml.safe_load(next(p for p in files if p.name == "MLmodel").read_text())["flavors"][
        "python_function"
    ]
    # data only: the installed emflow loads it, no code (or pickled model) travels with it
    assert flavor["loader_module"] == "emflow.model.pyfunc_model"
    assert flavor["data"] == "data/gmm"
    assert not any(flavor.get(k) for k in ("python_model", "code", "model_code_path", "artifacts"))
    assert [p for p in files if p.suffix in (".py", ".pyc", ".so")] == []
    for npz in (p for p in files if p.suffix == ".npz"):
        with np.load(npz, allow_pickle=False) as arrays:  # object arrays would need pickle
            assert all(arrays[k].dtype != object for k in arrays.files)


def test_evaluate_refuses_holdout_without_the_features(settings, models, tmp_path):
    from emflow.run.evaluate import evaluate

    good_dir, _ = _copy(models, "good", tmp_path)
    bad = telemetry(50, seed=9).drop(columns=["temp_c"])
    with pytest.raises(ValueError, match="temp_c"):
        evaluate(good_dir, bad, settings)
    with pytest.raises(FileNotFoundError, match="model directory"):
        evaluate(tmp_path / "missing", telemetry(50, seed=9), settings)


def test_artifact_serves_from_the_installed_package_without_cupy(settings, models, data, tmp_path):
    """A fresh process that cannot import CuPy loads the champion: the artifact is data, the
    loader and gmm_core are the installed packages, and serving imports neither Airflow nor
    Great Expectations."""
    import subprocess
    import sys

    model_dir, info = _copy(models, "good", tmp_path)
    _, decision, _ = cycle(settings, model_dir, data["holdout"], "run-1", info)
    data["holdout"].head(20).to_csv(tmp_path / "rows.csv", index=False)
    script = f"""
import sys
sys.modules["cupy"] = None  # as if CuPy (and so any GPU path) were not installed
import mlflow, pandas as pd
mlflow.set_registry_uri({settings.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/{settings.model_name}@champion")
scored = model.predict(pd.read_csv({str(tmp_path / "rows.csv")!r}))
import gmm_core
print(gmm_core.__file__)
heavy = any(m in sys.modules for m in ("airflow", "great_expectations"))
loaded = "emflow.model.pyfunc_model" in sys.modules
print(loaded, heavy, len(scored), scored["log_likelihood"].notna().all())
print(" ".join(repr(float(v)) for v in scored["log_likelihood"]))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    module_file, flags, scores = done.stdout.strip().splitlines()[-3:]
    assert module_file.startswith(str(Path(__file__).parents[2]))  # the installed gmm_core
    assert flags == "True False 20 True"
    # the artifact scores exactly as the model the gate registered
    import gmm_core

    model = gmm_core.load_model(decision.model_dir)
    rows = data["holdout"].head(20)[list(model.feature_names_)].to_numpy()
    expected = model.score_samples(rows)
    np.testing.assert_allclose([float(v) for v in scores.split()], expected, rtol=1e-9)


def test_calibrated_threshold_serves_p_value_and_is_anomaly_through_pyfunc(
    settings, models, data, tmp_path
):
    """The anomaly calibration travels in model.json through the registry to serving, and the
    logged signature names the two new columns."""
    import mlflow

    import gmm_core

    model_dir, info = _copy(models, "good", tmp_path)
    model = gmm_core.load_model(model_dir)
    holdout = data["holdout"]
    model.calibrate_threshold(holdout[FEATURES].to_numpy()[:300], false_alarm_rate=0.05)
    gmm_core.save_model(model, model_dir, feature_names=FEATURES, metadata=model.metadata_)
    cycle(settings, model_dir, holdout.iloc[300:], "run-1", info)

    uri = f"models:/{settings.model_name}@champion"
    outputs = mlflow.models.get_model_info(uri).signature.outputs.input_names()
    assert outputs == ["component", "responsibility", "log_likelihood", "p_value", "is_anomaly"]
    rows = holdout.iloc[300:]
    scored = mlflow.pyfunc.load_model(uri).predict(rows)
    expected = model.score_anomaly(rows[FEATURES].to_numpy())
    np.testing.assert_allclose(scored["p_value"], expected.p_value, rtol=1e-12)
    np.testing.assert_array_equal(scored["is_anomaly"].to_numpy(bool), expected.is_anomaly)
    np.testing.assert_allclose(-scored["log_likelihood"], expected.score, rtol=1e-12)

"""``emflow train``: a model from a telemetry file, and clear errors (exit 2) for bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from emflow.cli import main
from gmm_core import load_model
from validation.synthetic import make_telemetry


@pytest.fixture()
def telemetry_file(tmp_path):
    path = tmp_path / "telemetry.parquet"
    make_telemetry(600, "2026-11-01", "2026-11-02", seed=4).to_parquet(path, index=False)
    return path


def test_train_saves_a_model_and_prints_its_summary(telemetry_file, tmp_path, capsys):
    out = tmp_path / "model"
    rc = main(
        [
            "train",
            str(telemetry_file),
            "--n-components",
            "3",
            "--n-init",
            "2",
            "--max-iter",
            "50",
            "--backend",
            "numpy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == {"model_dir": str(out)}
    assert "log-likelihood" in printed and "backend" in printed
    model = load_model(out)
    # the same fit as GaussianMixture on the contract's features, with the flags passed through
    from gmm_core import GaussianMixture
    from validation.contract import load_contract

    frame = pd.read_parquet(telemetry_file)
    X = frame[list(load_contract().feature_columns)].to_numpy(dtype=np.float32)
    ref = GaussianMixture(3, n_init=2, max_iter=50, random_state=0, backend="numpy").fit(X)
    np.testing.assert_allclose(model.means_, ref.means_, rtol=1e-6)
    assert model.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-9)
    assert (model.n_init, model.max_iter, model.n_iter_) == (2, 50, ref.n_iter_)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "does not exist"),
        ("renamed_column", "are not in the data"),
        ("too_few_rows", "n_components"),
        ("nan", "NaN"),
    ],
)
def test_bad_input_exits_2_with_the_fix_on_stderr(case, match, tmp_path, capsys):
    frame = make_telemetry(600, "2026-11-01", "2026-11-02", seed=4)
    path = tmp_path / "t.parquet"
    if case == "renamed_column":
        frame = frame.rename(columns={"cpu_util": "cpu"})
    elif case == "too_few_rows":
        frame = frame.head(3)
    elif case == "nan":
        frame.loc[5, "temp_c"] = np.nan
    if case != "missing":
        frame.to_parquet(path, index=False)
    rc = main(
        [
            "train",
            str(path),
            "--n-components",
            "4",
            "--backend",
            "numpy",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2
    assert match in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("where", ["existing_file", "under_a_file", "existing_model"])
def test_an_unusable_out_is_refused_before_the_fit(
    where, telemetry_file, tmp_path, capsys, monkeypatch
):
    """Issue 16.13 / 16.15: ``--out`` an existing file or an unwritable path failed with a
    traceback after the whole fit; an existing model was silently overwritten."""
    import gmm_core

    out = tmp_path / "out"
    if where == "existing_file":
        out.write_text("not a folder")
    elif where == "under_a_file":
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "model"
    else:
        assert (
            main(
                [
                    "train",
                    str(telemetry_file),
                    "--n-components",
                    "2",
                    "--max-iter",
                    "5",
                    "--backend",
                    "numpy",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    before = (out / "model.npz").read_bytes() if where == "existing_model" else None
    capsys.readouterr()
    fitted = []
    monkeypatch.setattr(gmm_core.GaussianMixture, "fit", lambda self, X, y=None: fitted.append(1))
    rc = main(["train", str(telemetry_file), "--backend", "numpy", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and fitted == []  # refused before any fitting
    assert err.startswith("emflow train: ") and "Traceback" not in err
    assert {
        "existing_file": "is a file",
        "under_a_file": "cannot write",
        "existing_model": "--force",
    }[where] in err
    if before is not None:
        assert (out / "model.npz").read_bytes() == before


def test_force_replaces_a_model_and_the_default_folder_is_new_per_run(
    telemetry_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path / "home"))
    argv = [
        "train",
        str(telemetry_file),
        "--n-components",
        "2",
        "--max-iter",
        "5",
        "--backend",
        "numpy",
    ]
    assert main(argv) == 0 and main(argv) == 0
    folders = sorted((tmp_path / "home" / "models").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("manual-") for f in folders)
    assert load_model(folders[0]).random_state == 0
    assert main([*argv, "--out", str(folders[0]), "--force", "--seed", "3"]) == 0
    assert load_model(folders[0]).random_state == 3  # replaced


def test_defaults_are_the_dags_and_help_shows_them(capsys):
    """Issue 16.15: CLI defaults differed from the DAG's (K=8/200 vs 4/100), --help showed
    none, and there was no --version."""
    from importlib.metadata import version

    from emflow.run.params import DEFAULT_PARAMS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("n_components", "covariance_type", "n_init", "max_iter", "seed", "backend"):
        assert f"(default {DEFAULT_PARAMS[name]})" in text, name
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"emflow {version('emflow')}"


def test_values_near_1e19_fit_in_float64_to_a_finite_model(tmp_path, capsys):
    """Issue 16.6: float32 data near 1e19 "fitted" to infinite covariances and was saved."""
    frame = make_telemetry(600, "2026-11-01", "2026-11-02", seed=4)
    frame["req_rate"] = frame["req_rate"] * 1e17  # up to ~1e19-1e20
    path = tmp_path / "huge.parquet"
    frame.to_parquet(path, index=False)
    out = tmp_path / "model"
    rc = main(
        [
            "train",
            str(path),
            "--n-components",
            "2",
            "--n-init",
            "1",
            "--max-iter",
            "20",
            "--backend",
            "numpy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    model = load_model(out)
    assert model.means_.dtype == np.float64
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.isfinite(getattr(model, name)).all(), name


def test_a_non_finite_fit_is_refused_and_not_saved(telemetry_file, tmp_path, capsys, monkeypatch):
    import gmm_core

    real_fit = gmm_core.GaussianMixture.fit

    def overflowing_fit(self, X, y=None):
        real_fit(self, X, y)
        self.covariances_ = np.full_like(self.covariances_, np.inf)
        return self

    monkeypatch.setattr(gmm_core.GaussianMixture, "fit", overflowing_fit)
    out = tmp_path / "model"
    rc = main(
        [
            "train",
            str(telemetry_file),
            "--n-components",
            "2",
            "--max-iter",
            "5",
            "--backend",
            "numpy",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite covariances_" in err and "Scale the features" in err
    assert not (out / "model.json").exists()


def test_a_backend_error_gets_no_data_hint(telemetry_file, tmp_path, capsys):
    """Issue 16.15: `--backend cupy` without a GPU ended with "check the data with emflow
    validate", a hint for data errors; the data were fine."""
    from gmm_core._device import cupy_unavailable_reason

    if cupy_unavailable_reason() is None:
        pytest.skip("a usable GPU is here: backend='cupy' runs")
    rc = main(["train", str(telemetry_file), "--backend", "cupy", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "backend='cupy' cannot run" in err and "backend='numpy'" in err
    assert "emflow validate" not in err and "Traceback" not in err


BAD_PARAMETERS = [
    (["--max-iter", "0"], "argument --max-iter: expected an integer from 1 to 10000, got 0"),
    (
        ["--n-components", "0"],
        'argument --n-components: expected an integer from 1 to 256 or "auto", got 0',
    ),
    (["--n-components", "-2"], "argument --n-components: expected an integer from 1 to 256"),
    (["--n-init", "0"], "argument --n-init: expected an integer from 1 to 64, got 0"),
    (["--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295, got -1"),
    (["--seed", "99999999999"], "argument --seed: expected an integer from 0 to 4294967295"),
    (
        ["--n-components", "auto", "--k-min", "5", "--k-max", "2"],
        "--k-min (5) must not exceed --k-max (2)",
    ),
]


@pytest.mark.parametrize(
    ("options", "message"), BAD_PARAMETERS, ids=[" ".join(o) for o, _ in BAD_PARAMETERS]
)
def test_parameters_out_of_the_dags_bounds_are_refused_before_reading_data(
    options, message, tmp_path, capsys
):
    """D4/D5: `--max-iter 0` wrote model.json/model.npz, then crashed with an IndexError;
    `--n-components 0`, `--seed -1`, ... got the library's message and a hint to validate the
    data; `--k-min 5 --k-max 2` said "got []". The DAG's bounds (one table) decide, up front."""
    missing = tmp_path / "not-read.parquet"  # never opened: the arguments are refused first
    out = tmp_path / "m"
    rc = main(["train", str(missing), *options, "--backend", "numpy", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("emflow train: error: ") and message in err, err
    assert "emflow validate" not in err and "Traceback" not in err
    assert not out.exists()


def test_features_stored_as_text_are_refused(telemetry_file, tmp_path, capsys):
    """Minor: `cpu_util` stored as strings was parsed silently and trained on (exit 0)."""
    frame = pd.read_parquet(telemetry_file)
    frame["cpu_util"] = frame["cpu_util"].astype(str)
    path = tmp_path / "text.parquet"
    frame.to_parquet(path, index=False)
    rc = main(["train", str(path), "--backend", "numpy", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "feature columns are not numeric: {'cpu_util'" in err
    assert "emflow validate" in err  # a data error: the hint belongs here
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("column", ["event_id", "ts"])
def test_the_id_or_timestamp_column_is_no_feature(telemetry_file, tmp_path, capsys, column):
    """`--features event_id,cpu_util` trained a degenerate model (-1.4e21 nats) with exit 0."""
    argv = ["train", str(telemetry_file), "--features", f"{column},cpu_util", "--backend", "numpy"]
    rc = main([*argv, "--out", str(tmp_path / "m")])
    captured = capsys.readouterr()
    assert rc == 2 and f"feature columns ['{column}'] are the data contract's id" in captured.err
    assert "EM" not in captured.err.split("feature columns")[0]  # no progress bar first
    assert not (tmp_path / "m").exists()


def test_fewer_rows_than_the_contract_wants_are_trained_with_a_warning(tmp_path, capsys):
    """Minor: a 50-row file (the contract's min_rows is 100) trained without a word."""
    path = tmp_path / "small.parquet"
    make_telemetry(50, "2026-11-01", "2026-11-02", seed=4).to_parquet(path, index=False)
    argv = ["train", str(path), "--n-components", "2", "--max-iter", "5", "--backend", "numpy"]
    assert main([*argv, "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "warning: 50 rows, fewer than the data contract's min_rows (100)" in err

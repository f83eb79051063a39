"""Model files (.npz + JSON, checksums, refusals) and component alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gmm_core import (
    GaussianMixture,
    ModelFileError,
    align_components,
    load_model,
    reorder_components,
    save_model,
)
from gmm_core.io import _document_digest

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(params=COV_TYPES)
def fitted(request, blobs):
    return GaussianMixture(4, covariance_type=request.param, random_state=0, backend="numpy").fit(
        blobs
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_is_exact(tmp_path, blobs, dtype):
    X = blobs.astype(dtype)
    gm = GaussianMixture(3, covariance_type="full", random_state=0, backend="numpy").fit(X)
    save_model(gm, tmp_path / "m", feature_names=["a", "b", "c"], metadata={"window": "2026-11-01"})
    loaded = load_model(tmp_path / "m")
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gm, name))
        assert getattr(loaded, name).dtype == dtype
    assert loaded.get_params() == gm.get_params()
    assert loaded.lower_bound_ == gm.lower_bound_ and loaded.n_iter_ == gm.n_iter_
    assert type(loaded.lower_bound_) is type(gm.lower_bound_) is np.dtype(dtype).type
    assert loaded.lower_bounds_ == gm.lower_bounds_
    assert loaded.feature_names_ == ["a", "b", "c"]
    assert loaded.metadata_ == {"window": "2026-11-01"}
    np.testing.assert_array_equal(loaded.score_samples(X), gm.score_samples(X))
    assert not list((tmp_path / "m").glob("*.pkl"))
    with np.load(tmp_path / "m" / "model.npz", allow_pickle=False) as npz:  # no object arrays
        assert all(npz[k].dtype != object for k in npz.files)


def test_every_covariance_type_round_trips(tmp_path, fitted, blobs):
    save_model(fitted, tmp_path)
    np.testing.assert_array_equal(load_model(tmp_path).predict(blobs), fitted.predict(blobs))


def test_truncated_npz_is_refused(tmp_path, fitted):
    save_model(fitted, tmp_path)
    npz = tmp_path / "model.npz"
    npz.write_bytes(npz.read_bytes()[:-40])
    with pytest.raises(ModelFileError, match="truncated or modified"):
        load_model(tmp_path)


def test_tampered_array_is_refused_even_with_a_fixed_file_checksum(tmp_path, fitted):
    save_model(fitted, tmp_path)
    with np.load(tmp_path / "model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["means"] = arrays["means"] + 1.0
    np.savez(tmp_path / "model.npz", **arrays)
    doc = json.loads((tmp_path / "model.json").read_text())
    import hashlib

    doc["checksums"]["model.npz"] = hashlib.sha256(
        (tmp_path / "model.npz").read_bytes()
    ).hexdigest()
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="edited or corrupted"):
        load_model(tmp_path)
    doc["checksums"]["model.json"] = _document_digest(doc)  # a careful forger
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="do not match their recorded checksums"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(covariance_type="diag" if d["covariance_type"] != "diag" else "full"),
        lambda d: d["params"].update(tol=-1.0),
        lambda d: d["params"].update(n_components=5),
        lambda d: d.update(dtype="int64"),
        lambda d: d.update(feature_names=["only-one"]),
        lambda d: d["params"].update(no_such_parameter=1),
        lambda d: d.pop("fitted"),
    ],
    ids=["covariance_type", "bad_tol", "n_components", "int_dtype", "names", "unknown", "fitted"],
)
def test_edited_json_is_refused_with_or_without_a_recomputed_checksum(tmp_path, fitted, edit):
    save_model(fitted, tmp_path, feature_names=["a", "b", "c"])
    doc = json.loads((tmp_path / "model.json").read_text())
    edit(doc)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="edited or corrupted"):
        load_model(tmp_path)
    doc["checksums"]["model.json"] = _document_digest(doc)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError):  # consistent checksum, inconsistent model
        load_model(tmp_path)


def test_numpy_scalar_parameters_round_trip(tmp_path, blobs):
    gm = GaussianMixture(
        np.int64(2), tol=np.float32(1e-3), random_state=np.int64(7), backend="numpy"
    ).fit(blobs)
    save_model(gm, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.n_components == 2 and loaded.random_state == 7
    np.testing.assert_array_equal(loaded.sample(5)[0], gm.sample(5)[0])


def test_feature_names_of_any_sequence_are_stored_and_a_frames_columns_are_kept(tmp_path, blobs):
    """QA probe: a pandas Index or NumPy array of names raised a bare JSON TypeError (leaving an
    empty folder), and names other than a fitted frame's columns made the loaded model refuse
    the frames the model was fitted on."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(blobs[:, :2], columns=["cpu", "mem"])
    on_frame = GaussianMixture(2, random_state=0, backend="numpy").fit(frame)
    for names in (frame.columns, on_frame.feature_names_in_, ["cpu", "mem"], None):
        save_model(on_frame, tmp_path / "frame", feature_names=names)
        loaded = load_model(tmp_path / "frame")
        np.testing.assert_array_equal(loaded.predict(frame), on_frame.predict(frame))
    with pytest.raises(ValueError, match="would rename them"):
        save_model(on_frame, tmp_path / "renamed", feature_names=["x", "y"])
    assert not (tmp_path / "renamed").exists()

    on_array = GaussianMixture(2, random_state=0, backend="numpy").fit(blobs[:, :2])
    save_model(on_array, tmp_path / "array", feature_names=np.array(["p", "q"]))
    assert load_model(tmp_path / "array").feature_names_ == ["p", "q"]
    with pytest.raises(ValueError, match="must be strings"):
        save_model(on_array, tmp_path / "mixed", feature_names=["p", 1])


def test_metadata_takes_numpy_values_and_names_what_json_cannot_hold(tmp_path, fitted):
    import datetime

    save_model(fitted, tmp_path / "ok", metadata={"rows": np.int64(3), "w": np.arange(2)})
    assert load_model(tmp_path / "ok").metadata_ == {"rows": 3, "w": [0, 1]}
    with pytest.raises(TypeError, match="holds a date"):
        save_model(fitted, tmp_path / "bad", metadata={"day": datetime.date(2026, 12, 5)})
    assert not (tmp_path / "bad").exists()


def test_saving_a_selector_names_its_best_estimator(tmp_path, blobs):
    from gmm_core import GaussianMixtureSelect

    selector = GaussianMixtureSelect(n_components=[1, 2], backend="numpy").fit(blobs)
    with pytest.raises(TypeError, match="best_estimator_"):
        save_model(selector, tmp_path)
    save_model(selector.best_estimator_, tmp_path)
    assert load_model(tmp_path).n_components == selector.best_estimator_.n_components


def test_truncated_json_and_missing_files_are_refused(tmp_path, fitted):
    save_model(fitted, tmp_path)
    (tmp_path / "model.json").write_text((tmp_path / "model.json").read_text()[:100])
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(tmp_path)
    with pytest.raises(ModelFileError, match="is missing"):
        load_model(tmp_path / "nowhere")


def test_npz_with_pickled_object_is_refused(tmp_path, fitted):
    """Even with every checksum forged to match, an object (pickled) array is never loaded."""
    import hashlib

    save_model(fitted, tmp_path)
    with np.load(tmp_path / "model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["means"] = np.array([{"payload": "not data"}] * len(arrays["means"]), dtype=object)
    np.savez(tmp_path / "model.npz", **arrays)  # pickles the object array
    doc = json.loads((tmp_path / "model.json").read_text())
    npz_bytes = (tmp_path / "model.npz").read_bytes()
    doc["checksums"]["model.npz"] = hashlib.sha256(npz_bytes).hexdigest()
    doc["checksums"]["model.json"] = _document_digest(doc)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="cannot be read as .npz"):
        load_model(tmp_path)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", ["bhattacharyya", "symmetric_kl"])
def test_alignment_recovers_a_known_permutation(fitted, divergence):
    order = np.array([2, 0, 3, 1])
    shuffled = reorder_components(fitted, order)
    result = align_components(fitted, shuffled, divergence=divergence)
    # shuffled component j is fitted component order[j]: reference i sits at argsort(order)[i]
    np.testing.assert_array_equal(result.permutation, np.argsort(order))
    assert result.mean_cost == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(result.aligned.means_, fitted.means_)
    assert result.unmatched == [] and result.unmatched_reference == []


def test_alignment_of_a_refit_has_small_costs_and_agreeing_labels():
    rng = np.random.RandomState(0)
    centers = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], dtype=float)
    X = np.concatenate([c + rng.normal(size=(150, 3)) for c in centers])
    a = GaussianMixture(4, covariance_type="diag", random_state=0, backend="numpy").fit(X)
    b = GaussianMixture(
        4, covariance_type="diag", random_state=5, init_params="k-means++", backend="numpy"
    ).fit(X[rng.permutation(len(X))])
    result = align_components(a, b)
    assert result.max_cost < 0.05
    assert (result.aligned.predict(X) == a.predict(X)).mean() > 0.99
    far = reorder_components(b, [0, 1, 2, 3])
    far.means_ = far.means_ + 25.0
    assert align_components(a, far).mean_cost > 10 * result.mean_cost


def test_alignment_with_different_numbers_of_components(blobs):
    a = GaussianMixture(3, covariance_type="full", random_state=0, backend="numpy").fit(blobs)
    b = GaussianMixture(4, covariance_type="spherical", random_state=0, backend="numpy").fit(blobs)
    result = align_components(a, b)
    assert len(result.pairs) == 3 and len(result.unmatched) == 1
    assert result.permutation[-1] == result.unmatched[0]
    assert sorted(result.permutation.tolist()) == [0, 1, 2, 3]


def test_bhattacharyya_matches_the_textbook_formula():
    from gmm_core import gaussian_divergence

    rng = np.random.RandomState(1)
    m1, m2 = rng.normal(size=(1, 3)), rng.normal(size=(1, 3))
    A, B = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2 = A @ A.T + np.eye(3), B @ B.T + np.eye(3)
    c = (c1 + c2) / 2
    diff = (m1 - m2)[0]
    expected = diff @ np.linalg.solve(c, diff) / 8 + 0.5 * np.log(
        np.linalg.det(c) / np.sqrt(np.linalg.det(c1) * np.linalg.det(c2))
    )
    got = gaussian_divergence(m1, c1[None], m2, c2[None])[0, 0]
    assert got == pytest.approx(expected, rel=1e-12)

    # symmetric KL from scipy-free textbook formula
    def kl(ma, ca, mb, cb):
        return 0.5 * (
            np.trace(np.linalg.solve(cb, ca))
            + (mb - ma) @ np.linalg.solve(cb, mb - ma)
            - 3
            + np.log(np.linalg.det(cb) / np.linalg.det(ca))
        )

    sym = kl(m1[0], c1, m2[0], c2) + kl(m2[0], c2, m1[0], c1)
    assert gaussian_divergence(m1, c1[None], m2, c2[None], "symmetric_kl")[0, 0] == pytest.approx(
        sym, rel=1e-10
    )

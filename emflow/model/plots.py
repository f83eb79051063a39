"""Figures logged with every retrain run: convergence of all restarts, components, weights.

Each function draws one matplotlib figure on the non-interactive Agg backend and writes it as a
PNG; :func:`write_all` writes the set into one folder for ``mlflow.log_artifacts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def convergence_curves(
    restart_lower_bounds: Sequence[np.ndarray], path: Path, *, best_restart: int | None = None
) -> Path:
    """Lower bound per EM iteration of every restart, the winner drawn bold.

    Parameters
    ----------
    restart_lower_bounds : sequence of arrays, each of shape (n_iter_r,)
        Per-iteration lower bound (mean log-likelihood per row) of restart ``r``.
    path : Path
        PNG file to write.
    best_restart : int, optional
        Index of the winning restart; the one with the highest final bound when omitted.
    """
    plt = _pyplot()
    curves = [np.asarray(c, dtype=np.float64).ravel() for c in restart_lower_bounds]
    if best_restart is None and curves:
        finals = [c[-1] if c.size else -np.inf for c in curves]
        best_restart = int(np.argmax(finals))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, curve in enumerate(curves):
        best = r == best_restart
        ax.plot(
            np.arange(1, curve.size + 1),
            curve,
            lw=2.4 if best else 1.0,
            alpha=1.0 if best else 0.6,
            label=f"restart {r}" + (" (best)" if best else ""),
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("lower bound (mean log-likelihood per row)")
    ax.set_title(f"Convergence of {len(curves)} restart(s)")
    if len(curves) <= 12:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def full_covariances(model: Any) -> np.ndarray:
    """Covariance matrices of a fitted mixture, shape (n_components, n_features, n_features)."""
    covariances = np.asarray(model.covariances_, dtype=np.float64)
    n_components, n_features = np.asarray(model.means_).shape
    kind = model.covariance_type
    if kind == "full":
        return covariances
    if kind == "tied":
        return np.broadcast_to(covariances, (n_components, n_features, n_features)).copy()
    if kind == "diag":
        return np.stack([np.diag(c) for c in covariances])
    if kind == "spherical":
        return covariances[:, None, None] * np.eye(n_features)[None]
    raise ValueError(f"unknown covariance_type {kind!r}")


def pca_basis(X: np.ndarray, n_axes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Centre and leading principal axes of ``X``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)

    Returns
    -------
    center : array of shape (n_features,)
    axes : array of shape (n_features, n_axes)
        Orthonormal columns; padded with zeros when ``n_features < n_axes``.
    """
    X = np.asarray(X, dtype=np.float64)
    center = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - center, full_matrices=False)
    axes = np.zeros((X.shape[1], n_axes))
    k = min(n_axes, vt.shape[0])
    axes[:, :k] = vt[:k].T
    return center, axes


def components_projection(model: Any, sample: np.ndarray, path: Path) -> Path:
    """Sample rows and component ellipses (2 standard deviations) over a 2-D PCA projection.

    Parameters
    ----------
    model : fitted GaussianMixture
        Means and covariances to draw; component ids are labelled at the means.
    sample : array of shape (n_samples, n_features)
        Rows to scatter, coloured by their most responsible component.
    path : Path
        PNG file to write.
    """
    plt = _pyplot()
    from matplotlib.patches import Ellipse

    sample = np.asarray(sample, dtype=np.float64)
    labels = np.asarray(model.predict(sample))
    # Standardise first, so that one large-valued feature does not own both axes.
    scale = sample.std(axis=0)
    scale[scale == 0] = 1.0
    center, axes = pca_basis(sample / scale)
    axes = axes / scale[:, None]  # maps raw features straight to the standardised PCs
    points = sample @ axes - center @ (axes * scale[:, None])
    means = np.asarray(model.means_, dtype=np.float64) @ axes - center @ (axes * scale[:, None])
    covariances = np.einsum("da,kde,eb->kab", axes, full_covariances(model), axes)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    n_colors = 10 if len(means) <= 10 else 20
    cmap = plt.get_cmap(f"tab{n_colors}")
    ax.scatter(
        points[:, 0],
        points[:, 1],
        c=labels % n_colors,
        cmap=cmap,
        vmin=0,
        vmax=n_colors - 1,
        s=6,
        alpha=0.5,
        linewidths=0,
    )
    for k, (mean, cov) in enumerate(zip(means, covariances, strict=True)):
        eigvals, eigvecs = np.linalg.eigh(cov)
        eigvals = np.clip(eigvals, 0.0, None)
        angle = float(np.degrees(np.arctan2(eigvecs[1, 1], eigvecs[0, 1])))
        width, height = 4.0 * np.sqrt(eigvals[1]), 4.0 * np.sqrt(eigvals[0])
        ax.add_patch(
            Ellipse(mean, width, height, angle=angle, fill=False, lw=1.5, color=cmap(k % n_colors))
        )
        ax.annotate(str(k), mean, fontsize=9, weight="bold", ha="center", va="center")
    ax.set_xlabel("PC 1 (standardised features)")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{len(means)} components over a PCA projection of {len(sample)} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def component_weights(weights: np.ndarray, path: Path) -> Path:
    """Bar chart of mixture weights, shape (n_components,), by component id."""
    plt = _pyplot()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * weights.size + 2), 3.5))
    ax.bar(np.arange(weights.size), weights, color="tab:blue")
    ax.set_xlabel("component id")
    ax.set_ylabel("weight")
    ax.set_title("Component weights")
    ax.set_xticks(np.arange(weights.size))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def selection_curves(rows: Sequence[dict[str, Any]], path: Path, *, criterion: str) -> Path:
    """BIC and AIC (left) and holdout mean log-likelihood (right) against K, the choice marked.

    Parameters
    ----------
    rows : sequence of dict
        :func:`emflow.model.selection.selection_rows` (``n_components``, ``bic``, ``aic``,
        ``holdout_score``, ``failed``, ``chosen``; None where a candidate failed).
    path : Path
        PNG file to write.
    criterion : str
        The criterion that chose (named in the title).
    """
    plt = _pyplot()

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=np.float64)

    ks = np.array([r["n_components"] for r in rows])
    holdout = column("holdout_score")
    has_holdout = bool(np.isfinite(holdout).any())
    fig, axes = plt.subplots(1, 2 if has_holdout else 1, figsize=(11 if has_holdout else 6, 4))
    axes = np.atleast_1d(axes)
    axes[0].plot(ks, column("bic"), "o-", label="BIC")
    axes[0].plot(ks, column("aic"), "s--", label="AIC")
    axes[0].set_ylabel("criterion on the train rows (lower is better)")
    if has_holdout:
        axes[1].plot(ks, holdout, "o-", color="tab:green")
        axes[1].set_ylabel("holdout mean log-likelihood (higher is better)")
    chosen = [r["n_components"] for r in rows if r["chosen"]]
    failed = [r["n_components"] for r in rows if r["failed"]]
    for ax in axes:
        ax.set_xlabel("K (n_components)")
        for k in chosen:
            ax.axvline(k, color="tab:red", lw=1.5, label=f"chosen K={k}")
        for k in failed:
            ax.axvline(k, color="0.6", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    title = f"Model selection by {criterion}"
    if failed:
        title += f" (failed: K={', '.join(map(str, failed))})"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(
    model: Any,
    sample: np.ndarray | None,
    folder: Path,
    *,
    restart_lower_bounds: Sequence[np.ndarray] | None = None,
    selection: dict[str, Any] | None = None,
) -> list[Path]:
    """Write every figure that the available inputs allow into ``folder``; return the files.

    ``selection``: the payload of :func:`emflow.model.selection.write_selection` (a run with
    ``n_components="auto"``), drawn by :func:`selection_curves`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [component_weights(model.weights_, folder / "component_weights.png")]
    if selection and selection.get("rows"):
        written.append(
            selection_curves(
                selection["rows"], folder / "selection.png", criterion=selection["criterion"]
            )
        )
    if restart_lower_bounds:
        written.append(convergence_curves(restart_lower_bounds, folder / "convergence.png"))
    if sample is not None and len(sample) > 1:
        written.append(components_projection(model, sample, folder / "components_pca.png"))
    return written

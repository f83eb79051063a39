"""Matching the components of two mixtures, so component ids survive a retrain.

EM's components come out in arbitrary order ("label switching"). :func:`align_components`
pairs each component of a candidate model with one of a reference model by the Hungarian method
(:func:`scipy.optimize.linear_sum_assignment`) on a closed-form divergence between Gaussians,
and returns the candidate reordered so that component ``i`` means the same thing in both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .mixture import GaussianMixture

DIVERGENCES = ("bhattacharyya", "symmetric_kl")


def _full_covariances(model: GaussianMixture) -> np.ndarray:
    """Covariances of every component as (K, D, D) float64 matrices."""
    k, d = model.means_.shape
    cov = np.asarray(model.covariances_, dtype=np.float64)
    if model.covariance_type == "full":
        return cov
    if model.covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if model.covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return cov[:, None, None] * np.eye(d)


def gaussian_divergence(
    means_a: np.ndarray,
    cov_a: np.ndarray,
    means_b: np.ndarray,
    cov_b: np.ndarray,
    divergence: str = "bhattacharyya",
) -> np.ndarray:
    """Pairwise divergence between Gaussians, shape (K_a, K_b).

    Parameters
    ----------
    means_a : ndarray of shape (K_a, D)
    cov_a : ndarray of shape (K_a, D, D)
    means_b : ndarray of shape (K_b, D)
    cov_b : ndarray of shape (K_b, D, D)
    divergence : {'bhattacharyya', 'symmetric_kl'}
        Bhattacharyya distance, or KL(a||b) + KL(b||a).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    d = means_a.shape[1]
    diff = means_a[:, None, :] - means_b[None, :, :]  # (Ka, Kb, D)
    _, logdet_a = np.linalg.slogdet(cov_a)
    _, logdet_b = np.linalg.slogdet(cov_b)
    if divergence == "bhattacharyya":
        avg = 0.5 * (cov_a[:, None] + cov_b[None, :])  # (Ka, Kb, D, D)
        _, logdet_avg = np.linalg.slogdet(avg)
        maha = np.einsum("abi,abi->ab", diff, np.linalg.solve(avg, diff[..., None])[..., 0])
        return 0.125 * maha + 0.5 * (logdet_avg - 0.5 * (logdet_a[:, None] + logdet_b[None, :]))
    inv_a, inv_b = np.linalg.inv(cov_a), np.linalg.inv(cov_b)
    trace_ab = np.einsum("aij,bji->ab", inv_a, cov_b)  # tr(inv(A) B)
    trace_ba = np.einsum("bij,aji->ab", inv_b, cov_a)  # tr(inv(B) A)
    maha = np.einsum("abi,abi->ab", diff, np.einsum("aij,abj->abi", inv_a, diff)) + np.einsum(
        "abi,abi->ab", diff, np.einsum("bij,abj->abi", inv_b, diff)
    )
    return 0.5 * (trace_ab + trace_ba + maha) - d


def reorder_components(model: GaussianMixture, order: Any) -> GaussianMixture:
    """A copy of ``model`` whose component ``i`` is ``model``'s component ``order[i]``."""
    order = np.asarray(order)
    k = model.means_.shape[0]
    if order.dtype.kind not in "iu" or sorted(order.tolist()) != list(range(k)):
        raise ValueError(
            f"order must be an integer permutation of range({k}), got {order.tolist()}"
        )
    out = copy.deepcopy(model)
    out.weights_ = model.weights_[order]
    out.means_ = model.means_[order]
    if model.covariance_type != "tied":
        for name in ("covariances_", "precisions_", "precisions_cholesky_"):
            setattr(out, name, getattr(model, name)[order])
    return out


@dataclass
class Alignment:
    """Result of :func:`align_components`.

    Attributes
    ----------
    permutation : ndarray of shape (K_candidate,)
        ``aligned = reorder_components(candidate, permutation)``; for equal K,
        ``permutation[i]`` is the candidate component matched to reference component ``i``.
    pairs : ndarray of shape (n_matched, 2)
        ``(reference index, candidate index)`` of every matched pair.
    costs : ndarray of shape (n_matched,)
        Divergence of each matched pair.
    unmatched : list of int
        Candidate components with no partner (more candidate than reference components), last
        in ``aligned``.
    unmatched_reference : list of int
        Reference components with no partner.
    aligned : GaussianMixture
        The candidate, reordered.
    divergence : str
    """

    permutation: np.ndarray
    pairs: np.ndarray
    costs: np.ndarray
    unmatched: list[int]
    unmatched_reference: list[int]
    aligned: GaussianMixture
    divergence: str
    cost_matrix: np.ndarray = field(repr=False)

    @property
    def mean_cost(self) -> float:
        """Mean divergence over matched pairs."""
        return float(self.costs.mean()) if len(self.costs) else 0.0

    @property
    def max_cost(self) -> float:
        """Largest divergence of a matched pair."""
        return float(self.costs.max()) if len(self.costs) else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "divergence": self.divergence,
            "permutation": self.permutation.tolist(),
            "pairs": self.pairs.tolist(),
            "costs": self.costs.tolist(),
            "mean_cost": self.mean_cost,
            "max_cost": self.max_cost,
            "unmatched": self.unmatched,
            "unmatched_reference": self.unmatched_reference,
        }


def align_components(
    reference: GaussianMixture, candidate: GaussianMixture, *, divergence: str = "bhattacharyya"
) -> Alignment:
    """Match ``candidate``'s components to ``reference``'s and reorder ``candidate``.

    Works for any pair of covariance types and for different numbers of components; the two
    models must have the same features.
    """
    if reference.means_.shape[1] != candidate.means_.shape[1]:
        raise ValueError(
            f"Cannot align models with {reference.means_.shape[1]} and "
            f"{candidate.means_.shape[1]} features; align models trained on the same features."
        )
    cost = gaussian_divergence(
        np.asarray(reference.means_, np.float64),
        _full_covariances(reference),
        np.asarray(candidate.means_, np.float64),
        _full_covariances(candidate),
        divergence,
    )
    ref_idx, cand_idx = linear_sum_assignment(cost)
    k_cand = candidate.means_.shape[0]
    unmatched = sorted(set(range(k_cand)) - set(cand_idx.tolist()))
    unmatched_ref = sorted(set(range(reference.means_.shape[0])) - set(ref_idx.tolist()))
    permutation = np.concatenate([cand_idx, np.asarray(unmatched, dtype=cand_idx.dtype)])
    return Alignment(
        permutation=permutation,
        pairs=np.stack([ref_idx, cand_idx], axis=1),
        costs=cost[ref_idx, cand_idx],
        unmatched=unmatched,
        unmatched_reference=unmatched_ref,
        aligned=reorder_components(candidate, permutation),
        divergence=divergence,
        cost_matrix=cost,
    )

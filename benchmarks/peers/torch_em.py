"""Plain PyTorch array-op EM, line for line the CuPy peer (log domain, same init)."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def em_diag(X, weights, means, variances, n_iter, reg_covar=1e-6):
    """Diagonal-covariance EM on a CUDA tensor X (N, D). Returns params, bounds."""
    n = X.shape[0]
    w, mu, var = (
        torch.as_tensor(a, dtype=X.dtype, device=X.device) for a in (weights, means, variances)
    )
    eps = 10 * torch.finfo(X.dtype).eps
    X2 = X * X
    bounds = []
    for _ in range(n_iter):
        prec = 1.0 / var
        lp = -0.5 * (
            X.shape[1] * LOG_2PI
            + torch.log(var).sum(1)
            + X2 @ prec.T
            - 2.0 * X @ (mu * prec).T
            + (mu * mu * prec).sum(1)
        ) + torch.log(w)
        lse = torch.logsumexp(lp, dim=1, keepdim=True)
        bounds.append(lse.mean())
        resp = torch.exp(lp - lse)
        nk = resp.sum(0) + eps
        mu = (resp.T @ X) / nk[:, None]
        var = (resp.T @ X2) / nk[:, None] - mu * mu + reg_covar
        w = nk / n
    return (w, mu, var), torch.stack(bounds)


def em_full(X, weights, means, covariances, n_iter, reg_covar=1e-6):
    """Full-covariance EM (Cholesky-precision form, batched over components)."""
    n, d = X.shape
    w, mu, cov = (
        torch.as_tensor(a, dtype=X.dtype, device=X.device) for a in (weights, means, covariances)
    )
    eps = 10 * torch.finfo(X.dtype).eps
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    bounds = []
    for _ in range(n_iter):
        chol = torch.linalg.cholesky(cov)
        prec_chol = torch.linalg.solve_triangular(chol, eye.expand_as(cov), upper=False).transpose(
            -1, -2
        )
        log_det = torch.log(torch.diagonal(prec_chol, dim1=1, dim2=2)).sum(1)
        y = torch.einsum("nd,kde->nke", X, prec_chol) - torch.einsum("kd,kde->ke", mu, prec_chol)
        lp = -0.5 * (d * LOG_2PI + (y * y).sum(-1)) + log_det + torch.log(w)
        lse = torch.logsumexp(lp, dim=1, keepdim=True)
        bounds.append(lse.mean())
        resp = torch.exp(lp - lse)
        nk = resp.sum(0) + eps
        mu = (resp.T @ X) / nk[:, None]
        diff = X[:, None, :] - mu[None]  # (N, K, D)
        cov = (
            torch.einsum("nk,nkd,nke->kde", resp, diff, diff) / nk[:, None, None] + reg_covar * eye
        )
        w = nk / n
    return (w, mu, cov), torch.stack(bounds)

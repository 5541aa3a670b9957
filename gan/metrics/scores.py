"""Sample-quality scores from features: FID, Inception Score, KID, precision/recall.

Pure NumPy (float64) on host: these run once per evaluation on at most ~50k feature vectors,
where exactness matters more than speed. Conventions follow the reference tools:

- FID (Heusel et al. 2017; pytorch-fid): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)`` with
  unbiased (N-1) covariances. ``method='sqrtm'`` is pytorch-fid's computation (scipy sqrtm of
  S1 S2, eps*I offsets when singular); ``method='eigh'`` uses
  ``tr((S1 S2)^1/2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))`` on symmetric matrices, which is
  stabler for rank-deficient covariances. They agree to float64 round-off on well-posed inputs.
- IS (Salimans et al. 2016; the OpenAI code, SNGAN): ``exp(E_x KL(p(y|x) || p(y)))`` per split,
  mean and std (ddof 0) over splits; split i is ``[i*N//s, (i+1)*N//s)``.
- KID (Binkowski et al. 2018; torch-fidelity): unbiased MMD^2 with the kernel
  ``(x.y / d + 1)^3``, mean and std over random subsets.
- Precision/recall (Kynkaanniemi et al. 2019): k-NN balls around real and fake features.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.special

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
]


def _as_features(name: str, x: np.ndarray, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{name} must have shape (N >= {min_rows}, D), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    x = _as_features("features", features)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _congruence(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """A symmetric matrix with the eigenvalues of ``s1 @ s2`` (both PSD): ``F^T s2 F`` for a factor
    ``s1 = F F^T``, Cholesky's when ``s1`` is positive definite, else its eigen square root."""
    try:
        factor = np.linalg.cholesky(s1)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh((s1 + s1.T) / 2)
        factor = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return factor.T @ s2 @ factor


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
    eps: float = 1e-6, method: str = "eigh",
) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2), float64.

    ``tr sqrt(S1 S2)`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which are
    those of the symmetric ``L^T S2 L`` for ``S1 = L L^T``: one Cholesky factor and the
    eigenvalues alone, about 10x faster than pytorch-fid's ``scipy.linalg.sqrtm`` at D = 2048 and
    equal to it to round-off (tests/gan/test_metrics.py). Without a positive-definite covariance
    (N <= D) the factor is ``S1``'s square root from its eigen-decomposition.

    Args:
      mu1, mu2: means (D,).
      sigma1, sigma2: covariances (D, D).
      eps: diagonal offset added to both covariances when ``S1 S2`` is singular ('sqrtm', as pytorch-fid).
      method: 'eigh' (the symmetric eigenvalues, the default) or 'sqrtm' (pytorch-fid's scipy
        computation, for comparisons).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"mu/sigma shapes disagree: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        with warnings.catch_warnings():
            # Singular products (N <= D) are expected; the finiteness check below handles them.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm(s1 @ s2)
            if not np.all(np.isfinite(covmean)):
                offset = np.eye(d) * eps
                covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            # Tiny imaginary parts are round-off; large ones mean the input is not PSD.
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"sigma1/sigma2: sqrtm has imaginary component {np.max(np.abs(covmean.imag))}")
            covmean = covmean.real
        tr_covmean = np.trace(covmean)
    elif method == "eigh":
        m = _congruence(s1, s2)
        tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    else:
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score from classifier logits (N, K): (mean, std) over ``splits`` splits.

    ``splits=1`` is compare_gan's convention (one score over all samples, std 0).
    """
    logits = _as_features("logits", logits, min_rows=1)
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    log_p = _log_softmax(logits)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        # log p(y) of the split's marginal in log space: with confident logits np.exp underflows
        # to 0 for some classes and log(mean(exp)) would give -inf (and a NaN score).
        log_py = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
        kl = np.sum(np.exp(part) * (part - log_py), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray, *, degree: int, gamma: float, coef0: float) -> float:
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    off_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    off_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_xx + off_yy - 2 * k_xy.mean())


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
    degree: int = 3, coef0: float = 1.0, seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased polynomial-kernel MMD^2 over random subsets. Returns (mean, std).

    Kernel ``(x.y / D + coef0)^degree`` (Binkowski et al.; torch-fidelity's defaults). Each subset
    draws ``min(subset_size, N_real, N_fake)`` rows without replacement from each set.
    """
    real, fake = _as_features("real", real), _as_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real/fake feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    gamma = 1.0 / real.shape[1]
    values = [
        _polynomial_mmd2_unbiased(
            real[rng.choice(real.shape[0], m, replace=False)], fake[rng.choice(fake.shape[0], m, replace=False)],
            degree=degree, gamma=gamma, coef0=coef0,
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def _knn_radii(x: np.ndarray, k: int, block: int) -> np.ndarray:
    # Squared distance to the k-th nearest neighbour other than the point itself (column k of the sort).
    radii = np.empty(x.shape[0])
    for i in range(0, x.shape[0], block):
        d = _squared_distances(x[i : i + block], x)
        radii[i : i + block] = np.partition(d, k, axis=1)[:, k]
    return radii


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
    inside = np.zeros(points.shape[0], bool)
    for i in range(0, points.shape[0], block):
        d = _squared_distances(points[i : i + block], centres)
        inside[i : i + block] = np.any(d <= radii[None, :], axis=1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3, block: int = 2000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds. Returns (P, R).

    Precision: fraction of fake samples inside some real sample's k-NN ball; recall: fraction of
    real samples inside some fake sample's ball. ``block`` bounds memory (block x N distances).
    """
    real, fake = _as_features("real", real, k + 1), _as_features("fake", fake, k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real/fake feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real_radii = _knn_radii(real, k, block)
    fake_radii = _knn_radii(fake, k, block)
    return _coverage(fake, real, real_radii, block), _coverage(real, fake, fake_radii, block)

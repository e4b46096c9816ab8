"""Fréchet Inception Distance between two sets of features."""

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and covariance (unbiased, N - 1) of features [N, D] in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    # Eigenvalues of a covariance can come out slightly negative through rounding.
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Return ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), in float64.

    tr(sqrt(S1 S2)) is computed as the sum of the square roots of the eigenvalues of
    sqrt(S1) S2 sqrt(S1). That matrix is similar to S1 S2 but symmetric positive
    semi-definite, so `eigh` applies and no complex square root arises, unlike
    `scipy.linalg.sqrtm` of the non-symmetric product.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: mean {mu1.shape} vs {mu2.shape}, "
                         f"covariance {sigma1.shape} vs {sigma2.shape}")
    sqrt_sigma1 = _psd_sqrt(sigma1)
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Return the FID of two feature sets [N1, D] and [N2, D].

    With fewer samples than dimensions, tr(sqrt(S1 S2)) is taken from the small
    N1 x N2 matrix instead of two D x D ones (see `_trace_sqrt_from_samples`).
    """
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    if min(len(features1), len(features2)) >= mu1.shape[0]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    trace_sqrt = _trace_sqrt_from_samples(np.asarray(features1, np.float64) - mu1,
                                          np.asarray(features2, np.float64) - mu2)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def _trace_sqrt_from_samples(centered1: np.ndarray, centered2: np.ndarray) -> float:
    """Return tr(sqrt(S1 S2)) for S = A^T A / (N - 1) from the centered samples A.

    The nonzero eigenvalues of S1 S2 = A1^T A1 A2^T A2 / c equal those of M M^T with
    M = A1 A2^T / sqrt(c), so tr(sqrt(S1 S2)) is the sum of M's singular values.
    """
    scale = np.sqrt((len(centered1) - 1) * (len(centered2) - 1))
    return float(np.linalg.svd(centered1 @ centered2.T / scale, compute_uv=False).sum())

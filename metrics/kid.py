"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel."""

import numpy as np

NUM_SUBSETS = 100
MAX_SUBSET_SIZE = 1000


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets with k(a, b) = (a.b / d + 1)^3."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    # The within-set terms leave out i == j, which makes the estimate unbiased.
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, *,
                              num_subsets: int = NUM_SUBSETS,
                              max_subset_size: int = MAX_SUBSET_SIZE,
                              seed: int = 0) -> float:
    """Return the mean unbiased MMD^2 over `num_subsets` random subsets.

    Each subset draws min(max_subset_size, len(real), len(fake)) features from each set
    without replacement. Features are used in float64.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {real.shape} and "
                         f"{fake.shape}")
    size = min(max_subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(real)} real and "
                         f"{len(fake)} generated")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), size, replace=False)]
        y = real[rng.choice(len(real), size, replace=False)]
        total += _mmd2_unbiased(x, y)
    return total / num_subsets

"""Inception Score from classifier logits."""

import numpy as np

NUM_SPLITS = 10


def inception_score(logits: np.ndarray, splits: int = NUM_SPLITS) -> tuple[float, float]:
    """Return the mean and standard deviation of exp(E_x[KL(p(y|x) || p(y))]) over splits.

    The samples are cut into `splits` contiguous parts at i * N // splits, and p(y) is
    the mean prediction within each part.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"logits must be [N >= splits={splits}, classes], got shape "
                         f"{logits.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    bounds = [i * len(log_probs) // splits for i in range(splits + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = log_probs[start:stop]
        log_marginal = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))

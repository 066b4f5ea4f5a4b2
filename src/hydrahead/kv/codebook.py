"""Lloyd-Max scalar quantizer for a standard Gaussian, computed once with scipy and cached."""

from __future__ import annotations

import functools

import numpy as np
from scipy.stats import norm


@functools.cache
def lloyd_max_gaussian(levels: int = 16, tol: float = 1e-12, max_iter: int = 100_000):
    """(centroids [levels], boundaries [levels - 1], mse) of the MSE-optimal quantizer of N(0, 1).

    Lloyd's iteration: boundaries at midpoints of the centroids, centroids at the conditional mean
    of each cell, E[X | a < X < b] = (pdf(a) - pdf(b)) / (cdf(b) - cdf(a)), until nothing moves.
    For 16 levels the mse is about 0.0095 (Max, 1960). Arrays are read-only float64.
    """
    centroids = norm.ppf((np.arange(levels) + 0.5) / levels)
    for _ in range(max_iter):
        boundaries = (centroids[1:] + centroids[:-1]) / 2
        edges = np.concatenate(([-np.inf], boundaries, [np.inf]))
        mass = np.diff(norm.cdf(edges))
        updated = (norm.pdf(edges[:-1]) - norm.pdf(edges[1:])) / mass
        moved = np.abs(updated - centroids).max()
        centroids = updated
        if moved < tol:
            break
    else:
        raise RuntimeError(f"Lloyd-Max for {levels} levels did not converge in {max_iter} iterations")
    boundaries = (centroids[1:] + centroids[:-1]) / 2
    mass = np.diff(norm.cdf(np.concatenate(([-np.inf], boundaries, [np.inf]))))
    # with centroids at the cell means, E[(X - Q(X))^2] = E[X^2] - E[Q(X)^2]
    mse = float(1.0 - (mass * centroids**2).sum())
    centroids.setflags(write=False)
    boundaries.setflags(write=False)
    return centroids, boundaries, mse

"""Helpers of the anomaly-project tests: synthetic stores, a small mock, torch threads."""

from __future__ import annotations

import os

import numpy as np
from desilab.projects.anomalies import RestGrid, write_feature_store

#: Torch threads in tests: the profile's limit, else one (the machine is shared).
THREADS = int(os.environ.get("DESILAB_CPU_LIMIT", "1"))


def synthetic_spectra(n: int, n_bins: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Smooth 3-parameter spectra with noise and random coverage gaps.

    A continuum slope, one emission line of variable strength and a variable
    line width, observed over a random window of the grid (as redshift does).
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n_bins)
    slope = rng.normal(0, 0.3, n)[:, None]
    strength = rng.uniform(0.5, 2.0, n)[:, None]
    width = rng.uniform(0.03, 0.08, n)[:, None]
    clean = 1 + slope * x + strength * np.exp(-0.5 * (x / width) ** 2)
    sigma = 0.05
    flux = clean + rng.normal(0, sigma, clean.shape)
    weight = np.full(clean.shape, 1 / sigma**2)
    start = rng.integers(0, n_bins // 3, n)
    stop = start + rng.integers(n_bins // 2, n_bins - n_bins // 3, n)
    idx = np.arange(n_bins)
    weight[(idx < start[:, None]) | (idx >= stop[:, None])] = 0
    meta = {"TARGETID": np.arange(n, dtype=np.int64) + 39_000_000_000_000_000, "Z": np.ones(n)}
    return flux.astype(np.float32), weight.astype(np.float32), meta


def synthetic_store(path, n: int = 240, n_bins: int = 64, seed: int = 0, shard_size: int = 80):
    """A feature store of :func:`synthetic_spectra` on a short rest grid."""
    flux, weight, meta = synthetic_spectra(n, n_bins, seed)
    grid = RestGrid(1300.0, 3000.0, n_bins)
    return write_feature_store(path, flux, weight, meta, grid, shard_size=shard_size)

"""Combining VoidFinder holes into voids: maximal spheres, membership, effective radii."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .geometry import sphere_overlap

__all__ = ["effective_radii", "find_maximals", "join_holes"]


def find_maximals(
    centres: np.ndarray, radii: np.ndarray, min_radius: float, max_overlap: float
) -> np.ndarray:
    """Indices of the maximal spheres among holes sorted by decreasing radius.

    As VAST, from the largest hole down: a hole of radius >= ``min_radius`` is maximal
    unless it lies inside, or overlaps by more than ``max_overlap`` of its volume, an
    earlier maximal.
    """
    ncand = int(np.sum(radii >= min_radius))
    if ncand == 0:
        return np.zeros(0, dtype=np.int64)
    c, r = centres[:ncand], radii[:ncand]
    # Only spheres closer than the sum of their radii overlap. Most candidates are small:
    # pair the small ones among themselves within twice the split radius, and the few
    # large ones (a prefix, as holes are sorted by radius) with everyone.
    nbig = max(1, ncand // 20)
    small = cKDTree(c[nbig:]).query_pairs(2 * r[min(nbig, ncand - 1)], output_type="ndarray")
    big = cKDTree(c[:nbig]).sparse_distance_matrix(cKDTree(c), 2 * r[0], output_type="ndarray")
    i = np.concatenate([small[:, 0] + nbig, big["i"]]).astype(np.int64)
    j = np.concatenate([small[:, 1] + nbig, big["j"]]).astype(np.int64)
    # In each pair (i < j), i is the larger sphere: the one that may block j.
    i, j = np.minimum(i, j), np.maximum(i, j)
    keep = i < j
    i, j = i[keep], j[keep]
    d = np.linalg.norm(c[i] - c[j], axis=1)
    touch = d < r[i] + r[j]
    i, j, d = i[touch], j[touch], d[touch]
    vol_j = 4.0 / 3.0 * np.pi * r[j] ** 3
    blocks = (r[i] - r[j] >= d) | (sphere_overlap(r[i], r[j], d) > max_overlap * vol_j)
    i, j = i[blocks], j[blocks]
    # Greedy in radius order: a candidate is maximal when none of its (larger) blockers
    # is. Blockers always come first, so deciding in rounds reproduces the sequential
    # loop: each round settles at least the first undecided candidate.
    state = np.full(ncand, -1, dtype=np.int8)
    while True:
        undecided = state == -1
        if not undecided.any():
            break
        blocked = np.zeros(ncand, dtype=bool)
        blocked[j[state[i] == 1]] = True
        open_blockers = np.bincount(j[state[i] != 0], minlength=ncand)
        state[undecided & blocked] = 0
        state[undecided & ~blocked & (open_blockers == 0)] = 1
    return np.flatnonzero(state == 1)


def join_holes(
    centres: np.ndarray, radii: np.ndarray, max_idx: np.ndarray, join_overlap: float
) -> np.ndarray:
    """Void id of every hole (-1: not in a void).

    A hole joins a void when it overlaps exactly one maximal by at least ``join_overlap``
    of its volume; holes inside a maximal add nothing and are dropped (as VAST).
    """
    void = np.full(len(radii), -1, dtype=np.int64)
    void[max_idx] = np.arange(len(max_idx))
    others = np.setdiff1d(np.arange(len(radii)), max_idx)
    if len(max_idx) == 0 or len(others) == 0:
        return void
    mc, mr = centres[max_idx], radii[max_idx]
    pairs = cKDTree(centres[others]).sparse_distance_matrix(
        cKDTree(mc), radii[others].max() + mr.max(), output_type="ndarray"
    )
    h, m = others[pairs["i"]], pairs["j"].astype(np.int64)
    d = pairs["v"]
    contained = mr[m] - radii[h] >= d
    vol_h = 4.0 / 3.0 * np.pi * radii[h] ** 3
    match = sphere_overlap(radii[h], mr[m], d) >= join_overlap * vol_h
    dropped = np.zeros(len(radii), dtype=bool)
    dropped[h[contained]] = True
    nmatch = np.bincount(h[match], minlength=len(radii))
    last = np.full(len(radii), -1, dtype=np.int64)
    last[h[match]] = m[match]
    joins = (nmatch == 1) & ~dropped
    void[joins] = last[joins]
    return void


def _ball_sample(axes: np.ndarray) -> np.ndarray:
    """4096 fixed points in the unit ball, closed under axis flips, in survey axes."""
    base = np.random.default_rng(20020101).random((2048, 3)) * 2 - 1
    base = base[np.einsum("ij,ij->i", base, base) <= 1][:512]
    flips = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)])
    return (base[:, None, :] * flips[None]).reshape(-1, 3) @ axes.T


def effective_radii(
    centres: np.ndarray, radii: np.ndarray, void: np.ndarray, nvoid: int, axes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R_EFF and its uncertainty from the union volume of each void's holes.

    About 512 fixed points per void are spread over its holes in proportion to their
    volumes; each point counts the inverse of the number of the void's holes that
    contain it, an unbiased estimate of the union volume.
    """
    sample = _ball_sample(axes)
    reff, err = np.zeros(nvoid), np.zeros(nvoid)
    order = np.argsort(void, kind="stable")
    bounds = np.searchsorted(void[order], np.arange(nvoid + 1))
    for v in range(nvoid):
        idx = order[bounds[v] : bounds[v + 1]]
        c, r = centres[idx], radii[idx]
        vols = 4.0 / 3.0 * np.pi * r**3
        # Multiples of 8 keep each hole's points closed under axis flips.
        npts = np.clip(np.round(64 * vols / vols.sum()).astype(int), 1, len(sample) // 8) * 8
        hole = np.repeat(np.arange(len(idx)), npts)
        start = np.repeat(np.cumsum(npts) - npts, npts)
        p = c[hole] + r[hole, None] * sample[np.arange(len(hole)) - start]
        d2 = np.sum((p[:, None, :] - c[None]) ** 2, axis=2)
        w = 1.0 / np.maximum(np.sum(d2 <= (r * r)[None], axis=1), 1)
        mean = np.bincount(hole, w, len(idx)) / npts
        var = np.bincount(hole, w * w, len(idx)) / npts - mean**2
        total = float(np.sum(vols * mean))
        reff[v] = (3.0 * total / (4.0 * np.pi)) ** (1 / 3)
        err[v] = reff[v] * np.sqrt(np.sum(vols**2 * np.maximum(var, 0) / npts)) / (3.0 * total)
    return reff, err

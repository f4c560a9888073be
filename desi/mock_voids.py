"""A VoidFinder-style void catalog (Hoyle & Vogeley 2002; VAST) for the mock galaxies.

Steps, as in VAST VoidFinder: wall/field separation (field galaxies have a
3rd-nearest-neighbour distance above mean + 1.5 sigma); a grid of empty cells
seeds holes; each hole grows from the seed away from its nearest wall galaxy
until a second galaxy touches it; holes poking more than 10 % outside the survey
are dropped; the largest holes (radius >= 10 Mpc/h) that do not overlap an
earlier maximal by more than 10 % of their volume become maximal spheres, one
per void; other holes join the void whose maximal holds more than half of
their volume. Simplification: VAST grows each hole until four galaxies touch
it; here growth stops at two, which yields slightly smaller holes.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .datamodel import HOLES, MAXIMALS, dtype_of

MIN_MAXIMAL_RADIUS = 10.0  # Mpc/h
MIN_HOLE_RADIUS = 5.0
GRID_CELL = 5.0
MAX_OUTSIDE = 0.10


def _sphere_points(n: int = 64) -> np.ndarray:
    # Fibonacci sphere: near-uniform directions for mask tests.
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def _overlap_volume(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Intersection volume of spheres of radii r1, r2 at centre distance d."""
    r1, r2, d = np.broadcast_arrays(r1, r2, d)
    vol = np.zeros(d.shape)
    inside = d <= np.abs(r1 - r2)
    rmin = np.minimum(r1, r2)
    vol[inside] = 4 / 3 * np.pi * rmin[inside] ** 3
    part = (d < r1 + r2) & ~inside
    dd, a, b = d[part], r1[part], r2[part]
    vol[part] = (
        np.pi * (a + b - dd) ** 2 * (dd**2 + 2 * dd * (a + b) - 3 * (a - b) ** 2) / (12 * dd)
    )
    return vol


def find_voids(
    xyz: np.ndarray, in_survey, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Find voids in a galaxy sample.

    Parameters
    ----------
    xyz : ndarray (n, 3)
        Comoving positions, Mpc/h, observer at the origin.
    in_survey : callable
        ``in_survey(points (m, 3)) -> bool (m,)``: inside footprint and distance limits.
    rng : Generator
        For the Monte Carlo effective radii.

    Returns
    -------
    maximals, holes : structured arrays
        Rows in the DESIVAST MAXIMALS / HOLES formats.
    """
    maximals = np.zeros(0, dtype=dtype_of(MAXIMALS))
    holes_out = np.zeros(0, dtype=dtype_of(HOLES))
    if len(xyz) < 10:
        return maximals, holes_out
    tree = cKDTree(xyz)
    d3 = tree.query(xyz, k=4)[0][:, 3]
    wall = xyz[d3 <= d3.mean() + 1.5 * d3.std()]
    tree = cKDTree(wall)
    lo, hi = wall.min(axis=0), wall.max(axis=0)
    axes = [np.arange(lo[i] + GRID_CELL / 2, hi[i], GRID_CELL) for i in range(3)]
    seeds = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    seeds = seeds[in_survey(seeds)]
    occupied = set(map(tuple, np.floor((wall - lo) / GRID_CELL).astype(int).tolist()))
    cells = np.floor((seeds - lo) / GRID_CELL).astype(int)
    empty = np.array([tuple(c) not in occupied for c in cells.tolist()], dtype=bool)
    seeds = seeds[empty] if len(seeds) else seeds
    centres, radii = _grow(tree, wall, seeds)
    keep = radii >= MIN_HOLE_RADIUS
    centres, radii = centres[keep], radii[keep]
    # Identical holes grown from neighbouring seeds: keep one.
    key = np.round(np.column_stack([centres, radii]), 1)
    _, first = np.unique(key, axis=0, return_index=True)
    centres, radii = centres[first], radii[first]
    pts = _sphere_points()
    outside = np.array(
        [1 - in_survey(c + r * pts).mean() for c, r in zip(centres, radii, strict=True)]
    ).reshape(-1)
    keep = outside <= MAX_OUTSIDE
    centres, radii, outside = centres[keep], radii[keep], outside[keep]
    order = np.argsort(-radii, kind="stable")
    centres, radii, outside = centres[order], radii[order], outside[order]
    void_of = np.full(len(radii), -1)
    max_idx: list[int] = []
    for i in range(len(radii)):
        if radii[i] < MIN_MAXIMAL_RADIUS:
            break
        if max_idx:
            d = np.linalg.norm(centres[max_idx] - centres[i], axis=1)
            ov = _overlap_volume(radii[max_idx], radii[i], d) / (4 / 3 * np.pi * radii[i] ** 3)
            if ov.max() > 0.1:
                continue
        void_of[i] = len(max_idx)
        max_idx.append(i)
    if not max_idx:
        return maximals, holes_out
    mc, mr = centres[max_idx], radii[max_idx]
    for i in np.flatnonzero(void_of < 0):
        d = np.linalg.norm(mc - centres[i], axis=1)
        frac = _overlap_volume(mr, radii[i], d) / (4 / 3 * np.pi * radii[i] ** 3)
        if frac.max() > 0.5:
            void_of[i] = int(np.argmax(frac))
    member = void_of >= 0
    holes_out = np.zeros(member.sum(), dtype=dtype_of(HOLES))
    holes_out["X"], holes_out["Y"], holes_out["Z"] = centres[member].T
    holes_out["RADIUS"] = radii[member]
    holes_out["VOID"] = void_of[member]
    maximals = np.zeros(len(max_idx), dtype=dtype_of(MAXIMALS))
    maximals["X"], maximals["Y"], maximals["Z"] = mc.T
    maximals["RADIUS"] = mr
    maximals["R"] = np.linalg.norm(mc, axis=1)
    maximals["RA"] = np.degrees(np.arctan2(mc[:, 1], mc[:, 0])) % 360
    maximals["DEC"] = np.degrees(np.arcsin(mc[:, 2] / maximals["R"]))
    maximals["VOID"] = np.arange(len(max_idx))
    for v in range(len(max_idx)):
        sel = void_of == v
        maximals["EDGE"][v] = int(np.any(outside[sel] > 0))
        reff, err = _effective_radius(centres[sel], radii[sel], rng)
        maximals["R_EFF"][v], maximals["R_EFF_UNCERT"][v] = reff, err
    return maximals, holes_out


def _grow(tree: cKDTree, gal: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grow holes from seeds until two galaxies touch them."""
    if len(seeds) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    r1, i1 = tree.query(seeds, k=1)
    u = (seeds - gal[i1]) / np.maximum(r1, 1e-9)[:, None]
    k = min(48, len(gal))
    _, nbr = tree.query(seeds, k=k)
    centres = np.empty_like(seeds)
    radii = np.empty(len(seeds))
    for s in range(len(seeds)):
        cand = gal[nbr[s]]
        c, r0, uu = seeds[s], r1[s], u[s]
        for _ in range(4):
            diff = c - cand
            denom = 2 * (r0 - diff @ uu)
            t = (np.einsum("ij,ij->i", diff, diff) - r0**2) / np.where(denom > 1e-9, denom, np.nan)
            t = t[np.isfinite(t) & (t > 1e-9)]
            tstar = t.min() if len(t) else 0.0
            new_c, new_r = c + tstar * uu, r0 + tstar
            inner = tree.query_ball_point(new_c, new_r * (1 - 1e-6))
            if not inner:
                break
            # A galaxy beyond the neighbour list lies inside: add it and solve again.
            cand = np.vstack([cand, gal[inner]])
        centres[s], radii[s] = new_c, new_r
    return centres, radii


def _effective_radius(
    centres: np.ndarray, radii: np.ndarray, rng: np.random.Generator, n: int = 4000
) -> tuple[float, float]:
    """Radius of the sphere with the volume of a union of holes, and its MC error."""
    lo = (centres - radii[:, None]).min(axis=0)
    hi = (centres + radii[:, None]).max(axis=0)
    pts = lo + rng.random((n, 3)) * (hi - lo)
    inside = np.zeros(n, dtype=bool)
    for c, r in zip(centres, radii, strict=True):
        inside |= np.sum((pts - c) ** 2, axis=1) < r * r
    frac = max(inside.mean(), 1.0 / n)
    vol = frac * np.prod(hi - lo)
    reff = (3 * vol / (4 * np.pi)) ** (1 / 3)
    rel = np.sqrt((1 - frac) / (n * frac))
    return float(reff), float(reff * rel / 3)

"""Growing VoidFinder holes from empty grid cells, vectorised over all seeds at once.

As in VAST's ``grow_spheres`` (Hoyle & Vogeley 2002): a hole starts at the centre of
an empty cell and touches its nearest galaxy A. The centre then moves away from A
until a second galaxy B is on the sphere; then along the perpendicular bisector of
AB, away from AB's midpoint, until a third galaxy C is on it; then along the normal
of the plane ABC, away from that plane, until a fourth galaxy D is on it. The hole
is dropped if its centre leaves the survey at any stage.

Moving the centre along a unit vector ``u`` from ``c`` keeps the bounding galaxies
equidistant, and a galaxy G reaches the sphere after a step

    t(G) = (|c - G|^2 - |c - A|^2) / (2 u . (G - A)),   for u . (G - A) > 0,

so each stage picks the galaxy with the smallest positive t. Instead of VAST's
small steps, candidates are the k nearest galaxies (KD-tree); a query at the new
centre proves that no galaxy is inside (any galaxy inside has a smaller t, so it
replaces the candidate and the check repeats) and lists the next stage's
candidates. The result is the exact 4-galaxy hole, independent of step sizes; seeds
are processed together, stage by stage, in NumPy.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .geometry import SurveyMask

__all__ = ["grow_holes", "grow_chunk"]

#: Relative tolerance for "on the sphere" versus "inside it".
_INSIDE_RTOL = 1e-7
_MAX_CHECKS = 64


def _step_to(
    c: np.ndarray, u: np.ndarray, a: np.ndarray, g: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """t(G) for candidate galaxies ``g`` (n, k, 3); inf where not reachable."""
    diff_c = c[:, None, :] - g
    r2 = np.einsum("ij,ij->i", c - a, c - a)
    num = np.einsum("ijk,ijk->ij", diff_c, diff_c) - r2[:, None]
    den = 2.0 * np.einsum("ijk,ik->ij", g - a[:, None, :], u)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    ok = valid & (den > 0) & (t > 0) & np.isfinite(t)
    return np.where(ok, t, np.inf)


def _advance(
    c: np.ndarray,
    u: np.ndarray,
    bounds: np.ndarray,
    wall: np.ndarray,
    tree: cKDTree,
    mask: SurveyMask,
    k: int,
    near: np.ndarray | None = None,
    want_next: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Move each centre along its ``u`` until the next galaxy lies on the sphere.

    Parameters
    ----------
    c, u : (n, 3) ndarray
        Centres and unit directions.
    bounds : (n, m) ndarray of int
        Galaxies already on the sphere; ``bounds[:, 0]`` is A.
    near : (n, k) ndarray of int, optional
        The k galaxies nearest to ``c``, when the caller has them already.
    want_next : bool
        Also return the k galaxies nearest to the new centres (the next stage's
        candidates): the emptiness check queries them anyway.

    Returns
    -------
    t : (n,) step lengths (nan where not ok)
    nxt : (n,) index of the new bounding galaxy
    ok : (n,) False where no galaxy was found before the centre left the survey
    near_next : (n, k) ndarray of int or None
    """
    n, nwall = len(c), len(wall)
    k = min(k, nwall)
    a = wall[bounds[:, 0]]
    if near is None:
        near = tree.query(c, k=k)[1].reshape(n, k)
    valid = (near < nwall) & ~np.any(near[:, :, None] == bounds[:, None, :], axis=2)
    t_all = _step_to(c, u, a, wall[np.minimum(near, nwall - 1)], valid)
    best = np.argmin(t_all, axis=1)
    rows = np.arange(n)
    t = t_all[rows, best]
    nxt = np.where(np.isfinite(t), near[rows, best], -1)
    ok = np.ones(n, dtype=bool)
    near_next = np.full((n, k), nwall, dtype=np.int64) if want_next else None
    # Seeds with no reachable candidate probe further out along u, doubling the step.
    probe = np.where(np.isfinite(t), 0.0, np.maximum(np.linalg.norm(c - a, axis=1), 1.0))
    todo = np.arange(n)
    kq = k if want_next else min(8, nwall)
    for _ in range(_MAX_CHECKS):
        if len(todo) == 0:
            break
        is_probe = probe[todo] > 0
        step = np.where(is_probe, probe[todo], t[todo])
        cc = c[todo] + step[:, None] * u[todo]
        rr = np.linalg.norm(cc - a[todo], axis=1) * (1 - _INSIDE_RTOL)
        # Bounding galaxies sit on the sphere, so any galaxy nearer than them intrudes.
        # Without a next stage one neighbour proves emptiness (cheapest query); else the
        # query also lists the next stage's candidates.
        if want_next:
            dist, idx = tree.query(cc, k=kq)
        else:
            dist, idx = tree.query(cc, k=1)
        dist, idx = dist.reshape(len(todo), -1), idx.reshape(len(todo), -1)
        has = dist[:, 0] < rr
        if has.any():
            # Every galaxy inside the trial sphere is reached earlier: take the earliest.
            h = todo[has]
            if not want_next:
                dist_h, idx_h = tree.query(cc[has], k=kq)
                dist_h, idx_h = dist_h.reshape(len(h), kq), idx_h.reshape(len(h), kq)
            else:
                dist_h, idx_h = dist[has], idx[has]
            inside = (dist_h < rr[has, None]) & (idx_h < nwall)
            tt = _step_to(c[h], u[h], a[h], wall[np.minimum(idx_h, nwall - 1)], inside)
            j = np.argmin(tt, axis=1)
            tbest = tt[np.arange(len(h)), j]
            found = np.isfinite(tbest)
            t[h[found]] = tbest[found]
            nxt[h[found]] = idx_h[np.arange(len(h)), j][found]
            probe[h[found]] = 0.0
        # Trials with nothing inside are final; empty probes go further or give up.
        final = ~has & ~is_probe
        if want_next:
            near_next[todo[final]] = idx[final]
        lost = ~has & is_probe
        if lost.any():
            gone = ~mask.contains(cc[lost])
            ok[todo[lost][gone]] = False
            probe[todo[lost][~gone]] *= 2.0
            final[np.flatnonzero(lost)[gone]] = True
        todo = todo[~final]
    ok[todo] = False
    t = np.where(ok, t, np.nan)
    return t, nxt, ok, near_next


def _perpendicular(v: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to each row of ``v``, built from the frame axes."""
    # The frame axis least aligned with v gives a well-conditioned cross product.
    j = np.argmin(np.abs(v @ axes), axis=1)
    w = np.cross(v, axes.T[j])
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(v, axis=1)
    return v / np.where(norm > 0, norm, 1.0)[:, None], norm


def grow_holes(
    seeds: np.ndarray,
    wall: np.ndarray,
    mask: SurveyMask,
    *,
    tree: cKDTree | None = None,
    axes: np.ndarray | None = None,
    k: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grow one hole per seed until four galaxies bound it.

    Parameters
    ----------
    seeds : (n, 3) ndarray
        Start centres (empty cell centres), Mpc/h, inside the mask.
    wall : (m, 3) ndarray
        Galaxies that bound holes (the wall galaxies).
    mask : SurveyMask
        A hole whose centre leaves it is dropped.
    tree : cKDTree, optional
        KD-tree of ``wall`` (built when not given).
    axes : (3, 3) ndarray, optional
        Frame axes (columns) for the rare degenerate directions.
    k : int
        Candidate galaxies per KD-tree query.

    Returns
    -------
    centres : (n, 3) ndarray
    radii : (n,) ndarray
    bounds : (n, 4) ndarray of int
        Indices into ``wall`` of the four bounding galaxies.
    ok : (n,) ndarray of bool
        False for holes dropped because they left the survey.
    """
    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
    wall = np.asarray(wall, dtype=np.float64)
    n = len(seeds)
    centres = np.full((n, 3), np.nan)
    radii = np.full(n, np.nan)
    bounds = np.full((n, 4), -1, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if n == 0 or len(wall) < 4:
        return centres, radii, bounds, ok
    tree = tree if tree is not None else cKDTree(wall)
    axes = np.eye(3) if axes is None else np.asarray(axes)
    alive = mask.contains(seeds)
    c = seeds.copy()
    k = min(k, len(wall))
    # One query gives A (the nearest galaxy) and the candidates for B.
    near = tree.query(c, k=k)[1].reshape(n, k)
    b = np.full((n, 4), -1, dtype=np.int64)
    b[:, 0] = near[:, 0]
    u, _ = _unit(c - wall[b[:, 0]])
    # Stages 2 and 3: one direction each.
    for stage in (1, 2):
        live = np.flatnonzero(alive)
        t, nxt, good, after = _advance(
            c[live], u[live], b[live, :stage], wall, tree, mask, k, near[live]
        )
        near[live] = after
        c[live[good]] += t[good, None] * u[live[good]]
        b[live[good], stage] = nxt[good]
        alive[live[~good]] = False
        live = live[good]
        alive[live] &= mask.contains(c[live])
        live = live[alive[live]]
        if stage == 1:
            mid = 0.5 * (wall[b[live, 0]] + wall[b[live, 1]])
            u_new, norm = _unit(c[live] - mid)
            flat = norm <= 1e-9 * np.linalg.norm(c[live] - wall[b[live, 0]], axis=1)
            if flat.any():
                ab = wall[b[live[flat], 1]] - wall[b[live[flat], 0]]
                u_new[flat] = _perpendicular(_unit(ab)[0], axes)
            u[live] = u_new
    # Stage 4: away from the plane ABC; both ways when the centre lies in it.
    live = np.flatnonzero(alive)
    pa, pb, pc = (wall[b[live, j]] for j in range(3))
    normal, _ = _unit(np.cross(pb - pa, pc - pa))
    side = np.einsum("ij,ij->i", normal, c[live] - pa)
    rad = np.linalg.norm(c[live] - pa, axis=1)
    coplanar = np.abs(side) <= 1e-9 * rad
    u[live] = np.where(side[:, None] < 0, -normal, normal)
    t1, n1, g1, _ = _advance(
        c[live], u[live], b[live, :3], wall, tree, mask, k, near[live], want_next=False
    )
    in1 = g1.copy()
    in1[g1] = mask.contains(c[live[g1]] + t1[g1, None] * u[live[g1]])
    t, nxt, good, direction = t1, n1, in1, u[live].copy()
    if coplanar.any():
        cp = np.flatnonzero(coplanar)
        t2, n2, g2, _ = _advance(
            c[live[cp]], -u[live[cp]], b[live[cp], :3], wall, tree, mask, k, near[live[cp]], False
        )
        in2 = g2.copy()
        in2[g2] = mask.contains(c[live[cp[g2]]] - t2[g2, None] * u[live[cp[g2]]])
        # VAST keeps the smaller of the two holes when both are valid.
        take2 = in2 & (~in1[cp] | (np.nan_to_num(t2, nan=np.inf) < np.nan_to_num(t1[cp])))
        sel = cp[take2]
        t[sel], nxt[sel], good[sel] = t2[take2], n2[take2], True
        direction[sel] = -u[live[sel]]
    done = live[good]
    c[done] += t[good, None] * direction[good]
    b[done, 3] = nxt[good]
    centres[done] = c[done]
    radii[done] = np.linalg.norm(c[done] - wall[b[done, 0]], axis=1)
    bounds[done] = b[done]
    ok[done] = True
    return centres, radii, bounds, ok


def grow_chunk(
    seeds: np.ndarray, *, wall: np.ndarray, mask: SurveyMask, axes: np.ndarray, k: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`grow_holes` for one chunk of seeds: the unit of work of the batch runner."""
    return grow_holes(seeds, wall, mask, tree=cKDTree(wall), axes=axes, k=k)

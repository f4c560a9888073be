"""VoidFinder (Hoyle & Vogeley 2002), equivalent to VAST's, with DESIVAST output.

Steps, with VAST's defaults (:class:`VoidFinderConfig`):

1. Isolated ("field") galaxies, whose 3rd-nearest-neighbour distance exceeds the
   mean + 1.5 sigma of that distance, are set aside; the rest are wall galaxies.
2. A grid of 5 Mpc/h cells covers the wall galaxies; every empty cell whose centre is
   in the survey seeds a hole, grown until four wall galaxies bound it
   (:mod:`.grow`), in chunks run by :func:`desilab.projects.run_units` (Ray when a
   cluster is reachable, else processes).
3. Holes grown from different cells onto the same four galaxies are one hole. Holes
   with more than 10 % of their volume outside the survey are dropped; those partly
   outside are boundary holes.
4. From the largest hole down, a hole of radius >= 10 Mpc/h is a maximal sphere (one
   per void) unless it overlaps an earlier maximal by more than 10 % of its volume.
5. Any other hole joins a void when it overlaps exactly one maximal by at least 50 %
   of its volume; holes inside a maximal add nothing and are dropped.
6. A void is EDGE = 1 if one of its holes is a boundary hole, else 2 if a hole
   centre is within 10 Mpc/h of the survey edge, else 0; R_EFF is the radius of a
   sphere with the volume of its union of holes.

The grid lies in the principal-axis frame of the galaxies by default, so the voids
do not depend on the coordinate system; ``frame="vast"`` uses VAST's survey-aligned
grid instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from desilab.desi.datamodel import HOLES, MAXIMALS, dtype_of
from desilab.desi.vac import read_voidfinder, write_voidfinder
from scipy.spatial import cKDTree

from ..runner import run_units
from .combine import effective_radii, find_maximals, join_holes
from .geometry import (
    MPC_H,
    GridFrame,
    SurveyMask,
    as_mpch,
    ball_points,
    surface_directions,
    xyz_to_radec,
)
from .grow import grow_chunk, grow_holes

__all__ = ["ALGORITHM_VERSION", "VoidCatalog", "VoidFinderConfig", "find_voids"]

ALGORITHM_VERSION = "1.0"


@dataclass(frozen=True)
class VoidFinderConfig:
    """VoidFinder parameters (VAST's defaults); lengths in Mpc/h.

    Attributes
    ----------
    grid_edge : float
        Hole-search grid cell.
    neighbor : int
        The k-th nearest neighbour used to find isolated galaxies.
    isolation_sigma : float
        Isolated: k-th neighbour distance above mean + this many standard deviations.
    remove_isolated : bool
        Whether to set isolated galaxies aside.
    min_maximal_radius : float
        Smallest maximal sphere.
    maximal_overlap : float
        A maximal candidate overlapping an earlier maximal by more than this fraction of
        its volume is not maximal.
    join_overlap : float
        A hole joins the void whose maximal covers at least this fraction of its volume.
    max_outside : float
        Holes with more than this fraction of their volume outside the survey are dropped.
    duplicate_tol : float
        Holes of the radius-sorted list within this distance and radius of the previous
        one are duplicates (VAST's ``remove_duplicates_2``).
    edge_buffer : float
        Distance to the survey edge that makes a void (EDGE = 2) or a galaxy an edge one.
    frame : {'principal', 'vast'}
        Grid frame (see :class:`~.geometry.GridFrame`).
    k_candidates : int
        Galaxies per KD-tree query while growing holes (speed only, not results).
    """

    grid_edge: float = 5.0
    neighbor: int = 3
    isolation_sigma: float = 1.5
    remove_isolated: bool = True
    min_maximal_radius: float = 10.0
    maximal_overlap: float = 0.1
    join_overlap: float = 0.5
    max_outside: float = 0.1
    duplicate_tol: float = 0.1
    edge_buffer: float = 10.0
    frame: str = "principal"
    k_candidates: int = 12

    def __post_init__(self) -> None:
        if self.frame not in ("principal", "vast"):
            raise ValueError(f"frame must be 'principal' or 'vast', not {self.frame!r}")
        if self.grid_edge <= 0 or self.min_maximal_radius <= 0:
            raise ValueError("grid_edge and min_maximal_radius must be positive")

    @property
    def version(self) -> str:
        """Algorithm version and a digest of the parameters, stored with every result."""
        params = {k: v for k, v in asdict(self).items() if k != "k_candidates"}
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        return f"voidfinder-{ALGORITHM_VERSION}+{digest}"


@dataclass
class VoidCatalog:
    """Voids in the DESIVAST VoidFinder format.

    Attributes
    ----------
    maximals : structured ndarray
        One row per void (MAXIMALS columns: X, Y, Z, RADIUS, R, RA, DEC, VOID, EDGE,
        R_EFF, R_EFF_UNCERT), Mpc/h.
    holes : structured ndarray
        Every sphere of every void, the maximals included (HOLES: X, Y, Z, RADIUS, VOID).
    header : dict
        Primary-header keywords (distance limits, counts, version, grid frame).
    axes : (3, 3) ndarray
        Grid-frame axes (columns); the edge tests use them.
    info : dict
        Diagnostics of the run (counts, timings); not written to files.
    """

    maximals: np.ndarray
    holes: np.ndarray
    header: dict = field(default_factory=dict)
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.maximals)

    @property
    def radius(self) -> u.Quantity:
        """Maximal-sphere radii."""
        return np.asarray(self.maximals["RADIUS"], dtype=float) * MPC_H

    @property
    def effective_radius(self) -> u.Quantity:
        """R_EFF: radius of the sphere with each void's volume."""
        return np.asarray(self.maximals["R_EFF"], dtype=float) * MPC_H

    def hole_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hole centres (n, 3), radii and void ids as plain arrays (Mpc/h)."""
        h = self.holes
        centres = np.column_stack([h["X"], h["Y"], h["Z"]]).astype(np.float64)
        return centres, np.asarray(h["RADIUS"], np.float64), np.asarray(h["VOID"], np.int64)

    def write(self, path: str | Path) -> Path:
        """Write a DESIVAST VoidFinder file (PRIMARY, MAXIMALS, HOLES)."""
        header = dict(self.header)
        for i in range(3):
            for j in range(3):
                header[f"FRAX{i + 1}{j + 1}"] = float(self.axes[i, j])
        return write_voidfinder(path, self.maximals, self.holes, header)

    @classmethod
    def read(cls, path: str | Path) -> VoidCatalog:
        """Read ours or a DESIVAST DR1 file (``DESIVAST_BGS_VOLLIM_VoidFinder_{NGC,SGC}``)."""
        from astropy.io import fits

        maximals_t, holes_t = read_voidfinder(path)
        maximals = np.zeros(len(maximals_t), dtype=dtype_of(MAXIMALS))
        holes = np.zeros(len(holes_t), dtype=dtype_of(HOLES))
        for out, table in ((maximals, maximals_t), (holes, holes_t)):
            for name in out.dtype.names:
                if name in table.colnames:
                    out[name] = np.asarray(table[name])
        with fits.open(path) as hdul:
            header = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "")}
        axes = np.eye(3)
        if all(f"FRAX{i}{j}" in header for i in (1, 2, 3) for j in (1, 2, 3)):
            axes = np.array([[header[f"FRAX{i}{j}"] for j in (1, 2, 3)] for i in (1, 2, 3)])
        return cls(maximals, holes, header, axes)


def _isolated(xyz: np.ndarray, cfg: VoidFinderConfig) -> tuple[np.ndarray, np.ndarray]:
    """Field-galaxy flags, and a spatial order of the galaxies (the KD-tree's).

    Queries and gathers in spatial order hit the cache: several times faster than in
    the catalog's order.
    """
    tree = cKDTree(xyz)
    order = tree.indices
    if not cfg.remove_isolated or len(xyz) <= cfg.neighbor:
        return np.zeros(len(xyz), dtype=bool), order
    dist = np.empty(len(xyz))
    dist[order] = tree.query(xyz[order], k=cfg.neighbor + 1)[0][:, cfg.neighbor]
    return dist > dist.mean() + cfg.isolation_sigma * dist.std(), order


def _seeds(wall: np.ndarray, frame: GridFrame, mask: SurveyMask) -> np.ndarray:
    """Centres of the empty grid cells inside the survey."""
    cells = frame.cell_of(wall)
    lo = cells.min(axis=0)
    shape = tuple(int(s) for s in cells.max(axis=0) - lo + 1)
    occupied = np.zeros(int(np.prod(shape)), dtype=bool)
    occupied[np.ravel_multi_index(tuple((cells - lo).T), shape)] = True
    empty = np.flatnonzero(~occupied)
    seeds = np.empty((0, 3))
    # Chunks bound the memory of the mask test on big grids.
    for start in range(0, len(empty), 500_000):
        ijk = np.stack(np.unravel_index(empty[start : start + 500_000], shape), -1) + lo
        centres = frame.cell_centres(ijk)
        seeds = np.concatenate([seeds, centres[mask.contains(centres)]])
    return seeds


def _outside_fraction(
    centres: np.ndarray,
    radii: np.ndarray,
    mask: SurveyMask,
    axes: np.ndarray,
    max_outside: float = 0.1,
) -> np.ndarray:
    """Fraction of each hole's volume outside the survey (0 when its surface is inside)."""
    frac = np.zeros(len(radii))
    dirs = surface_directions() @ axes.T
    coarse, fine = ball_points(0.25) @ axes.T, ball_points(0.15) @ axes.T
    test = np.flatnonzero(edge_distance(mask, centres) < radii)
    for s in range(0, len(test), 20_000):
        idx = test[s : s + 20_000]
        c, r = centres[idx], radii[idx]
        surf = mask.contains((c[:, None, :] + r[:, None, None] * dirs).reshape(-1, 3))
        partial = idx[~surf.reshape(len(r), -1).all(axis=1)]
        out = _fraction_outside(centres[partial], radii[partial], mask, coarse)
        # The coarse lattice is good to ~2 % of the volume (0.2 % for the fine one): decide
        # close calls with the finer one.
        close = np.abs(out - max_outside) < 0.025
        out[close] = _fraction_outside(centres[partial[close]], radii[partial[close]], mask, fine)
        # A surface point outside marks a boundary hole even if no volume point is.
        frac[partial] = np.maximum(out, 1e-12)
    return frac


def _fraction_outside(
    centres: np.ndarray, radii: np.ndarray, mask: SurveyMask, unit_pts: np.ndarray
) -> np.ndarray:
    out = np.zeros(len(radii))
    step = max(1, 2_000_000 // len(unit_pts))
    for s in range(0, len(radii), step):
        pts = centres[s : s + step, None, :] + radii[s : s + step, None, None] * unit_pts
        inside = mask.contains(pts.reshape(-1, 3)).reshape(len(pts), -1)
        out[s : s + step] = 1.0 - inside.mean(axis=1)
    return out


def edge_distance(mask: SurveyMask, points: np.ndarray) -> np.ndarray:
    """The mask's lower bound on the distance to its edge, or zeros when it has none."""
    bound = getattr(mask, "distance_to_edge", None)
    return bound(points) if bound is not None else np.zeros(len(points))


def near_edge(points: np.ndarray, mask: SurveyMask, axes: np.ndarray, buffer: float) -> np.ndarray:
    """True where a point ``buffer`` away along a frame axis is outside the survey.

    VAST's test (six points, +-buffer along each axis), along the grid-frame axes.
    """
    out = np.zeros(len(points), dtype=bool)
    test = np.flatnonzero(edge_distance(mask, points) < buffer)
    if len(test):
        steps = np.concatenate([axes.T, -axes.T]) * buffer
        probes = (points[test, None, :] + steps[None]).reshape(-1, 3)
        out[test] = ~mask.contains(probes).reshape(len(test), 6).all(axis=1)
    return out


def _ray_reachable() -> bool:
    """As :func:`~desilab.projects.runner.ray_address`, without importing Ray (seconds)."""
    if os.environ.get("RAY_ADDRESS"):
        return True
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


class _Clock:
    """Wall and CPU time per stage (CPU time tells work from waiting on a busy machine)."""

    def __init__(self, wall: dict, cpu: dict) -> None:
        self.wall, self.cpu = wall, cpu
        self.start = self.last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall[name], self.cpu[name] = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now

    def total(self) -> None:
        self.wall["total"] = time.perf_counter() - self.start[0]
        self.cpu["total"] = time.process_time() - self.start[1]


def find_voids(
    xyz,
    mask: SurveyMask,
    config: VoidFinderConfig | None = None,
    *,
    workers: int | None = None,
    use_ray: bool | None = None,
    chunk_size: int = 20_000,
    progress: bool = False,
    header: dict | None = None,
) -> VoidCatalog:
    """Find voids in a volume-limited galaxy sample.

    Parameters
    ----------
    xyz : Quantity or ndarray (n, 3)
        Comoving positions, Mpc/h (bare arrays are taken as Mpc/h).
    mask : SurveyMask
        The survey (e.g. :class:`~.geometry.HealpixMask`); it must be picklable to
        run in several processes or on Ray.
    config : VoidFinderConfig, optional
        Parameters; VAST's defaults.
    workers : int, optional
        Local processes for hole growing (default: the profile's CPU limit); 1 runs in
        this process.
    use_ray : bool, optional
        Force Ray on or off; by default chunks go to Ray when a cluster is reachable
        (RAY_ADDRESS, or this process joined one), whatever ``workers`` says.
    chunk_size : int
        Seeds per unit of work.
    progress : bool
        Show a progress bar over chunks.
    header : dict, optional
        Extra primary keywords for the output file (distance limits, sample cuts).

    Returns
    -------
    VoidCatalog
    """
    cfg = config or VoidFinderConfig()
    xyz = as_mpch(xyz).reshape(-1, 3)
    if not np.all(np.isfinite(xyz)):
        raise ValueError("galaxy positions contain NaN or inf")
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    clock = _Clock(times, cpu)
    field_gal, order = _isolated(xyz, cfg)
    wall = xyz[order[~field_gal[order]]]
    if len(wall) < 10:
        raise ValueError(f"only {len(wall)} wall galaxies: too few to find voids")
    frame = GridFrame.principal(xyz, cfg.grid_edge)
    if cfg.frame == "vast":
        frame = GridFrame.vast(wall, cfg.grid_edge)
    seeds = _seeds(wall, frame, mask)
    clock.lap("grid")
    chunks = [seeds[s : s + chunk_size] for s in range(0, len(seeds), chunk_size)]
    if use_ray is None:
        use_ray = _ray_reachable() and len(chunks) > 1
    if not use_ray and (workers == 1 or len(chunks) <= 1):
        parts = [grow_holes(seeds, wall, mask, axes=frame.axes, k=cfg.k_candidates)]
    else:
        parts = run_units(
            grow_chunk,
            chunks,
            workers=workers,
            use_ray=use_ray,
            desc="VoidFinder holes",
            progress=progress,
            wall=wall,
            mask=mask,
            axes=frame.axes,
            k=cfg.k_candidates,
        )
    centres = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3))
    radii = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    bounds = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 4), np.int64)
    grown = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, bool)
    clock.lap("grow")
    # Seeds that converge onto the same four galaxies grew the same hole.
    good = np.flatnonzero(grown)
    _, first = np.unique(np.sort(bounds[good], axis=1), axis=0, return_index=True)
    good = good[np.sort(first)]
    centres, radii = centres[good], radii[good]
    outside = _outside_fraction(centres, radii, mask, frame.axes, cfg.max_outside)
    keep = outside <= cfg.max_outside
    centres, radii, boundary = centres[keep], radii[keep], outside[keep] > 0
    order = np.argsort(-radii, kind="stable")
    centres, radii, boundary = centres[order], radii[order], boundary[order]
    if len(radii) > 1:
        sep = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        dup = (sep <= cfg.duplicate_tol) & (-np.diff(radii) <= cfg.duplicate_tol)
        unique = np.concatenate([[True], ~dup])
        centres, radii, boundary = centres[unique], radii[unique], boundary[unique]
    clock.lap("filter")
    max_idx = find_maximals(centres, radii, cfg.min_maximal_radius, cfg.maximal_overlap)
    void = join_holes(centres, radii, max_idx, cfg.join_overlap)
    member = np.flatnonzero(void >= 0)
    nvoid = len(max_idx)
    edge = np.zeros(nvoid, dtype=np.int64)
    if len(member):
        near = near_edge(centres[member], mask, frame.axes, cfg.edge_buffer)
        np.maximum.at(edge, void[member[near]], 2)
        edge[np.unique(void[member[boundary[member]]])] = 1
    reff, reff_err = effective_radii(
        centres[member], radii[member], void[member], nvoid, frame.axes
    )
    clock.lap("combine")
    maximals = np.zeros(nvoid, dtype=dtype_of(MAXIMALS))
    mc = centres[max_idx]
    maximals["X"], maximals["Y"], maximals["Z"] = mc.T if nvoid else (0, 0, 0)
    maximals["RADIUS"] = radii[max_idx]
    maximals["RA"], maximals["DEC"], maximals["R"] = xyz_to_radec(mc) if nvoid else (0, 0, 0)
    maximals["VOID"] = np.arange(nvoid)
    maximals["EDGE"] = edge
    maximals["R_EFF"], maximals["R_EFF_UNCERT"] = reff, reff_err
    holes = np.zeros(len(member), dtype=dtype_of(HOLES))
    holes["X"], holes["Y"], holes["Z"] = centres[member].T if len(member) else (0, 0, 0)
    holes["RADIUS"] = radii[member]
    holes["VOID"] = void[member]
    clock.total()
    head = {
        "GALAXY": (len(xyz), "Galaxies in the sample"),
        "WALL": (len(wall), "Wall galaxies"),
        "FIELD": (int(field_gal.sum()), "Isolated (field) galaxies"),
        "VOID": (nvoid, "Void count"),
        "METRIC": "comoving",
        "HP": (1.0, "Distances in Mpc/h"),
        "GRIDEDGE": (cfg.grid_edge, "Hole grid cell (Mpc/h)"),
        "MINRMAX": (cfg.min_maximal_radius, "Smallest maximal sphere (Mpc/h)"),
        "FRAME": (cfg.frame, "Hole grid frame"),
        "VFVERS": (cfg.version, "desilab VoidFinder version"),
    }
    head.update(header or {})
    info = {
        "n_galaxies": len(xyz),
        "n_wall": len(wall),
        "n_field": int(field_gal.sum()),
        "n_seeds": len(seeds),
        "n_holes_grown": int(grown.sum()),
        "n_holes_unique": len(radii),
        "n_holes_in_voids": len(member),
        "field": field_gal,
        "times": {k: round(v, 3) for k, v in times.items()},
        "cpu_times": {k: round(v, 3) for k, v in cpu.items()},
    }
    return VoidCatalog(maximals, holes, head, frame.axes, info)

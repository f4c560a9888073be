"""Galaxy environments from a void catalog, in VAST's ``vflag`` convention.

``vflag`` (VAST ``vast.voidfinder.vflag.determine_vflag``):

* 0, wall: inside the survey, in no void hole;
* 1, void: inside a hole of a void (checked first, as VAST does);
* 2, edge: not in a void and within ``edge_buffer`` (10 Mpc/h) of the survey edge,
  so the environment cannot be decided;
* 9, outside: outside the survey mask or its distance limits.

Void galaxies also get the id of their void (the hole whose centre is nearest in
units of its radius decides when holes of two voids overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .geometry import SurveyMask, as_mpch
from .voidfinder import VoidCatalog, near_edge

__all__ = [
    "VFLAG_EDGE",
    "VFLAG_OUTSIDE",
    "VFLAG_VOID",
    "VFLAG_WALL",
    "Membership",
    "classify_galaxies",
    "void_of_points",
]

VFLAG_WALL, VFLAG_VOID, VFLAG_EDGE, VFLAG_OUTSIDE = 0, 1, 2, 9
VFLAG_NAMES = {VFLAG_WALL: "wall", VFLAG_VOID: "void", VFLAG_EDGE: "edge", VFLAG_OUTSIDE: "outside"}
#: Galaxies on a hole's surface (its bounding galaxies) are not inside it.
_SURFACE_RTOL = 1e-9


@dataclass
class Membership:
    """Environment of each galaxy.

    Attributes
    ----------
    vflag : ndarray of int8
        0 wall, 1 void, 2 edge, 9 outside.
    void : ndarray of int64
        Void id (the VOID column of the catalog) for void galaxies, -1 otherwise.
    targetid : ndarray of int64, optional
        The galaxies' TARGETIDs, when known.
    """

    vflag: np.ndarray
    void: np.ndarray
    targetid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vflag)

    def counts(self) -> dict[str, int]:
        """Number of galaxies per environment name."""
        return {name: int(np.sum(self.vflag == f)) for f, name in VFLAG_NAMES.items()}

    def members(self, void_id: int) -> np.ndarray:
        """Indices of the galaxies in void ``void_id``."""
        return np.flatnonzero(self.void == void_id)


def void_of_points(
    xyz: np.ndarray, centres: np.ndarray, radii: np.ndarray, void: np.ndarray
) -> np.ndarray:
    """Void id of each point (-1 when in no hole).

    Parameters
    ----------
    xyz : (n, 3) ndarray
        Points, Mpc/h.
    centres, radii, void : ndarray
        Holes and the void each belongs to.
    """
    out = np.full(len(xyz), -1, dtype=np.int64)
    if len(xyz) == 0 or len(radii) == 0:
        return out
    # One ball query per hole (with its own radius) visits only the galaxies inside.
    lists = cKDTree(xyz).query_ball_point(centres, radii * (1 - _SURFACE_RTOL))
    hole = np.repeat(np.arange(len(radii)), [len(x) for x in lists])
    if len(hole) == 0:
        return out
    gal = np.concatenate(lists).astype(np.int64)
    score = np.linalg.norm(xyz[gal] - centres[hole], axis=1) / radii[hole]
    order = np.lexsort((score, gal))
    gal, hole = gal[order], hole[order]
    first = np.concatenate([[True], gal[1:] != gal[:-1]])
    out[gal[first]] = void[hole[first]]
    return out


def classify_galaxies(
    xyz,
    catalog: VoidCatalog,
    mask: SurveyMask,
    *,
    edge_buffer: float = 10.0,
    targetid: np.ndarray | None = None,
) -> Membership:
    """Classify galaxies as wall, void, edge or outside (VAST's vflag).

    Parameters
    ----------
    xyz : Quantity or ndarray (n, 3)
        Comoving positions, Mpc/h; any galaxies (e.g. the flux-limited sample), not only
        those the voids were found with.
    catalog : VoidCatalog
        Ours or a DESIVAST file read with :meth:`VoidCatalog.read`.
    mask : SurveyMask
        The survey the voids were found in.
    edge_buffer : float
        Mpc/h: closer than this to the edge (along the catalog's frame axes, as VAST
        checks along x, y, z) makes a non-void galaxy an edge galaxy.
    targetid : ndarray, optional
        Kept in the result.
    """
    xyz = as_mpch(xyz).reshape(-1, 3)
    centres, radii, void_ids = catalog.hole_arrays()
    void = void_of_points(xyz, centres, radii, void_ids)
    vflag = np.full(len(xyz), VFLAG_WALL, dtype=np.int8)
    vflag[void >= 0] = VFLAG_VOID
    rest = np.flatnonzero(void < 0)
    inside = mask.contains(xyz[rest]) if len(rest) else np.zeros(0, bool)
    vflag[rest[~inside]] = VFLAG_OUTSIDE
    wall = rest[inside]
    if len(wall):
        vflag[wall[near_edge(xyz[wall], mask, catalog.axes, edge_buffer)]] = VFLAG_EDGE
    tid = None if targetid is None else np.asarray(targetid, dtype=np.int64)
    return Membership(vflag, void, tid)

"""What a void explorer shows, as plain data: voids, their members, slices, statistics.

:class:`VoidStudy` ties one cap's galaxy sample, its void catalog and the galaxies'
environments together; a widget (or a notebook) asks it for a table of voids, the
members and properties of one void, the galaxies and hole cross-sections in a slice,
and the void-against-wall distributions with their test results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from .classify import VFLAG_NAMES, Membership, classify_galaxies
from .geometry import radec_to_xyz
from .sample import GalaxySample, SampleCuts, build_sample
from .stats import (
    Comparison,
    compare_environments,
    galaxy_void_fraction,
    void_size_function,
    volume_filling_fraction,
)
from .voidfinder import VoidCatalog, VoidFinderConfig, find_voids

__all__ = ["SlicePlane", "SliceView", "VoidStudy"]


@dataclass(frozen=True)
class SlicePlane:
    """A slab of thickness ``thickness`` (Mpc/h) around a plane.

    Attributes
    ----------
    origin : (3,) array
        A point of the plane, Mpc/h.
    normal, e1, e2 : (3,) arrays
        Unit normal and the in-plane axes of the 2-D view.
    thickness : float
    """

    origin: np.ndarray
    normal: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    thickness: float

    @classmethod
    def through_observer(
        cls, ra_deg: float, dec_deg: float, *, offset: float = 0.0, thickness: float = 10.0
    ) -> SlicePlane:
        """A wedge through the observer along (RA, Dec), seen from the north.

        ``e1`` points along the line of sight, ``e2`` east; ``offset`` moves the plane
        north (Mpc/h).
        """
        los = radec_to_xyz(np.array([ra_deg]), np.array([dec_deg]), np.ones(1))[0]
        ra = np.radians(ra_deg)
        east = np.array([-np.sin(ra), np.cos(ra), 0.0])
        north = np.cross(los, east)
        return cls(offset * north, north, los, east, float(thickness))

    def distance(self, xyz: np.ndarray) -> np.ndarray:
        """Signed distance of points from the plane."""
        return (np.atleast_2d(xyz) - self.origin) @ self.normal

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """In-plane coordinates (n, 2)."""
        rel = np.atleast_2d(xyz) - self.origin
        return np.column_stack([rel @ self.e1, rel @ self.e2])


@dataclass
class SliceView:
    """Galaxies and hole cross-sections in a slab.

    Attributes
    ----------
    galaxies : Table
        Index (into the sample), U, V (in-plane, Mpc/h), VFLAG, VOID of galaxies in
        the slab.
    circles : Table
        VOID, U, V, RADIUS of the holes' cross-sections with the plane.
    """

    galaxies: Table
    circles: Table


@dataclass
class VoidStudy:
    """One cap's galaxies, voids and environments.

    Attributes
    ----------
    sample : GalaxySample
    catalog : VoidCatalog
    membership : Membership
        Row-matched with ``sample.table``.
    """

    sample: GalaxySample
    catalog: VoidCatalog
    membership: Membership

    @classmethod
    def run(
        cls,
        source,
        *,
        cap: str = "NGC",
        cuts: SampleCuts | None = None,
        config: VoidFinderConfig | None = None,
        catalog: VoidCatalog | str | Path | None = None,
        workers: int | None = 1,
        galaxies: Table | None = None,
        progress: Callable[[str, float], None] | None = None,
    ) -> VoidStudy:
        """Build the sample, find voids (or use ``catalog``, e.g. a DESIVAST file), classify.

        Parameters
        ----------
        source : DR1Layout, path, DSN or catalog
            Galaxies (see :func:`~.sample.load_galaxies`).
        cap : {'NGC', 'SGC', 'ALL'}
        cuts, config : optional
            Sample cuts and VoidFinder parameters.
        catalog : VoidCatalog or path, optional
            Voids to classify with instead of finding them.
        workers : int, optional
            Processes for the void finder.
        galaxies : Table, optional
            Galaxies already loaded.
        progress : callable, optional
            Called as ``progress(stage, fraction done)`` before each stage (for widgets).
        """
        step = progress or (lambda stage, done: None)
        step("loading galaxies", 0.0)
        sample = build_sample(source, cuts, cap=cap, galaxies=galaxies)
        step("finding voids" if catalog is None else "reading voids", 0.2)
        if catalog is None:
            catalog = find_voids(
                sample.xyz[sample.vollim], sample.mask, config, workers=workers,
                header=sample.header(),
            )  # fmt: skip
        elif not isinstance(catalog, VoidCatalog):
            catalog = VoidCatalog.read(catalog)
        step("classifying galaxies", 0.8)
        membership = classify_galaxies(sample.xyz, catalog, sample.mask, targetid=sample.targetid)
        step("done", 1.0)
        return cls(sample, catalog, membership)

    @classmethod
    def from_database(
        cls,
        dsn: str,
        model_version: str,
        cap: str = "NGC",
        *,
        galaxies: Table | None = None,
        progress: Callable[[str, float], None] | None = None,
    ) -> VoidStudy:
        """A study from the catalog alone: galaxies, voids and environments of a stored run.

        Parameters
        ----------
        dsn : str
            Any role that reads ``dr1`` and ``results`` (e.g. DESILAB_DATABASE_URL).
        model_version : str
            A run of ``desilab voids find|classify`` (see :func:`~.results.list_runs`).
        cap : str
        galaxies : Table, optional
            Already loaded galaxies (else ``dr1.fastspec`` is read).
        progress : callable, optional
            Called as ``progress(stage, fraction done)`` before each stage.
        """
        from .results import list_runs, read_membership, read_voids

        step = progress or (lambda stage, done: None)
        step("reading the run", 0.0)
        runs = {r["model_version"]: r["assumptions"] for r in list_runs(dsn)}
        if model_version not in runs:
            raise KeyError(f"no void run {model_version!r}; runs: {sorted(runs)}")
        sample_cuts = runs[model_version].get("sample", {})
        cuts = SampleCuts(
            sample_cuts.get("mag_limit", -20.0),
            sample_cuts.get("zmin", 0.01),
            sample_cuts.get("zmax", 0.24),
            sample_cuts.get("min_deltachi2", 25.0),
        )
        step("loading galaxies", 0.1)
        sample = build_sample(
            dsn, cuts, cap=cap, nside=sample_cuts.get("footprint_nside", 64), galaxies=galaxies
        )
        step("reading voids and environments", 0.7)
        catalog = read_voids(dsn, model_version, cap)
        rows = read_membership(dsn, model_version, cap=cap)
        pos = np.clip(np.searchsorted(rows["TARGETID"], sample.targetid), 0, len(rows) - 1)
        known = len(rows) > 0 and np.asarray(rows["TARGETID"])[pos] == sample.targetid
        vflag = np.where(known, np.asarray(rows["VFLAG"])[pos], -1).astype(np.int8)
        void = np.where(known, np.asarray(rows["VOID"])[pos], -1)
        step("done", 1.0)
        return cls(sample, catalog, Membership(vflag, void, sample.targetid))

    def void_table(self) -> Table:
        """One row per void: the MAXIMALS columns plus N_HOLES, N_GAL and REDSHIFT."""
        table = Table(self.catalog.maximals)
        holes = np.asarray(self.catalog.holes["VOID"], dtype=np.int64)
        nvoid = len(table)
        table["N_HOLES"] = np.bincount(holes, minlength=nvoid)[:nvoid]
        member = self.membership.void[self.membership.void >= 0]
        table["N_GAL"] = np.bincount(member, minlength=nvoid)[:nvoid]
        dist = self.sample.table["DIST"]
        z = self.sample.table["Z"]
        order = np.argsort(dist)
        table["REDSHIFT"] = np.interp(table["R"], np.asarray(dist)[order], np.asarray(z)[order])
        return table

    def void_info(self, void_id: int) -> dict:
        """The properties of one void, as plain numbers."""
        table = self.void_table()
        row = table[np.flatnonzero(table["VOID"] == void_id)]
        if len(row) == 0:
            raise KeyError(f"no void {void_id} (ids run 0..{len(table) - 1})")
        return {name: row[name][0].item() for name in table.colnames}

    def holes(self, void_id: int) -> Table:
        """The holes (spheres) of one void."""
        holes = self.catalog.holes
        return Table(holes[holes["VOID"] == void_id])

    def members(self, void_id: int) -> Table:
        """The galaxies of one void with their properties, nearest to its centre first."""
        idx = self.membership.members(void_id)
        info = self.void_info(void_id)
        centre = np.array([info["X"], info["Y"], info["Z"]])
        dist = np.linalg.norm(self.sample.xyz[idx] - centre, axis=1)
        order = np.argsort(dist)
        table = self.sample.table[idx[order]]
        table["DIST_TO_CENTRE"] = dist[order]
        table["DIST_TO_CENTRE"].unit = "Mpc/h"
        return table

    def environments(self) -> Table:
        """TARGETID, RA, DEC, Z, VFLAG, ENV (name) and VOID of every galaxy (sky view)."""
        t = self.sample.table
        vflag = self.membership.vflag
        return Table(
            {
                "TARGETID": t["TARGETID"],
                "RA": t["RA"],
                "DEC": t["DEC"],
                "Z": t["Z"],
                "VFLAG": vflag,
                "ENV": np.array([VFLAG_NAMES[int(f)] for f in vflag]),
                "VOID": self.membership.void,
            }
        )

    def slice(self, plane: SlicePlane) -> SliceView:
        """Galaxies in the slab and the circles where the plane cuts the holes."""
        d = plane.distance(self.sample.xyz)
        inside = np.flatnonzero(np.abs(d) <= plane.thickness / 2)
        uv = plane.project(self.sample.xyz[inside])
        galaxies = Table(
            {
                "INDEX": inside,
                "U": uv[:, 0],
                "V": uv[:, 1],
                "VFLAG": self.membership.vflag[inside],
                "VOID": self.membership.void[inside],
            }
        )
        centres, radii, void = self.catalog.hole_arrays()
        dh = plane.distance(centres)
        cut = np.abs(dh) < radii
        cuv = plane.project(centres[cut])
        circles = Table(
            {
                "VOID": void[cut],
                "U": cuv[:, 0],
                "V": cuv[:, 1],
                "RADIUS": np.sqrt(radii[cut] ** 2 - dh[cut] ** 2),
            }
        )
        return SliceView(galaxies, circles)

    def compare(self, properties: dict[str, str] | None = None, **kwargs) -> list[Comparison]:
        """Void against matched wall galaxies (see :func:`~.stats.compare_environments`)."""
        return compare_environments(self.sample.table, self.membership.vflag, properties, **kwargs)

    def summary(self, *, n_points: int = 100_000) -> dict:
        """Void count, size function, volume filling fraction and galaxy void fraction."""
        volume = self.sample.mask.volume
        sizes = void_size_function(self.catalog.effective_radius, volume)
        filling = volume_filling_fraction(self.catalog, self.sample.mask, n_points=n_points)
        frac = galaxy_void_fraction(self.membership.vflag)
        return {
            "n_voids": len(self.catalog),
            "n_edge_voids": int(np.sum(self.catalog.maximals["EDGE"] > 0)),
            "survey_volume_mpch3": volume,
            "size_function": sizes,
            "volume_filling_fraction": filling,
            "galaxy_void_fraction": frac,
            "environments": self.membership.counts(),
        }

"""The galaxy sample: BGS galaxies from the DR1 files or the catalog, cuts, positions, mask.

Galaxies come from the FastSpecFit main-bright VAC (METADATA: position, redshift,
ZWARN, DELTACHI2; FASTSPEC: absolute magnitudes, stellar mass, SFR, Dn4000, H-alpha
EW), either read from the DR1 tree (:class:`~desilab.desi.DR1Layout`) or queried from
the PostgreSQL catalog (``dr1.fastspec``).

The volume-limited sample (DESIVAST's: ^{0.1}M_r < -20 with h = 1, 0.01 < z < 0.24,
good redshifts) finds the voids; every good-redshift galaxy in the same distance range
can then be classified. Positions are comoving Mpc/h (h = 1), observer at the origin,
as VAST; the footprint is a HEALPix mask per Galactic cap, as DESIVAST splits NGC/SGC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.cosmology import FLRW, Planck18
from astropy.table import Table
from desilab.desi import DR1Layout, good_redshift, read_fastspec

from .geometry import HealpixMask, radec_to_xyz

__all__ = [
    "GALAXY_COLUMNS",
    "GalaxySample",
    "SampleCuts",
    "build_sample",
    "cap_of",
    "comoving_mpch",
    "derive_properties",
    "load_galaxies",
]

#: FastSpecFit columns the project reads (METADATA and FASTSPEC of main-bright).
GALAXY_COLUMNS = (
    "TARGETID",
    "RA",
    "DEC",
    "Z",
    "ZWARN",
    "DELTACHI2",
    "ABSMAG01_SDSS_G",
    "ABSMAG01_SDSS_R",
    "LOGMSTAR",
    "SFR",
    "DN4000",
    "HALPHA_EW",
)


@dataclass(frozen=True)
class SampleCuts:
    """Cuts of the volume-limited sample (DESIVAST BGS VOLLIM by default).

    Attributes
    ----------
    mag_limit : float
        Keep ^{0.1}M_r (ABSMAG01_SDSS_R, h = 1) brighter than this.
    zmin, zmax : float
        Redshift range (also the distance limits of the survey mask).
    min_deltachi2 : float
        Good redshift: ZWARN == 0 and DELTACHI2 above this.
    cosmology : astropy FLRW
        For comoving distances (Planck18 unless configured).
    """

    mag_limit: float = -20.0
    zmin: float = 0.01
    zmax: float = 0.24
    min_deltachi2: float = 25.0
    cosmology: FLRW = field(default_factory=lambda: Planck18, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.zmin < self.zmax:
            raise ValueError(f"need 0 <= zmin < zmax, got {self.zmin}, {self.zmax}")

    def distance_limits(self) -> tuple[float, float]:
        """Comoving distances of zmin and zmax, Mpc/h."""
        r = comoving_mpch(np.array([self.zmin, self.zmax]), self.cosmology)
        return float(r[0]), float(r[1])

    def describe(self) -> dict:
        """The cuts as header keywords (VAST/DESIVAST names)."""
        rmin, rmax = self.distance_limits()
        return {
            "ZLIML": (self.zmin, "Lower redshift limit"),
            "ZLIMU": (self.zmax, "Upper redshift limit"),
            "DLIML": (round(rmin, 3), "Lower distance limit (Mpc/h)"),
            "DLIMU": (round(rmax, 3), "Upper distance limit (Mpc/h)"),
            "MAGLIM": (self.mag_limit, "Absolute magnitude limit (ABSMAG01_SDSS_R)"),
            "DCHI2": (self.min_deltachi2, "Good redshift: DELTACHI2 above"),
            "COSMO": (self.cosmology.name or "custom", "Cosmology"),
            "OMEGAM": (round(float(self.cosmology.Om0), 4), "Omega_m"),
        }


def comoving_mpch(z: np.ndarray, cosmology: FLRW = Planck18) -> np.ndarray:
    """Comoving distance in Mpc/h (h = 1 units, as VAST) for redshifts ``z``."""
    z = np.asarray(z, dtype=np.float64)
    # A fine table is exact to ~1e-7 relative and much faster than per-object integrals.
    zmax = max(float(np.nanmax(z)) if z.size else 1.0, 1e-3) * 1.01
    grid = np.linspace(0.0, zmax, 4001)
    dist = cosmology.comoving_distance(grid).to_value(u.Mpc) * cosmology.h
    return np.interp(z, grid, dist)


def cap_of(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """'NGC' or 'SGC' for each position, by the sign of its Galactic latitude."""
    b = SkyCoord(np.asarray(ra_deg) * u.deg, np.asarray(dec_deg) * u.deg).galactic.b
    return np.where(b.to_value(u.deg) >= 0, "NGC", "SGC")


def _is_catalog(source) -> bool:
    if isinstance(source, (DR1Layout, Path)):
        return False
    if isinstance(source, str):
        # libpq accepts URIs and key=value strings; anything else is a DR1 tree.
        return source.startswith(("postgres://", "postgresql://")) or (
            "=" in source and not os.path.isdir(source)
        )
    return True


def _connect(source):
    import psycopg

    if isinstance(source, str):
        return psycopg.connect(source), True
    if hasattr(source, "execute") and hasattr(source, "cursor"):
        return source, False
    dsn = getattr(source, "dsn", None)
    if isinstance(dsn, str):
        return psycopg.connect(dsn), True
    connect = getattr(source, "connect", None)
    if callable(connect):
        return connect(), True
    raise TypeError(f"cannot get a database connection from {type(source).__name__}")


def _load_from_catalog(source, columns: tuple[str, ...], zrange) -> Table:
    from psycopg import sql

    conn, owned = _connect(source)
    try:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'dr1' AND table_name = 'fastspec'"
        ).fetchall()
        if not rows:
            raise LookupError("the catalog has no dr1.fastspec table: run `desilab ingest` first")
        have = {r[0].upper(): r[0] for r in rows}
        missing = [c for c in columns if c not in have]
        if missing:
            raise LookupError(f"dr1.fastspec lacks column {missing[0]} (has {sorted(have)})")
        query = sql.SQL("SELECT {} FROM dr1.fastspec").format(
            sql.SQL(", ").join(sql.Identifier(have[c]) for c in columns)
        )
        params: tuple = ()
        if zrange is not None:
            query += sql.SQL(" WHERE {z} >= %s AND {z} <= %s").format(z=sql.Identifier(have["Z"]))
            params = (float(zrange[0]), float(zrange[1]))
        data = conn.execute(query, params).fetchall()
    finally:
        if owned:
            conn.close()
    cols = list(zip(*data, strict=True)) if data else [[] for _ in columns]
    table = Table()
    for name, values in zip(columns, cols, strict=True):
        arr = np.asarray(values)
        if arr.dtype == object:
            arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        table[name] = arr
    return table


def load_galaxies(
    source,
    *,
    columns: tuple[str, ...] = GALAXY_COLUMNS,
    zrange: tuple[float, float] | None = None,
) -> Table:
    """BGS galaxies with position, redshift quality and physical properties.

    Parameters
    ----------
    source : DR1Layout, path, DSN string, psycopg connection or catalog object
        The DR1 tree (FastSpecFit main-bright VAC) or the PostgreSQL catalog
        (``dr1.fastspec``); catalog objects need a ``dsn`` attribute or ``connect()``.
    columns : tuple of str
        DR1 column names to read.
    zrange : (zmin, zmax), optional
        Keep only this redshift range (filtered in the database on the catalog path).

    Returns
    -------
    astropy.table.Table
        One row per TARGETID, with :func:`derive_properties` columns added.
    """
    if _is_catalog(source):
        table = _load_from_catalog(source, tuple(columns), zrange)
    else:
        layout = source if isinstance(source, DR1Layout) else DR1Layout(source)
        table = read_fastspec(layout, columns=list(columns))
        if zrange is not None:
            z = np.asarray(table["Z"])
            table = table[(z >= zrange[0]) & (z <= zrange[1])]
    # FastSpecFit main-bright has one row per target; guard against stacked files.
    _, first = np.unique(np.asarray(table["TARGETID"]), return_index=True)
    if len(first) != len(table):
        table = table[np.sort(first)]
    return derive_properties(table)


def derive_properties(table: Table) -> Table:
    """Add G_R (^{0.1}(g - r)) and LOG_SSFR (log10 SFR/M*, 1/yr) when their inputs exist."""
    if {"ABSMAG01_SDSS_G", "ABSMAG01_SDSS_R"} <= set(table.colnames):
        table["G_R"] = np.asarray(table["ABSMAG01_SDSS_G"], float) - np.asarray(
            table["ABSMAG01_SDSS_R"], float
        )
        table["G_R"].unit = u.mag
    if {"SFR", "LOGMSTAR"} <= set(table.colnames):
        sfr = np.asarray(table["SFR"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            lssfr = np.where(sfr > 0, np.log10(sfr), np.nan) - np.asarray(table["LOGMSTAR"])
        table["LOG_SSFR"] = lssfr
        table["LOG_SSFR"].description = "log10 of SFR / M* in 1/yr"
    return table


@dataclass
class GalaxySample:
    """Good-redshift galaxies in the distance range of one Galactic cap.

    Attributes
    ----------
    table : Table
        Galaxies with their properties and comoving distance DIST (Mpc/h).
    xyz : (n, 3) ndarray
        Comoving positions, Mpc/h.
    vollim : ndarray of bool
        The volume-limited subset that finds the voids.
    mask : HealpixMask
        Footprint of the cap between the distance limits.
    cuts : SampleCuts
    cap : str
        'NGC', 'SGC' or 'ALL'.
    """

    table: Table
    xyz: np.ndarray
    vollim: np.ndarray
    mask: HealpixMask
    cuts: SampleCuts
    cap: str

    def __len__(self) -> int:
        return len(self.table)

    @property
    def targetid(self) -> np.ndarray:
        """TARGETID of each galaxy."""
        return np.asarray(self.table["TARGETID"], dtype=np.int64)

    def header(self) -> dict:
        """Keywords for a void catalog found from this sample."""
        head = self.cuts.describe()
        head["CAP"] = (self.cap, "Galactic cap")
        head["NSIDE"] = (self.mask.nside, "Footprint HEALPix nside (nested)")
        return head


def build_sample(
    source,
    cuts: SampleCuts | None = None,
    *,
    cap: str = "ALL",
    nside: int = 64,
    galaxies: Table | None = None,
) -> GalaxySample:
    """The galaxies of one cap, the volume-limited subset and the survey mask.

    Parameters
    ----------
    source : DR1Layout, path, DSN, connection or catalog
        Where galaxies come from (see :func:`load_galaxies`); ignored when ``galaxies``
        is given.
    cuts : SampleCuts
        Volume-limited cuts (DESIVAST's by default).
    cap : {'NGC', 'SGC', 'ALL'}
        Galactic cap.
    nside : int
        Footprint resolution: pixels holding at least one good-redshift galaxy of the
        cap (at any redshift) are in the footprint.
    galaxies : Table, optional
        Already loaded galaxies (from :func:`load_galaxies`).
    """
    cuts = cuts or SampleCuts()
    cap = cap.upper()
    if cap not in ("NGC", "SGC", "ALL"):
        raise ValueError(f"cap must be NGC, SGC or ALL, not {cap!r}")
    table = galaxies if galaxies is not None else load_galaxies(source)
    good = good_redshift(table, min_deltachi2=cuts.min_deltachi2)
    ra, dec = np.asarray(table["RA"], float), np.asarray(table["DEC"], float)
    in_cap = np.ones(len(table), dtype=bool) if cap == "ALL" else cap_of(ra, dec) == cap
    rmin, rmax = cuts.distance_limits()
    footprint = good & in_cap
    mask = HealpixMask.from_positions(ra[footprint], dec[footprint], rmin, rmax, nside=nside)
    z = np.asarray(table["Z"], float)
    keep = footprint & (z > cuts.zmin) & (z < cuts.zmax)
    table = table[keep]
    dist = comoving_mpch(np.asarray(table["Z"], float), cuts.cosmology)
    xyz = radec_to_xyz(np.asarray(table["RA"], float), np.asarray(table["DEC"], float), dist)
    table["DIST"] = dist
    table["DIST"].unit = "Mpc/h"
    vollim = np.asarray(table["ABSMAG01_SDSS_R"], float) < cuts.mag_limit
    return GalaxySample(table, xyz, vollim, mask, cuts, cap)

"""SQL of cone searches and cross-matches on any table with an ``hpx`` column.

The SQL is built as text from quoted identifiers (looked up in the database)
and numbers formatted by :func:`desilab.desi.sky.num`; the pixel ranges are
literals, so the planner always sees them (no generic plans, DESIGN pitfalls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from . import sky
from .qtable import CatalogError

__all__ = ["RA_NAMES", "DEC_NAMES", "SkyTable", "cone_sql", "positions", "xmatch_sql"]

RA_NAMES = ("target_ra", "ra", "ra_deg", "raj2000", "mean_fiber_ra")
DEC_NAMES = ("target_dec", "dec", "dec_deg", "dej2000", "decj2000", "mean_fiber_dec")


@dataclass(frozen=True)
class SkyTable:
    """A table usable for sky queries, with its SQL names already quoted."""

    name: str  # schema.table as given
    ident: str  # quoted "schema"."table"
    ra: str  # quoted column names
    dec: str
    columns: dict[str, str]  # column name -> quoted
    default: tuple[str, ...]

    def select(self, wanted: Sequence[str] | None, alias: str = "t") -> str:
        """Quoted ``alias.col`` list; unknown names raise CatalogError."""
        names = list(wanted) if wanted is not None else list(self.default)
        unknown = [c for c in names if c not in self.columns]
        if unknown:
            raise CatalogError(
                f"no column {unknown[0]!r} in {self.name}; it has {', '.join(self.columns)}"
            )
        return ", ".join(f"{alias}.{self.columns[c]}" for c in names)


def find_radec(names: Sequence[str]) -> tuple[str | None, str | None]:
    """RA and Dec column names among ``names`` (case-insensitive), or None."""
    lower = {c.lower(): c for c in names}
    ra = next((lower[n] for n in RA_NAMES if n in lower), None)
    dec = next((lower[n] for n in DEC_NAMES if n in lower), None)
    return ra, dec


def cone_sql(
    t: SkyTable,
    ra: float,
    dec: float,
    radius_deg: float,
    columns: Sequence[str] | None,
    where: str | None,
    limit: int,
) -> tuple[str, int]:
    """SQL of a cone search, nearest first; returns (sql, number of hpx ranges)."""
    ranges = sky.cone_ranges(ra, dec, radius_deg)
    ra_c, dec_c = f"t.{t.ra}", f"t.{t.dec}"
    hav = sky.haversine_sql(sky.num(ra), sky.num(dec), ra_c, dec_c)
    cond = [
        sky.ranges_sql("t.hpx", ranges),
        f"{dec_c} BETWEEN {sky.num(dec - radius_deg - 1e-9)} "
        f"AND {sky.num(dec + radius_deg + 1e-9)}",
        f"{hav} <= {sky.num(sky.haversine_limit(radius_deg))}",
    ]
    if where:
        cond.append(f"({where})")
    text = (
        f"SELECT {t.select(columns)}, {sky.distance_sql(hav)} AS dist FROM {t.ident} AS t "
        f"WHERE {' AND '.join(cond)} ORDER BY dist LIMIT {int(limit) + 1}"
    )
    return text, len(ranges)


def xmatch_sql(t: SkyTable, radius_deg: float, columns: Sequence[str] | None) -> str:
    """SQL of the nearest match of each row of the temporary table ``desilab_xmatch``."""
    hav = sky.haversine_sql("x.ra", "x.dec", f"t.{t.ra}", f"t.{t.dec}")
    return (
        f"SELECT DISTINCT ON (x.idx) x.idx AS input_index, {t.select(columns)}, "
        f"{sky.distance_sql(hav)} AS dist FROM desilab_xmatch AS x JOIN {t.ident} AS t "
        f"ON t.hpx >= x.lo AND t.hpx < x.hi WHERE {hav} <= "
        f"{sky.num(sky.haversine_limit(radius_deg))} ORDER BY x.idx, {hav}"
    )


XMATCH_TABLE = (
    "CREATE TEMP TABLE desilab_xmatch (idx integer, ra double precision, "
    "dec double precision, lo bigint, hi bigint) ON COMMIT DROP"
)


def positions(data, ra: str | None, dec: str | None) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec (degrees, float64) of a Table, a SkyCoord or a pair of arrays."""
    if isinstance(data, SkyCoord):
        icrs = data.icrs
        return icrs.ra.deg.astype(float), icrs.dec.deg.astype(float)
    if isinstance(data, Table):
        found = find_radec(data.colnames)
        ra, dec = ra or found[0], dec or found[1]
        if ra is None or dec is None:
            raise CatalogError(
                f"cannot find RA/Dec columns among {data.colnames}; pass ra= and dec="
            )
        cols = (data[ra], data[dec])
    else:
        cols = data
    out = []
    for c in cols:
        q = c.quantity if getattr(c, "unit", None) is not None and hasattr(c, "quantity") else c
        out.append(np.asarray(q.to_value(u.deg) if isinstance(q, u.Quantity) else q, float))
    if len(out) != 2 or out[0].shape != out[1].shape:
        raise CatalogError("ra and dec must be two arrays of the same length")
    return out[0].ravel(), out[1].ravel()

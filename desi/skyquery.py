"""SQL of cone searches and cross-matches on any table with an ``hpx`` column.

The SQL is built as text from quoted identifiers (looked up in the database)
and numbers formatted by :func:`desilab.desi.sky.num`; the pixel ranges are
literals, so the planner always sees them (no generic plans, DESIGN pitfalls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
    types: dict[str, int] = field(default_factory=dict)  # column name -> type OID
    units: dict[str, str | None] = field(default_factory=dict)  # from the column comments

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


#: Scalar column types a cone can return as arrays (one row of ``array_agg``), by OID:
#: bool, int2/4/8, oid, float4/8, numeric, "char", name, text, bpchar, varchar.
PACKABLE = {16, 20, 21, 23, 26, 700, 701, 1700, 18, 19, 25, 1042, 1043}


def cone_sql(
    t: SkyTable,
    ra: float,
    dec: float,
    radius_deg: float,
    columns: Sequence[str] | None,
    where: str | None,
    limit: int,
    ordered: bool = False,
) -> tuple[str, int, bool]:
    """SQL of a cone search, nearest first.

    Returns (sql, number of hpx ranges, packed). When every wanted column is a
    scalar (:data:`PACKABLE`) the result is one row of arrays, one per column,
    and last the haversine ``h`` of each match (``packed``): the client decodes
    them column by column instead of value by value, computes ``dist`` from
    ``h`` and sorts. That SQL sorts only with ``ordered``: when no more than
    ``limit`` rows match, which ones are kept does not depend on their order
    (the client asks again with ``ordered`` when more do). Otherwise the SQL
    returns one row per match, nearest first.
    """
    ranges = sky.cone_ranges(ra, dec, radius_deg)
    names = list(columns) if columns is not None else list(t.default)
    select = t.select(names)  # validates the names
    ra_c, dec_c = f"t.{t.ra}", f"t.{t.dec}"
    hav = sky.haversine_sql(sky.num(ra), sky.num(dec), ra_c, dec_c)
    cond = [
        sky.ranges_sql("t.hpx", ranges),
        f"{dec_c} BETWEEN {sky.num(dec - radius_deg - 1e-9)} "
        f"AND {sky.num(dec + radius_deg + 1e-9)}",
    ]
    window = sky.ra_window_sql(ra_c, ra, dec, radius_deg)
    if window:
        cond.append(window)
    if where:
        cond.append(f"({where})")
    within = f"{sky.num(sky.haversine_limit(radius_deg))}"
    packed = bool(names) and all(t.types.get(c) in PACKABLE for c in names)
    if not packed:
        cond.append(f"{hav} <= {within}")
        text = (
            f"SELECT {select}, {sky.distance_sql(hav)} AS dist FROM {t.ident} AS t "
            f"WHERE {' AND '.join(cond)} ORDER BY dist LIMIT {int(limit) + 1}"
        )
        return text, len(ranges), False
    # The haversine once per candidate row: computed in a subquery that OFFSET 0 keeps
    # from being merged into the outer one (else the server evaluates it in the WHERE
    # and again for the distance of every match). Columns travel as c0, c1... so no
    # name of the table can clash with ours.
    inner = ", ".join(f"t.{t.columns[c]} AS c{i}" for i, c in enumerate(names))
    aggs = ", ".join(f"array_agg(c{i}) AS {t.columns[c]}" for i, c in enumerate(names))
    text = (
        f"SELECT {aggs}, array_agg(h) AS dist FROM (SELECT * FROM "
        f"(SELECT {inner}, {hav} AS h FROM {t.ident} AS t WHERE {' AND '.join(cond)} "
        f"OFFSET 0) AS m WHERE h <= {within}{' ORDER BY h' if ordered else ''} "
        f"LIMIT {int(limit) + 1}) AS s"
    )
    return text, len(ranges), True


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

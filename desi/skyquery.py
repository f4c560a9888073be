"""SQL of cone searches and cross-matches on any table with an ``hpx`` column.

The SQL is built as text from quoted identifiers (looked up in the database)
and numbers formatted by :func:`desilab.desi.sky.num`; the pixel ranges are
literals, so the planner always sees them (no generic plans, DESIGN pitfalls).
A cone's exact distance test runs in the client (:class:`ConePlan`) unless it
has too many candidates or non-scalar columns (:func:`cone_sql`, in SQL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Column, Table

from . import sky
from .qtable import CatalogError, QueryTable, table_of_arrays
from .qtable import _unit as unit_of

__all__ = [
    "RA_NAMES",
    "DEC_NAMES",
    "ConePlan",
    "SkyTable",
    "cone_sql",
    "positions",
    "xmatch_sql",
]

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


#: Column types whose arrays decode straight into NumPy floats (float4, float8): RA/Dec
#: of a cone whose exact distance test runs in the client.
FLOATS = {700, 701}


def _take(values, index: np.ndarray):
    return values[index] if isinstance(values, np.ndarray) else [values[i] for i in index]


def _floats(values) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(float, copy=False)
    return np.array([np.nan if v is None else v for v in values], dtype=float)


#: Array type OID -> NumPy dtype of the numeric columns :func:`cone_table` builds itself.
_DTYPES = {
    1000: np.dtype(bool), 1005: np.dtype(np.int16), 1007: np.dtype(np.int32),
    1016: np.dtype(np.int64), 1021: np.dtype(np.float32), 1022: np.dtype(np.float64),
}  # fmt: skip
_DIST_TYPE = 1022  # float8[]


def cone_table(
    plan: ConePlan, types: Sequence[int], arrays: Sequence, units: dict[str, str | None]
) -> QueryTable:
    """The QueryTable of a cone: the wanted columns (array type OIDs ``types``) and ``dist``.

    Numeric columns without NULLs become Columns directly (astropy's generic Table
    construction costs ~0.3 ms for five one-row columns: most of a small cone's
    client time); anything else goes through :func:`table_of_arrays`.
    """
    names = [*plan.names, "dist"]
    types = [*types, _DIST_TYPE]
    fast = len(set(names)) == len(names) and all(
        t in _DTYPES and (isinstance(a, np.ndarray) or not len(a))
        for t, a in zip(types, arrays, strict=True)
    )
    unit_names = [units.get(n) for n in plan.names] + ["arcsec"]
    if not fast or _make_table is None:
        desc = [_Desc(n, t) for n, t in zip(names, types, strict=True)]
        out = table_of_arrays(desc, arrays, unit_names)
        out["dist"].unit = u.arcsec
        return out
    cols = []
    for name, t, values, unit in zip(names, types, arrays, unit_names, strict=True):
        col = np.asarray(values, dtype=_DTYPES[t]).view(Column)
        col.info.name = name
        if unit:
            col.unit = unit_of(unit)
        cols.append(col)
    out = QueryTable(masked=False)
    _make_table(out, cols, verify=False, names=names)
    return out


class _Desc(NamedTuple):
    """The two fields of a result column that :func:`table_of_arrays` reads."""

    name: str
    type_code: int


#: astropy's own way of making a Table of ready Columns (as ``Table._new_from_slice``
#: does), without re-validating and converting each column.
_make_table = getattr(Table, "_make_table_from_cols", None)


#: Radius (deg) from which a client-tested cone also sends its Dec band and RA window.
_BOX_MIN_RADIUS = 0.25
#: Most hpx ranges a cone sends as separate scans (UNION ALL); more are ORed in one.
_MAX_ARMS = 24
_COARSER = 1


@dataclass(frozen=True)
class ConePlan:
    """A cone search whose exact distance test runs in the client, for one table and
    column list (built once, reused for every centre and radius).

    The exact test (a haversine per row) is what made large cones server-bound in
    SQL: ~1.5 us per candidate row through PostgreSQL's function calls, against
    ~10 ns in NumPy. So the server only walks the literal ``hpx`` ranges (plus,
    for large cones, the Dec band and RA window: plain comparisons) and returns
    the candidates as one row of arrays: the wanted columns, then RA and Dec
    when they are not among them. The client computes the haversine, keeps the
    rows within the radius and sorts them (``Catalog.cone``).
    """

    names: tuple[str, ...]  # wanted columns
    ra_index: int  # which arrays hold RA and Dec
    dec_index: int
    head: str  # SELECT array_agg(c0) ... FROM (
    arm: str  # SELECT t.x AS c0, ... FROM table AS t WHERE
    ra: str  # quoted t.ra, t.dec
    dec: str

    @classmethod
    def of(cls, t: SkyTable, columns: Sequence[str] | None) -> ConePlan | None:
        """The plan of a cone on ``t`` returning ``columns`` (default: the table's main
        ones); None when a column or RA/Dec cannot travel as a NumPy array (then
        :func:`cone_sql` does the test in SQL). Unknown names raise CatalogError."""
        names = list(columns) if columns is not None else list(t.default)
        t.select(names)  # validates the names
        if not names or not all(t.types.get(c) in PACKABLE for c in names):
            return None
        by_quoted = {q: c for c, q in t.columns.items()}
        ra_name, dec_name = by_quoted[t.ra], by_quoted[t.dec]
        if t.types.get(ra_name) not in FLOATS or t.types.get(dec_name) not in FLOATS:
            return None
        sent = [t.columns[c] for c in names]
        ra_i = names.index(ra_name) if ra_name in names else len(sent)
        if ra_name not in names:
            sent.append(t.ra)
        dec_i = names.index(dec_name) if dec_name in names else len(sent)
        if dec_name not in names:
            sent.append(t.dec)
        # Columns travel as c0, c1... so no name of the table can clash with ours.
        inner = ", ".join(f"t.{q} AS c{i}" for i, q in enumerate(sent))
        aggs = ", ".join(
            f"array_agg(c{i}) AS {sent[i] if i < len(names) else f'c{i}'}" for i in range(len(sent))
        )
        arm = f"SELECT {inner} FROM {t.ident} AS t WHERE "
        return cls(
            tuple(names), ra_i, dec_i, f"SELECT {aggs} FROM (", arm, f"t.{t.ra}", f"t.{t.dec}"
        )

    def sql(
        self,
        ra: float,
        dec: float,
        radius_deg: float,
        where: str | None,
        cap: int,
        union: bool = True,
    ) -> tuple[str, int]:
        """SQL of the candidates (at most ``cap + 1``) and the number of hpx ranges;
        ``union=False`` ORs the ranges in one scan even when they are few."""
        big = radius_deg >= _BOX_MIN_RADIUS
        ranges = sky.cone_ranges(ra, dec, radius_deg, coarser=_COARSER if big else 0)
        cond = []
        if big:
            # A large cover has many rows outside the cone's Dec band and RA window (its
            # corners): comparisons drop them before they are aggregated and sent (2 deg
            # on 10M rows: 3700 candidates instead of 5100). For small cones the extra
            # planning costs more than the few rows it would save.
            cond.append(
                f"{self.dec} BETWEEN {sky.num(dec - radius_deg - 1e-9)} "
                f"AND {sky.num(dec + radius_deg + 1e-9)}"
            )
            window = sky.ra_window_sql(self.ra, ra, dec, radius_deg)
            if window:
                cond.append(window)
        if where or not union or not 0 < len(ranges) <= _MAX_ARMS:
            # One scan; ORed ranges make a BitmapOr, which reads the table's pages.
            cond.insert(0, sky.ranges_sql("t.hpx", ranges))
            if where:
                cond.append(f"({where})")
            body = self.arm + " AND ".join(cond)
        else:
            # One arm per range: each can be an index-only scan (zpix's hpx index holds
            # the usual columns), which a BitmapOr of the ranges cannot be.
            rest = "".join(f" AND {c}" for c in cond)
            body = " UNION ALL ".join(
                f"{self.arm}t.hpx >= {lo} AND t.hpx < {hi}{rest}" for lo, hi in ranges.tolist()
            )
        return f"{self.head}{body} LIMIT {int(cap) + 1}) AS s", len(ranges)

    def within(
        self, row: Sequence | None, ra: float, dec: float, radius_deg: float, cap: int
    ) -> tuple[list, int] | None:
        """The wanted arrays of a candidates row, only the rows within the radius,
        nearest first, with ``dist`` (arcsec) last; and how many matched. None when
        there are more than ``cap`` candidates (the caller then tests in SQL).

        The haversine is the one :func:`desilab.desi.sky.haversine_sql` computes; a
        NULL position matches nothing, as there.
        """
        if row is None or row[0] is None:  # no candidates: array_agg gives NULLs
            return [[] for _ in self.names] + [np.zeros(0)], 0
        if len(row[0]) > cap:
            return None
        ra_c, dec_c = _floats(row[self.ra_index]), _floats(row[self.dec_index])
        d0 = math.radians(dec)
        d1 = np.radians(dec_c)
        with np.errstate(invalid="ignore"):
            h = (
                np.sin((d1 - d0) / 2) ** 2
                + math.cos(d0) * np.cos(d1) * np.sin((np.radians(ra_c) - math.radians(ra)) / 2) ** 2
            )
            keep = np.flatnonzero(h <= sky.haversine_limit(radius_deg))
        h = h[keep]
        if len(h) > 1:
            order = np.argsort(h, kind="stable")
            keep, h = keep[order], h[order]
        arrays = [_take(row[i], keep) for i in range(len(self.names))]
        arrays.append(sky.haversine_arcsec(h))
        return arrays, len(h)


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

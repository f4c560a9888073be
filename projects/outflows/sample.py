"""Choosing the QSOs to fit: from the zpix files or by SQL against the catalog.

A sample is a table of TARGETID, Z, SURVEY, PROGRAM, HEALPIX and EBV, chosen
either from the zpix catalogs on disk (:func:`select_from_files`, no database
needed) or by an SQL query through :class:`desilab.desi.Catalog`
(:func:`select_from_catalog`). :func:`make_units` groups it by coadd file, the
unit of batch work. Result rows convert to tables and files with
:func:`rows_to_table` and :func:`write_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack
from desilab.desi import DR1Layout, good_redshift, iter_zpix, zcat_primary

from .bal import BAL_ZRANGE

__all__ = [
    "OIII_ZMAX",
    "SAMPLE_COLUMNS",
    "Unit",
    "catalog_layout",
    "make_units",
    "rows_to_table",
    "select_from_catalog",
    "select_from_files",
    "write_table",
]

OIII_ZMAX = 0.95
SAMPLE_COLUMNS = ("TARGETID", "Z", "SURVEY", "PROGRAM", "HEALPIX", "EBV")


@dataclass(frozen=True)
class Unit:
    """The QSOs of one coadd file."""

    coadd: str
    survey: str
    program: str
    healpix: int
    targetid: tuple[int, ...]
    z: tuple[float, ...]
    ebv: tuple[float, ...]


def _default_ranges(bal: bool, oiii: bool) -> list[tuple[float, float]]:
    out = []
    if bal:
        out.append(BAL_ZRANGE)
    if oiii:
        out.append((0.0, OIII_ZMAX))
    return out


def select_from_files(
    layout: DR1Layout,
    *,
    config=None,
    zranges: Sequence[tuple[float, float]] | None = None,
    targetids: Iterable[int] | None = None,
    where: Callable[[Table], np.ndarray] | None = None,
    limit: int | None = None,
) -> Table:
    """QSOs from the zpix catalogs under DATA_ROOT (no database needed).

    Keeps ZCAT_PRIMARY rows with SPECTYPE QSO and a good redshift (ZWARN == 0,
    DELTACHI2 > 25) in the redshift ranges the fits need.

    Parameters
    ----------
    layout : DR1Layout
    config : FitConfig, optional
        Its ``bal`` and ``oiii`` switches decide the default redshift ranges.
    zranges : sequence of (zmin, zmax), optional
        Override the redshift ranges.
    targetids : iterable of int, optional
        Keep only these.
    where : callable, optional
        Extra cut: a function of a zpix chunk returning a boolean mask.
    limit : int, optional
        At most this many QSOs (the first ones, by TARGETID).

    Returns
    -------
    astropy.table.Table
        Columns TARGETID, Z, SURVEY, PROGRAM, HEALPIX, EBV.
    """
    if zranges is not None:
        ranges = list(zranges)
    else:
        ranges = _default_ranges(getattr(config, "bal", True), getattr(config, "oiii", True))
    wanted = None if targetids is None else np.asarray(list(targetids), dtype=np.int64)
    cols = [*SAMPLE_COLUMNS, "SPECTYPE", "ZWARN", "DELTACHI2", "ZCAT_PRIMARY"]
    parts = []
    for path in layout.zpix_files():
        for chunk in iter_zpix(path, columns=cols):
            keep = zcat_primary(chunk) & good_redshift(chunk)
            keep &= np.char.strip(np.asarray(chunk["SPECTYPE"]).astype(str)) == "QSO"
            z = np.asarray(chunk["Z"])
            keep &= np.any([(z >= lo) & (z <= hi) for lo, hi in ranges], axis=0)
            if wanted is not None:
                keep &= np.isin(np.asarray(chunk["TARGETID"]), wanted)
            if where is not None:
                keep &= np.asarray(where(chunk), dtype=bool)
            if keep.any():
                parts.append(chunk[keep][list(SAMPLE_COLUMNS)])
    if not parts:
        return Table(names=SAMPLE_COLUMNS, dtype=("i8", "f8", "U7", "U7", "i4", "f4"))
    out = vstack(parts, metadata_conflicts="silent")
    for c in ("SURVEY", "PROGRAM"):
        out[c] = np.char.strip(np.asarray(out[c]).astype(str))
    out.sort("TARGETID")
    return out[:limit] if limit else out


def select_from_catalog(
    catalog, sql: str, params: Sequence | dict | None = None, *, limit: int | None = None
) -> Table:
    """QSOs chosen by an SQL query against the catalog.

    The query must return a ``targetid`` column. It runs as given (never parsed or
    rewritten) through :meth:`desilab.desi.Catalog.query`, i.e. read-only, with
    the catalog's time limit and its error messages; its TARGETIDs are then
    joined with ``dr1.zpix`` (one primary row per TARGETID) and ``dr1.spectra``,
    so only QSOs whose spectrum the catalog knows are kept.

    Parameters
    ----------
    catalog : desilab.desi.Catalog or str
        A catalog, or a DSN to open one with (the user's DESILAB_DATABASE_URL).
    sql : str
        E.g. ``SELECT targetid FROM dr1.zpix WHERE spectype = 'QSO' AND z > 1.57``.
    params : sequence or dict, optional
        Query parameters (``%s`` placeholders in ``sql``).
    limit : int, optional
        At most this many QSOs (the first ones, by TARGETID).

    Returns
    -------
    astropy.table.Table
        Columns TARGETID, Z, SURVEY, PROGRAM, HEALPIX, EBV.
    """
    from desilab.desi import Catalog

    cat = Catalog(catalog) if isinstance(catalog, str) else catalog
    picked = cat.query(sql, params, limit=50_000_000)
    names = [n.lower() for n in picked.colnames]
    if "targetid" not in names:
        raise ValueError(f"the sample query must return a targetid column; it returned {names}")
    tids = sorted({int(t) for t in np.asarray(picked[picked.colnames[names.index("targetid")]])})
    rows = cat.query(
        "SELECT z.targetid, z.z, z.survey, z.program, z.healpix, z.ebv FROM dr1.zpix z "
        "JOIN dr1.spectra s ON s.targetid = z.targetid AND s.survey = z.survey "
        "AND s.program = z.program WHERE z.targetid = ANY(%s) ORDER BY z.targetid",
        (tids,),
        limit=len(tids) + 1,
    )
    out = Table(
        [np.asarray(rows[c.lower()]) for c in SAMPLE_COLUMNS],
        names=SAMPLE_COLUMNS,
    )
    for c in ("SURVEY", "PROGRAM"):
        out[c] = np.char.strip(np.asarray(out[c]).astype(str))
    return out[:limit] if limit else out


def catalog_layout(dsn: str) -> DR1Layout:
    """The DR1 tree the catalog's files were ingested from (``dr1.ingest_files``).

    Reviews and refits re-read spectra from there, so a notebook needs only its
    database connection (DESILAB_DATABASE_URL) to find them.

    Raises
    ------
    LookupError
        When nothing has been ingested.
    """
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT data_root FROM dr1.ingest_files GROUP BY data_root "
            "ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise LookupError("the catalog has no ingested files: run `desilab ingest DATA_ROOT`")
    return DR1Layout(row[0])


def make_units(sample: Table, layout: DR1Layout) -> list[Unit]:
    """One unit per coadd file, in a stable order (survey, program, pixel)."""
    if len(sample) == 0:
        return []
    groups = sample.group_by(["SURVEY", "PROGRAM", "HEALPIX"])
    units = []
    for key, grp in zip(groups.groups.keys, groups.groups, strict=True):
        survey, program, pix = (
            str(key["SURVEY"]).strip(),
            str(key["PROGRAM"]).strip(),
            int(key["HEALPIX"]),
        )
        units.append(
            Unit(
                str(layout.coadd(survey, program, pix)),
                survey,
                program,
                pix,
                tuple(int(t) for t in grp["TARGETID"]),
                tuple(float(v) for v in grp["Z"]),
                tuple(float(v) for v in grp["EBV"]),
            )  # fmt: skip
        )
    return units


def rows_to_table(rows: list[dict]) -> Table:
    """Result rows as an astropy Table (array columns become 2-D)."""
    if not rows:
        return Table()
    names = list(rows[0])
    cols = {}
    for n in names:
        vals = [r.get(n) for r in rows]
        if any(isinstance(v, list) for v in vals):
            width = max(len(v) for v in vals if isinstance(v, list))
            arr = np.full((len(vals), width), np.nan)
            for k, v in enumerate(vals):
                if isinstance(v, list):
                    arr[k, : len(v)] = [np.nan if x is None else x for x in v]
            cols[n] = arr
        elif all(isinstance(v, str) or v is None for v in vals) and any(
            isinstance(v, str) for v in vals
        ):
            cols[n] = np.array(["" if v is None else v for v in vals])
        else:
            cols[n] = np.array([np.nan if v is None else v for v in vals])
    return Table(cols)


def write_table(rows: list[dict], path: str | Path) -> Path:
    """Write result rows to a FITS or ECSV file (by extension)."""
    path = Path(path)
    rows_to_table(rows).write(path, overwrite=True)
    return path

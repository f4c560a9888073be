"""Which spectra to use: good-redshift, primary QSOs, from the catalog or from zpix files.

Both paths apply the same cuts: ``SPECTYPE == 'QSO'``, ``ZWARN == 0``,
``DELTACHI2 > 25`` (DR1's default good redshift), ``ZCAT_PRIMARY`` (one spectrum
per TARGETID), and an optional redshift range. The result says where each
spectrum's coadd lives (SURVEY, PROGRAM, HEALPIX), sorted by file so the
preparation reads every coadd once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack
from desilab.desi import DR1Layout, good_redshift, iter_zpix, zcat_primary

__all__ = [
    "SELECTION_COLUMNS",
    "catalog_data_root",
    "select_qsos",
    "select_qsos_from_catalog",
    "select_qsos_from_files",
]

#: Columns of a selection, in order.
SELECTION_COLUMNS = ("TARGETID", "Z", "SURVEY", "PROGRAM", "HEALPIX")
MIN_DELTACHI2 = 25.0

# Fixed SQL: only numbers are bound as parameters, nothing from users is spliced in.
_CATALOG_SQL = """
SELECT targetid, z, survey, program, healpix
FROM dr1.zpix
WHERE spectype = 'QSO' AND zwarn = 0 AND deltachi2 > %(min_deltachi2)s AND zcat_primary
  AND z >= %(zmin)s AND z < %(zmax)s
ORDER BY survey, program, healpix, targetid
"""


def _finish(table: Table, limit: int | None) -> Table:
    for name in ("SURVEY", "PROGRAM"):
        table[name] = np.char.strip(np.asarray(table[name]).astype(str))
    table["TARGETID"] = np.asarray(table["TARGETID"], dtype=np.int64)
    table["Z"] = np.asarray(table["Z"], dtype=np.float64)
    table["HEALPIX"] = np.asarray(table["HEALPIX"], dtype=np.int64)
    table.sort(["SURVEY", "PROGRAM", "HEALPIX", "TARGETID"])
    if limit is not None:
        table = table[:limit]
    return table


def _empty() -> Table:
    return Table(
        [
            np.zeros(0, np.int64),
            np.zeros(0),
            np.zeros(0, "U7"),
            np.zeros(0, "U6"),
            np.zeros(0, int),
        ],
        names=SELECTION_COLUMNS,
    )


def select_qsos_from_files(
    layout: DR1Layout | str | Path,
    *,
    zmin: float = 0.0,
    zmax: float = 10.0,
    min_deltachi2: float = MIN_DELTACHI2,
    limit: int | None = None,
    chunk_rows: int = 200_000,
) -> Table:
    """Select QSO spectra from the ``zpix-*.fits`` files of a DR1 tree.

    Parameters
    ----------
    layout : DR1Layout or path
        The DR1 tree (DATA_ROOT).
    zmin, zmax : float
        Keep ``zmin <= Z < zmax``.
    min_deltachi2 : float
        Good-redshift threshold (strictly greater).
    limit : int, optional
        Keep the first ``limit`` rows (in file order), for quick runs.
    chunk_rows : int
        Rows read at a time from each zpix file (bounded memory).

    Returns
    -------
    astropy.table.Table
        Columns :data:`SELECTION_COLUMNS`, sorted by SURVEY, PROGRAM, HEALPIX, TARGETID.
    """
    layout = layout if isinstance(layout, DR1Layout) else DR1Layout(layout)
    files = layout.zpix_files()
    if not files:
        raise FileNotFoundError(
            f"no zpix-*.fits under {layout.redux / 'zcatalog'}; is DATA_ROOT right?"
        )
    parts = []
    columns = ["TARGETID", "Z", "ZWARN", "DELTACHI2", "SPECTYPE", "ZCAT_PRIMARY", "SURVEY",
               "PROGRAM", "HEALPIX"]  # fmt: skip
    for path in files:
        for chunk in iter_zpix(path, chunk_rows=chunk_rows, columns=columns):
            spectype = np.char.strip(np.asarray(chunk["SPECTYPE"]).astype(str))
            z = np.asarray(chunk["Z"])
            keep = good_redshift(chunk, min_deltachi2=min_deltachi2) & zcat_primary(chunk)
            keep &= (spectype == "QSO") & (z >= zmin) & (z < zmax)
            if keep.any():
                sub = chunk[keep][list(SELECTION_COLUMNS)]
                sub.meta = {}
                parts.append(sub)
    if not parts:
        return _empty()
    return _finish(vstack(parts, metadata_conflicts="silent"), limit)


def select_qsos_from_catalog(
    catalog: Any,
    *,
    zmin: float = 0.0,
    zmax: float = 10.0,
    min_deltachi2: float = MIN_DELTACHI2,
    limit: int | None = None,
) -> Table:
    """Select QSO spectra from the PostgreSQL catalog (table ``dr1.zpix``).

    Parameters
    ----------
    catalog : str or object
        A libpq DSN, or an object with a ``dsn`` attribute (a ``desilab.desi``
        catalog handle).
    zmin, zmax, min_deltachi2, limit
        As in :func:`select_qsos_from_files`.
    """
    import psycopg

    dsn = catalog if isinstance(catalog, str) else catalog.dsn
    params = {"min_deltachi2": min_deltachi2, "zmin": zmin, "zmax": zmax}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_CATALOG_SQL, params).fetchall()
    if not rows:
        return _empty()
    cols = list(zip(*rows, strict=True))
    return _finish(Table([np.asarray(c) for c in cols], names=SELECTION_COLUMNS), limit)


def select_qsos(
    source: Any,
    *,
    zmin: float = 0.0,
    zmax: float = 10.0,
    min_deltachi2: float = MIN_DELTACHI2,
    limit: int | None = None,
) -> Table:
    """Select QSO spectra from a catalog (DSN or handle) or, given a DR1 tree, its files.

    Parameters
    ----------
    source : DR1Layout, path, DSN string or catalog handle
        A :class:`~desilab.desi.DR1Layout` or an existing folder means the zpix
        files; a string that is not a folder is taken as a PostgreSQL DSN.
    zmin, zmax, min_deltachi2, limit
        As in :func:`select_qsos_from_files`.
    """
    kw = {"zmin": zmin, "zmax": zmax, "min_deltachi2": min_deltachi2, "limit": limit}
    if isinstance(source, DR1Layout | Path) or (isinstance(source, str) and Path(source).is_dir()):
        return select_qsos_from_files(source, **kw)
    return select_qsos_from_catalog(source, **kw)


def catalog_data_root(catalog: Any = None) -> Path:
    """DATA_ROOT of the coadds the catalog knows: ``$DESILAB_DATA_ROOT``, else ``dr1.ingest_files``.

    Parameters
    ----------
    catalog : str or object, optional
        A DSN or a catalog handle (``.dsn``); default ``$DESILAB_DATABASE_URL``.

    Raises
    ------
    LookupError
        No coadd was ingested, or they come from several DATA_ROOTs (pass one).
    """
    import os

    import psycopg

    if os.environ.get("DESILAB_DATA_ROOT"):
        return Path(os.environ["DESILAB_DATA_ROOT"])
    dsn = (
        catalog.dsn
        if hasattr(catalog, "dsn")
        else catalog or os.environ.get("DESILAB_DATABASE_URL")
    )
    if not dsn:
        raise LookupError("no catalog: pass a DSN or set DESILAB_DATABASE_URL or DESILAB_DATA_ROOT")
    with psycopg.connect(dsn) as conn:
        roots = [r[0] for r in conn.execute(
            "SELECT DISTINCT data_root FROM dr1.ingest_files WHERE kind = 'coadd' ORDER BY 1"
        )]  # fmt: skip
    if len(roots) != 1:
        raise LookupError(
            f"the catalog has coadds from {len(roots)} DATA_ROOTs {roots[:3]}: set "
            "DESILAB_DATA_ROOT to the one to use"
        )
    return Path(roots[0])

"""Redshift catalogs ``zcatalog/v1/zpix-{survey}-{program}.fits`` and their selections.

The ZCATALOG HDU joins REDSHIFTS with FIBERMAP and targeting columns
(desidatamodel zcatalog v1). :class:`ZpixWriter` writes it in bounded memory;
:func:`iter_zpix` reads it in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .datamodel import NSIDE, SPECPROD, ZCATALOG_REQUIRED, ZCATVER, dtype_of, units_of
from .datamodel import zcatalog_columns as _zcatalog_columns
from .fitsutil import open_fits, read_table, require_columns, table_nrows
from .fitswrite import FitsTableWriter
from .redrock import redrock_header

__all__ = [
    "ZpixWriter",
    "find_primary",
    "good_redshift",
    "iter_zpix",
    "read_zpix",
    "zcat_primary",
]

#: Default good-redshift cut of DR1 analyses.
MIN_DELTACHI2 = 25.0


def good_redshift(
    table: Table | np.ndarray | None = None,
    *,
    zwarn: np.ndarray | None = None,
    deltachi2: np.ndarray | None = None,
    min_deltachi2: float = MIN_DELTACHI2,
) -> np.ndarray:
    """Default good-redshift mask: ``ZWARN == 0 & DELTACHI2 > 25``.

    Parameters
    ----------
    table : Table or structured array, optional
        Anything with ZWARN and DELTACHI2 columns.
    zwarn, deltachi2 : ndarray, optional
        The columns themselves, instead of ``table``.
    min_deltachi2 : float
        Threshold on DELTACHI2 (strictly greater).

    Returns
    -------
    ndarray of bool
    """
    if table is not None:
        zwarn, deltachi2 = table["ZWARN"], table["DELTACHI2"]
    if zwarn is None or deltachi2 is None:
        raise TypeError("give a table or both zwarn and deltachi2")
    return (np.asarray(zwarn) == 0) & (np.asarray(deltachi2) > min_deltachi2)


def zcat_primary(table: Table | np.ndarray) -> np.ndarray:
    """Rows flagged ZCAT_PRIMARY: one row per TARGETID (its best spectrum)."""
    return np.asarray(table["ZCAT_PRIMARY"]).astype(bool)


def find_primary(
    targetid: np.ndarray, zwarn: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Compute ZCAT_NSPEC and ZCAT_PRIMARY for a set of rows, as desispec does.

    For each TARGETID the primary row is the one with ZWARN == 0 and the
    highest ``score`` (desispec uses TSNR2_LRG); if no row has ZWARN == 0,
    the highest ``score`` wins.

    Parameters
    ----------
    targetid, zwarn, score : ndarray
        One entry per row.

    Returns
    -------
    nspec : ndarray of int16
        Number of rows with the same TARGETID.
    primary : ndarray of bool
        True for exactly one row per TARGETID.
    """
    targetid = np.asarray(targetid, dtype=np.int64)
    n = len(targetid)
    if n == 0:
        return np.zeros(0, dtype=np.int16), np.zeros(0, dtype=bool)
    bad = (np.asarray(zwarn) != 0).astype(np.int8)
    # lexsort: last key is primary -> TARGETID, then good first, then high score first.
    order = np.lexsort((-np.asarray(score, dtype=np.float64), bad, targetid))
    sorted_tid = targetid[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_tid[1:] != sorted_tid[:-1]
    primary = np.zeros(n, dtype=bool)
    primary[order[first]] = True
    _, inverse, counts = np.unique(targetid, return_inverse=True, return_counts=True)
    return counts[inverse].astype(np.int16), primary


def zpix_header(survey: str, program: str) -> fits.Header:
    """ZCATALOG header keywords of a zpix file."""
    hdr = redrock_header()
    hdr["SPGRP"] = ("healpix", "Spectral grouping method")
    hdr["HPXNSIDE"] = (NSIDE, "Healpix nside")
    hdr["HPXNEST"] = (True, "Nested healpix (not ring)")
    hdr["SURVEY"] = (survey, "DESI sub-survey (e.g. sv1, sv3, main)")
    hdr["PROGRAM"] = (program, "DESI program (e.g. dark, bright)")
    hdr["ZCATVER"] = (ZCATVER, "Version of zcatalog files")
    return hdr


class ZpixWriter:
    """Write ``zpix-{survey}-{program}.fits`` chunk by chunk, in bounded memory.

    Parameters
    ----------
    path : str or Path
        Output path.
    survey, program : str
        Written to the headers; sv3 files also get the SV3_* target columns.
    """

    def __init__(self, path: str | Path, survey: str, program: str) -> None:
        self.columns = _zcatalog_columns(survey)
        self.dtype = dtype_of(self.columns)
        primary = fits.Header()
        primary["ZCATVER"] = (ZCATVER, "Version of zcatalog files")
        primary["SPECPROD"] = SPECPROD
        self._writer = FitsTableWriter(path, primary)
        self._writer.add_table(
            "ZCATALOG", self.dtype, units_of(self.columns), zpix_header(survey, program)
        )

    def append(self, rows: np.ndarray) -> None:
        """Append ZCATALOG rows (structured array with dtype :attr:`dtype`)."""
        self._writer.append("ZCATALOG", rows)

    @property
    def nrows(self) -> int:
        """Rows written so far."""
        return self._writer.nrows("ZCATALOG")

    def close(self) -> Path:
        """Publish the file."""
        return self._writer.close()

    def abort(self) -> None:
        """Discard the partial file."""
        self._writer.abort()


def read_zpix(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    rows: np.ndarray | slice | None = None,
) -> Table:
    """Read the ZCATALOG HDU of a zpix file (optionally some columns / rows).

    Raises
    ------
    DR1FormatError
        Missing, corrupt or truncated file; missing ZCATALOG HDU or a DR1 column.
    """
    with open_fits(path, ["ZCATALOG"], what="zpix redshift catalog") as hdul:
        require_columns(path, hdul["ZCATALOG"], ZCATALOG_REQUIRED)
        return read_table(
            path, "ZCATALOG", columns=columns, rows=rows, hdul=hdul, what="zpix redshift catalog"
        )


def iter_zpix(
    path: str | Path, *, chunk_rows: int = 200_000, columns: Sequence[str] | None = None
) -> Iterator[Table]:
    """Yield the ZCATALOG HDU in chunks of ``chunk_rows`` rows (bounded memory)."""
    with open_fits(path, ["ZCATALOG"], what="zpix redshift catalog") as hdul:
        hdu = hdul["ZCATALOG"]
        require_columns(path, hdu, ZCATALOG_REQUIRED)
        n = table_nrows(hdu)
        for start in range(0, n, chunk_rows):
            yield read_table(
                path,
                "ZCATALOG",
                columns=columns,
                rows=slice(start, min(n, start + chunk_rows)),
                hdul=hdul,
                what="zpix redshift catalog",
            )

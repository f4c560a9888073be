"""Healpix redrock files: ``redrock-{survey}-{program}-{pix}.fits``.

HDUs (desidatamodel, iron): REDSHIFTS (TARGETID, CHI2, COEFF[10], Z, ZERR, ZWARN,
NPIXELS, SPECTYPE, SUBTYPE, NCOEFF, DELTACHI2), FIBERMAP, EXP_FIBERMAP, TSNR2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .coadd import _table_hdu
from .datamodel import NSIDE, REDSHIFTS, SPECPROD, units_of
from .fitsutil import open_fits, read_table, require_columns
from .fitswrite import primary_hdu_bytes, write_fits_bytes

__all__ = ["REDROCK_TEMPLATES", "read_redrock", "write_redrock"]

#: Template names and versions recorded in iron redrock headers (TEMNAMnn/TEMVERnn).
REDROCK_TEMPLATES = [
    ("GALAXY", "2.6"),
    ("QSO:::HIZ", "0.1"),
    ("QSO:::LOZ", "1.0"),
    *[(f"STAR:::{s}", "0.1") for s in ("A", "B", "CV", "F", "G", "K", "M", "WD")],
]
RRVER = "0.15.4"


def redrock_header() -> fits.Header:
    """Redrock version and template keywords, as in iron files."""
    hdr = fits.Header()
    hdr["RRVER"] = (RRVER, "Redrock version")
    for i, (name, ver) in enumerate(REDROCK_TEMPLATES):
        hdr[f"TEMNAM{i:02d}"] = name
        hdr[f"TEMVER{i:02d}"] = ver
    return hdr


def write_redrock(
    path: str | Path,
    redshifts: Table | np.ndarray,
    fibermap: Table | np.ndarray,
    *,
    survey: str,
    program: str,
    healpix: int,
    exp_fibermap: Table | np.ndarray | None = None,
    tsnr2: Table | np.ndarray | None = None,
    units: dict[str, dict[str, str]] | None = None,
) -> Path:
    """Write a redrock file in the DR1 format (atomically).

    Parameters
    ----------
    path : str or Path
        Output file, normally ``DR1Layout.redrock(...)``.
    redshifts : Table or structured array
        REDSHIFTS rows (columns of :data:`desilab.desi.datamodel.REDSHIFTS`).
    fibermap : Table or structured array
        FIBERMAP rows, one per REDSHIFTS row, same order.
    survey, program, healpix
        Identify the file (primary header).
    exp_fibermap, tsnr2 : optional
        EXP_FIBERMAP and TSNR2 HDUs.
    units : dict, optional
        TUNIT maps per HDU name.
    """
    units = units or {}
    if len(redshifts) != len(fibermap):
        raise ValueError("REDSHIFTS and FIBERMAP must have the same rows")
    hdr = redrock_header()
    for key, value in (
        ("SPGRP", "healpix"), ("SPGRPVAL", healpix), ("HPXPIXEL", healpix), ("HPXNSIDE", NSIDE),
        ("HPXNEST", True), ("SURVEY", survey), ("PROGRAM", program), ("SPECPROD", SPECPROD),
    ):  # fmt: skip
        hdr[key] = value
    parts = [
        primary_hdu_bytes(hdr),
        _table_hdu(redshifts, "REDSHIFTS", units_of(REDSHIFTS)),
        _table_hdu(fibermap, "FIBERMAP", units.get("FIBERMAP", {})),
    ]
    if exp_fibermap is not None:
        parts.append(_table_hdu(exp_fibermap, "EXP_FIBERMAP", units.get("EXP_FIBERMAP", {})))
    if tsnr2 is not None:
        parts.append(_table_hdu(tsnr2, "TSNR2", {}))
    return write_fits_bytes(path, parts)


def read_redrock(
    path: str | Path,
    *,
    hdu: str = "REDSHIFTS",
    targetids: Sequence[int] | None = None,
    columns: Sequence[str] | None = None,
) -> Table:
    """Read one table HDU of a redrock file, optionally only some TARGETIDs.

    Parameters
    ----------
    path : str or Path
        The redrock file.
    hdu : str
        ``REDSHIFTS`` (default), ``FIBERMAP``, ``EXP_FIBERMAP`` or ``TSNR2``.
    targetids : sequence of int, optional
        Only rows of these TARGETIDs (in file order).
    columns : sequence of str, optional
        Only these columns.

    Raises
    ------
    DR1FormatError
        Missing, corrupt or truncated file, or a missing HDU or column.
    """
    with open_fits(path, ["REDSHIFTS", hdu], what="redrock file") as hdul:
        require_columns(path, hdul["REDSHIFTS"], [c[0] for c in REDSHIFTS])
        rows = None
        if targetids is not None:
            tid = np.asarray(hdul[hdu].data["TARGETID"])
            rows = np.flatnonzero(np.isin(tid, np.asarray(list(targetids), dtype=np.int64)))
        return read_table(path, hdu, columns=columns, rows=rows, hdul=hdul, what="redrock file")

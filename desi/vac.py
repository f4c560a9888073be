"""Value-added catalogs: FastSpecFit (iron) and DESIVAST VoidFinder.

FastSpecFit
    ``vac/dr1/fastspecfit/iron/{version}/catalogs/fastspec-iron-main-bright.fits``.
    v2.x files hold FASTSPEC (fit results) and METADATA (targeting, redshift,
    photometry), row-matched. v3.0 splits main-bright into
    ``...-nside1-hpNN.fits`` files and moves physical properties to a SPECPHOT
    HDU; :func:`read_fastspec` reads both layouts by HDU name.
DESIVAST
    ``vac/dr1/desivast/v1.0/DESIVAST_BGS_VOLLIM_VoidFinder_{NGC,SGC}.fits``:
    MAXIMALS (one row per void: its largest sphere, X, Y, Z, RADIUS, R, RA, DEC,
    VOID, EDGE, R_EFF, R_EFF_UNCERT) and HOLES (all spheres: X, Y, Z, RADIUS,
    VOID), comoving Mpc/h.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table, hstack, vstack

from .datamodel import FASTSPEC, HOLES, MAXIMALS, METADATA, SPECPROD, dtype_of, units_of
from .errors import DR1FormatError
from .fitsutil import open_fits, read_table, require_columns
from .fitswrite import FitsTableWriter
from .layout import DR1Layout

__all__ = [
    "FastspecWriter",
    "read_fastspec",
    "read_voidfinder",
    "write_voidfinder",
]

FASTSPEC_VERSION = "v2.1"


class FastspecWriter:
    """Write a v2.x ``fastspec-iron-main-bright.fits`` (FASTSPEC + METADATA) in chunks.

    Parameters
    ----------
    path : str or Path
        Output file.
    """

    fastspec_dtype = dtype_of(FASTSPEC)
    metadata_dtype = dtype_of(METADATA)

    def __init__(self, path: str | Path) -> None:
        primary = fits.Header()
        primary["SPECPROD"] = (SPECPROD, "Spectroscopic production name")
        primary["COADDTYP"] = ("healpix", "Type of spectral coadd")
        primary["FSVER"] = (FASTSPEC_VERSION, "FastSpecFit VAC version")
        self._w = FitsTableWriter(path, primary)
        self._w.add_table("FASTSPEC", self.fastspec_dtype, units_of(FASTSPEC))
        self._w.add_table("METADATA", self.metadata_dtype, units_of(METADATA))

    def append(self, fastspec: np.ndarray, metadata: np.ndarray) -> None:
        """Append row-matched FASTSPEC and METADATA rows."""
        if len(fastspec) != len(metadata):
            raise ValueError("FASTSPEC and METADATA rows must match")
        self._w.append("FASTSPEC", fastspec)
        self._w.append("METADATA", metadata)

    @property
    def nrows(self) -> int:
        """Rows written so far."""
        return self._w.nrows("FASTSPEC")

    def close(self) -> Path:
        """Publish the file."""
        return self._w.close()

    def abort(self) -> None:
        """Discard the partial file."""
        self._w.abort()


def _read_fastspec_file(path: Path, columns: Sequence[str] | None) -> Table:
    with open_fits(path, ["FASTSPEC", "METADATA"], what="FastSpecFit catalog") as hdul:
        names = [h.name for h in hdul]
        parts = [n for n in ("METADATA", "SPECPHOT", "FASTSPEC") if n in names]
        nrows = {n: int(hdul[n].header["NAXIS2"]) for n in parts}
        if len(set(nrows.values())) != 1:
            raise DR1FormatError(
                path,
                f"HDUs are not row-matched ({nrows})",
                hdu="FASTSPEC",
                hint="The file is damaged; re-download it.",
            )
        for part in parts:
            require_columns(path, hdul[part], ["TARGETID"])
        tables, seen = [], set()
        wanted = set(columns) if columns is not None else None
        for part in parts:
            have = [c for c in hdul[part].columns.names if c not in seen]
            if wanted is not None:
                have = [c for c in have if c in wanted]
            seen.update(have)
            if have:
                tables.append(read_table(path, part, columns=have, hdul=hdul))
        if wanted is not None and wanted - seen:
            missing = sorted(wanted - seen)[0]
            raise DR1FormatError(
                path, "column not found in any HDU", hdu="FASTSPEC", column=missing
            )
        return hstack(tables, join_type="exact") if len(tables) > 1 else tables[0]


def read_fastspec(
    source: str | Path | DR1Layout,
    *,
    columns: Sequence[str] | None = None,
    version: str | None = None,
) -> Table:
    """Read the FastSpecFit main-bright catalog (v2.x or v3.0 layout).

    Parameters
    ----------
    source : path or DR1Layout
        A catalog file, or the DR1 tree (the newest version folder is found by glob).
    columns : sequence of str, optional
        Columns to return, taken from whichever HDU has them (METADATA first).
    version : str, optional
        VAC version folder (``v2.1``, ``v3.0``); newest when None.

    Returns
    -------
    astropy.table.Table
        One row per fitted target.
    """
    files = source.fastspec(version) if isinstance(source, DR1Layout) else [Path(source)]
    if not files:
        raise DR1FormatError(source.fastspecfit_dir, "no main-bright FastSpecFit catalog found")
    tables = [_read_fastspec_file(Path(f), columns) for f in files]
    return vstack(tables) if len(tables) > 1 else tables[0]


def write_voidfinder(
    path: str | Path,
    maximals: np.ndarray,
    holes: np.ndarray,
    header: dict | None = None,
) -> Path:
    """Write a DESIVAST VoidFinder catalog (PRIMARY, MAXIMALS, HOLES).

    Parameters
    ----------
    path : str or Path
        Output, normally ``DR1Layout.desivast_voidfinder(cap)``.
    maximals, holes : structured arrays
        Rows with the columns of :data:`~desilab.desi.datamodel.MAXIMALS` /
        :data:`~desilab.desi.datamodel.HOLES`.
    header : dict, optional
        Extra primary keywords (VAST writes distance limits, cosmology, counts).
    """
    primary = fits.Header()
    for key, value in (header or {}).items():
        primary[key] = value
    w = FitsTableWriter(path, primary)
    w.add_table(
        "MAXIMALS", dtype_of(MAXIMALS), units_of(MAXIMALS), {"VOID": (len(maximals), "Void Count")}
    )
    w.add_table(
        "HOLES",
        dtype_of(HOLES),
        units_of(HOLES),
        {"VOID": (len(maximals), "Void Count"), "HOLE": (len(holes), "Hole Count")},
    )
    w.append("MAXIMALS", maximals)
    w.append("HOLES", holes)
    return w.close()


def _canonical(table: Table, path: Path, hdu: str, required: list[str]) -> Table:
    # VAST writes upper- or lower-case names depending on capitalize_colnames.
    for name in list(table.colnames):
        if name != name.upper():
            table.rename_column(name, name.upper())
    for name in required:
        if name not in table.colnames:
            raise DR1FormatError(path, "required column is missing", hdu=hdu, column=name)
    return table


def read_voidfinder(path: str | Path) -> tuple[Table, Table]:
    """Read a DESIVAST VoidFinder catalog.

    Returns
    -------
    maximals, holes : astropy.table.Table
        Column names upper-case (X, Y, Z, RADIUS, VOID, ...), comoving Mpc/h.

    Raises
    ------
    DR1FormatError
        Missing, corrupt or truncated file, missing HDU or column.
    """
    path = Path(path)
    with open_fits(path, ["MAXIMALS", "HOLES"], what="DESIVAST VoidFinder catalog") as hdul:
        maximals = read_table(path, "MAXIMALS", hdul=hdul)
        holes = read_table(path, "HOLES", hdul=hdul)
    maximals = _canonical(
        maximals, path, "MAXIMALS", ["X", "Y", "Z", "RADIUS", "VOID", "EDGE", "R", "RA", "DEC"]
    )
    holes = _canonical(holes, path, "HOLES", ["X", "Y", "Z", "RADIUS", "VOID"])
    return maximals, holes

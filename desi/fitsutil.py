"""FITS reading shared by the DR1 readers.

Everything here turns the many ways a FITS file can be bad (missing, not FITS,
truncated, an HDU or column absent) into :class:`DR1FormatError` naming the
file and HDU. Writers live in :mod:`desilab.desi.fitswrite`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from .errors import DR1FormatError

__all__ = [
    "hdu_data_bytes",
    "open_fits",
    "read_table",
    "require_columns",
    "table_nrows",
]

_FITS_BLOCK = 2880


def hdu_data_bytes(header: fits.Header) -> int:
    """Bytes of data (without padding) that a header announces."""
    naxis = header.get("NAXIS", 0)
    if header.get("ZIMAGE", False) or header.get("XTENSION", "") == "BINTABLE":
        # Tile-compressed images are binary tables on disk.
        return int(header.get("NAXIS1", 0)) * int(header.get("NAXIS2", 0)) + int(
            header.get("PCOUNT", 0)
        )
    if naxis == 0:
        return 0
    n = abs(int(header["BITPIX"])) // 8
    for i in range(1, naxis + 1):
        n *= int(header[f"NAXIS{i}"])
    return n


def _locate_damage(path: Path, size: int) -> tuple[str | None, bool]:
    """Walk the headers of a damaged file: the first bad HDU and whether it is truncation."""
    offset, index, last = 0, 0, None
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while offset < size:
            f.seek(offset)
            try:
                header = fits.Header.fromfile(f)
            except (OSError, ValueError, EOFError, KeyError):
                label = f"#{index} (after {last})" if last else "PRIMARY"
                f.seek(offset)
                text = f.read(_FITS_BLOCK * 400)
                # Printable cards running into the end of the file: a header cut short
                # (truncation); anything else is garbage.
                printable = all(32 <= b < 127 for b in text)
                return label, printable and offset + len(text) >= size
            name = header.get("EXTNAME", "PRIMARY" if index == 0 else f"#{index}")
            data_start = f.tell()
            nbytes = hdu_data_bytes(header)
            offset = data_start + nbytes + (-nbytes % _FITS_BLOCK)
            if offset > size:
                # Data or its padding to a whole 2880-byte block is missing.
                return name, True
            index, last = index + 1, name
    return None, False


@contextlib.contextmanager
def open_fits(
    path: str | Path, required_hdus: Sequence[str] = (), *, what: str = "DR1 file"
) -> Iterator[fits.HDUList]:
    """Open a FITS file lazily (memory-mapped), checking it is complete.

    Parameters
    ----------
    path : str or Path
        The file.
    required_hdus : sequence of str
        EXTNAMEs that must be present.
    what : str
        Kind of file, used in error messages.

    Yields
    ------
    astropy.io.fits.HDUList
        Opened with ``memmap=True`` and unscaled image data, so image rows can
        be read without loading whole arrays.

    Raises
    ------
    DR1FormatError
        If the file is missing, not FITS, truncated, or lacks a required HDU.
    """
    path = Path(path)
    first = required_hdus[0] if required_hdus else "PRIMARY"
    if not path.is_file():
        raise DR1FormatError(
            path,
            f"{what} does not exist",
            hdu=first,
            hint="Check DATA_ROOT and the survey/program/healpix, or regenerate the mock.",
        )
    size = path.stat().st_size
    names: list[str] = []
    hdul = None
    try:
        with warnings.catch_warnings():
            # astropy only warns about truncation; for DR1 data that is an error.
            warnings.simplefilter("error", AstropyUserWarning)
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            hdul = fits.open(path, memmap=True, lazy_load_hdus=True, do_not_scale_image_data=True)
            # Load header by header so a damaged one can be named.
            while True:
                try:
                    hdu = hdul[len(names)]
                except IndexError:
                    break
                names.append(hdu.name or "PRIMARY")
    except (OSError, ValueError, TypeError, KeyError, Warning) as exc:
        if hdul is not None:
            hdul.close()
        name, truncated = _locate_damage(path, size)
        label = name or (f"#{len(names)} (after {names[-1]})" if names else "PRIMARY")
        if truncated:
            problem = f"file is truncated ({size} bytes): HDU {label} is incomplete"
        else:
            problem = (
                f"{what} is corrupt or not FITS: the header of HDU {label} cannot be read "
                f"({type(exc).__name__}: {exc})"
            )
        raise DR1FormatError(path, problem, hdu=label) from exc
    try:
        for hdu in hdul:
            need = hdu.fileinfo()["datLoc"] + hdu_data_bytes(hdu._header)
            if need > size:
                raise DR1FormatError(
                    path,
                    f"file is truncated: the header announces {need} bytes but the file has {size}",
                    hdu=hdu.name or "PRIMARY",
                )
        names = [h.name for h in hdul]
        for name in required_hdus:
            if name not in names:
                raise DR1FormatError(
                    path,
                    f"HDU {name} is missing (the file has {', '.join(names)}); this is not a "
                    f"complete {what}",
                    hdu=name,
                )
        yield hdul
    finally:
        _release_columns(hdul)
        hdul.close()


def _release_columns(hdul: fits.HDUList) -> None:
    """Unlink table columns from their data before closing.

    On close astropy gives every column still linked to a table's data a converted
    copy of its field (``FITS_rec.__del__``): for a 500k-row zpix file that read and
    converted the whole table once more, a fifth of an ingest's client time. Nobody
    uses those copies after the file is closed.
    """
    for hdu in hdul:
        data = hdu.__dict__.get("data")  # loaded tables only (lazy attribute)
        for col in list(getattr(data, "_col_weakrefs", ())):
            del col.array


def require_columns(path: str | Path, hdu: fits.BinTableHDU, names: Sequence[str]) -> None:
    """Raise :class:`DR1FormatError` if a table HDU lacks one of ``names``."""
    have = set(hdu.columns.names)
    for name in names:
        if name not in have:
            raise DR1FormatError(
                path,
                "required column is missing; the file does not follow the DR1 data model",
                hdu=hdu.name,
                column=name,
            )


def table_nrows(hdu: fits.BinTableHDU) -> int:
    """Number of rows of a table HDU, from its header (no data read)."""
    return int(hdu.header["NAXIS2"])


def _native(arr: np.ndarray) -> np.ndarray:
    """Copy of ``arr`` in native byte order (FITS is big-endian)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "SU":
        return arr.astype(arr.dtype)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def read_table(
    path: str | Path,
    hdu: str,
    *,
    columns: Sequence[str] | None = None,
    rows: np.ndarray | slice | None = None,
    hdul: fits.HDUList | None = None,
    what: str = "DR1 file",
) -> Table:
    """Read (part of) a binary table by EXTNAME.

    Parameters
    ----------
    path : str or Path
        The file (used for messages, and to open it when ``hdul`` is None).
    hdu : str
        EXTNAME of the table.
    columns : sequence of str, optional
        Columns to read; all when None.
    rows : array of int, slice, optional
        Rows to read; all when None. Only these rows are read from disk.
    hdul : HDUList, optional
        An already opened file (from :func:`open_fits`).
    what : str
        Kind of file, for messages.

    Returns
    -------
    astropy.table.Table
        Native byte order, strings decoded, units from TUNITn.
    """
    if hdul is None:
        with open_fits(path, [hdu], what=what) as opened:
            return read_table(path, hdu, columns=columns, rows=rows, hdul=opened, what=what)
    if hdu not in [h.name for h in hdul]:
        raise DR1FormatError(path, f"HDU {hdu} is missing; this is not a complete {what}", hdu=hdu)
    thdu = hdul[hdu]
    if not isinstance(thdu, fits.BinTableHDU):
        raise DR1FormatError(path, "expected a binary table", hdu=hdu)
    names = list(columns) if columns is not None else list(thdu.columns.names)
    require_columns(path, thdu, names)
    try:
        data = thdu.data
        if rows is not None:
            data = data[rows]
        out = Table()
        units = {c.name: c.unit for c in thdu.columns}
        signed_bytes = {c.name for c in thdu.columns if c.format == "B" and c.bzero == -128}
        for name in names:
            col = data[name]
            if name in signed_bytes:
                col = np.asarray(col).astype(np.int8)
            if col.dtype.kind == "S":
                col = np.char.decode(np.char.rstrip(np.asarray(col)), "ascii")
            out[name] = _native(col)
            if units.get(name):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[name].unit = units[name]
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise DR1FormatError(path, f"cannot read the table data ({exc})", hdu=hdu) from exc
    for key in ("SURVEY", "PROGRAM", "SPECPROD", "ZCATVER"):
        if key in thdu.header:
            out.meta[key] = thdu.header[key]
    return out

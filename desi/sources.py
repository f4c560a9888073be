"""The DR1 files ``desilab ingest`` loads, and their rows as COPY batches.

Each :class:`SourceFile` is one unit of ingest (one transaction). Its reader
yields :class:`Batch` es: column arrays for one catalog table, in the column
order of a COPY. Sky tables come out sorted by ``hpx`` within windows of
``sort_rows`` rows (the whole file for all but the largest), so the table is
physically ordered by its HEALPix index as it is written.

Only the readers of :mod:`desilab.desi` open files, so a bad file raises
:class:`~desilab.desi.errors.DR1FormatError` naming the file, HDU and column.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .coadd import CoaddFile
from .datamodel import ZCATALOG_REQUIRED
from .errors import DR1FormatError
from .fitsutil import open_fits, require_columns, table_nrows
from .layout import DR1Layout
from .pgcopy import CopyColumn
from .schema import (
    FASTSPEC_TABLE,
    HOLES_TABLE,
    MAXIMALS_TABLE,
    SPECTRA,
    ZPIX,
    ZPIX_SECONDARY,
    TableDef,
)
from .sky import hpx_index
from .vac import read_voidfinder

__all__ = ["KINDS", "Batch", "SourceFile", "checksum", "discover", "make_batch", "read_batches"]

#: Kinds of files, in ingest order, and the tables each fills.
KINDS: dict[str, tuple[TableDef, ...]] = {
    "zpix": (ZPIX, ZPIX_SECONDARY),
    "fastspec": (FASTSPEC_TABLE,),
    "desivast": (MAXIMALS_TABLE, HOLES_TABLE),
    "coadd": (SPECTRA,),
}
_CAP_RE = re.compile(r"VoidFinder_(NGC|SGC)\.fits$", re.I)
_MEMORY_PER_WINDOW = 512 * 2**20
#: The DR1 readers check files under ``warnings.catch_warnings``, which is process-wide
#: state (not thread-safe before Python 3.14): files are opened one at a time.
_FITS_LOCK = threading.RLock()


@dataclass(frozen=True)
class SourceFile:
    """One file to ingest."""

    kind: str
    path: Path
    relpath: str

    @property
    def tables(self) -> tuple[TableDef, ...]:
        return KINDS[self.kind]


@dataclass
class Batch:
    """Rows for one table: ``names`` are its COPY column list."""

    table: TableDef
    names: list[str]
    columns: list[CopyColumn]
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns[0].values) if self.columns else 0


def discover(layout: DR1Layout, kinds: tuple[str, ...] | None = None) -> list[SourceFile]:
    """Files of the DR1 tree under ``layout.root``, in ingest order."""
    kinds = tuple(kinds or KINDS)
    root = layout.root
    found: list[tuple[str, Path]] = []
    if "zpix" in kinds:
        found += [("zpix", p) for p in layout.zpix_files()]
    if "fastspec" in kinds:
        with contextlib.suppress(DR1FormatError):  # no FastSpecFit VAC in this tree
            found += [("fastspec", p) for p in layout.fastspec()]
    if "desivast" in kinds:
        found += [("desivast", p) for p in sorted(layout.desivast_dir.glob("*VoidFinder_*.fits"))]
    if "coadd" in kinds:
        found += [("coadd", f.coadd) for f in layout.iter_healpix()]
    return [SourceFile(k, p, p.relative_to(root).as_posix()) for k, p in found]


def checksum(path: Path, block: int = 8 * 2**20) -> str:
    """BLAKE2b-128 of the file content (hex)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _hpx(path: Path, hdu: str, ra_name: str, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    try:
        return hpx_index(ra, dec)
    except ValueError as exc:
        raise DR1FormatError(path, str(exc), hdu=hdu, column=ra_name) from exc


def make_batch(t: TableDef, data: dict[str, np.ndarray], extra: dict[str, object], n: int) -> Batch:
    """A batch of ``n`` rows of table ``t``.

    ``data`` maps FITS column names (upper case) to arrays; ``extra`` maps SQL column
    names to arrays or scalars (computed columns such as ``hpx``, ``file_id``).
    Columns of ``t`` found in neither are left out of the COPY (NULL).
    """
    names, cols = [], []
    for c in t.columns:
        if c.name in extra:
            values = extra[c.name]
        elif c.source and c.source in data:
            values = data[c.source]
        else:
            continue  # absent from this file: NULL
        names.append(c.name)
        cols.append(CopyColumn(np.broadcast_to(values, (n, *np.shape(values)[1:])), c.pgtype))
    # Text last: the encoder lays out the fixed-width head of all rows at once.
    order = sorted(range(len(cols)), key=lambda i: cols[i].pgtype == "text")
    return Batch(t, [names[i] for i in order], [cols[i] for i in order])


def _records(path: Path, hdu, rows: slice) -> np.ndarray:
    """A window of raw FITS records, copied out of the memory map in one sequential read."""
    try:
        return np.array(hdu.data.view(np.ndarray)[rows])
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise DR1FormatError(path, f"cannot read the table rows ({exc})", hdu=hdu.name) from exc


def _convert(col, raw: np.ndarray) -> np.ndarray:
    """Raw FITS column values -> values: logical to bool, TZERO/TSCALE applied."""
    if str(col.format).endswith("L"):
        return raw == ord("T")
    bzero, bscale = col.bzero or 0, col.bscale or 1
    if bscale == 1 and raw.dtype.kind in "iu":
        if raw.dtype.itemsize == 1 and bzero == -128:  # signed bytes
            return (raw.astype(np.int16) - 128).astype(np.int8)
        if raw.dtype.kind == "i" and bzero == 2 ** (8 * raw.dtype.itemsize - 1):
            unsigned = np.dtype(f"u{raw.dtype.itemsize}")  # unsigned stored as signed
            return raw.astype(raw.dtype.newbyteorder("=")).view(unsigned) ^ unsigned.type(bzero)
    if bzero or bscale != 1:
        return raw * bscale + bzero
    return raw


def _windows(n: int, row_bytes: int, sort_rows: int) -> Iterator[slice]:
    size = max(1, min(sort_rows, _MEMORY_PER_WINDOW // max(row_bytes, 1)))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _chunks(sel: np.ndarray, chunk_rows: int) -> Iterator[np.ndarray | slice]:
    """Row selections of at most ``chunk_rows``: slices (views) when every row is kept."""
    if sel.all():
        for start in range(0, len(sel), chunk_rows):
            yield slice(start, min(len(sel), start + chunk_rows))
        return
    idx = np.flatnonzero(sel)
    for start in range(0, len(idx), chunk_rows):
        yield idx[start : start + chunk_rows]


def _sky_table_batches(
    src: SourceFile,
    hdus: list,
    tables: tuple[TableDef, ...],
    ra_dec: tuple[str, str],
    file_id: int,
    chunk_rows: int,
    sort_rows: int,
    split: str | None = None,
) -> Iterator[Batch]:
    """Rows of row-matched table HDUs, sorted by hpx per window, in COPY chunks."""
    n = table_nrows(hdus[0])
    wanted = {c.source for t in tables for c in t.columns if c.source}
    where = {}
    for k, hdu in enumerate(hdus):  # first HDU having a column wins (METADATA, FASTSPEC)
        for name in hdu.columns.names:
            if name in wanted and name not in where:
                where[name] = k
    row_bytes = sum(h.columns.dtype.itemsize for h in hdus)
    ignored = sorted({c for h in hdus for c in h.columns.names} - wanted)
    first = True
    for window in _windows(n, row_bytes, sort_rows):
        recs = [_records(src.path, hdu, window) for hdu in hdus]

        def column(name: str, recs: list[np.ndarray] = recs) -> np.ndarray:
            hdu = hdus[where[name]]
            return _convert(hdu.columns[name], recs[where[name]][name])

        ra = column(ra_dec[0]).astype(np.float64)
        dec = column(ra_dec[1]).astype(np.float64)
        hpx = _hpx(src.path, hdus[where[ra_dec[0]]].name, ra_dec[0], ra, dec)
        # Unstable is fine (rows of one pixel may come in any order) and several times
        # faster than a stable sort of int64 keys.
        order = np.argsort(hpx)
        # Whole records, one gather per HDU, as opaque fixed-size items: np.take of a
        # void view is ~4x faster than indexing the structured array (field by field).
        recs[:] = [np.take(r.view(f"V{r.dtype.itemsize}"), order).view(r.dtype) for r in recs]
        hpx = hpx[order]
        data = {name: column(name) for name in where}
        groups = [(tables[0], np.ones(len(hpx), dtype=bool))]
        if split is not None:
            primary = np.asarray(data[split]).astype(bool)
            groups = [(tables[0], primary), (tables[1], ~primary)]
        for t, sel in groups:
            for part in _chunks(sel, chunk_rows):
                extra = {"hpx": hpx[part], "file_id": np.int32(file_id)}
                rows = len(hpx[part])
                b = make_batch(t, {k: v[part] for k, v in data.items()}, extra, rows)
                if first:
                    b.ignored, first = ignored, False
                yield b


@contextlib.contextmanager
def _opened(path: Path, hdus: list[str], what: str) -> Iterator:
    """:func:`open_fits` with its checks under :data:`_FITS_LOCK` (thread-safe)."""
    with contextlib.ExitStack() as stack:
        with _FITS_LOCK:
            hdul = stack.enter_context(open_fits(path, hdus, what=what))
        yield hdul


def _touch(path: Path, hdus: list) -> None:
    """Map the table data (astropy may warn about odd columns: do it under the lock)."""
    for hdu in hdus:
        try:
            _ = hdu.data, hdu.columns.dtype
        except (OSError, ValueError, TypeError, Warning) as exc:
            raise DR1FormatError(path, f"cannot map the table ({exc})", hdu=hdu.name) from exc


def _zpix(src: SourceFile, file_id: int, chunk_rows: int, sort_rows: int) -> Iterator[Batch]:
    with _opened(src.path, ["ZCATALOG"], "zpix redshift catalog") as hdul:
        hdu = hdul["ZCATALOG"]
        with _FITS_LOCK:
            require_columns(src.path, hdu, ZCATALOG_REQUIRED)
            _touch(src.path, [hdu])
        yield from _sky_table_batches(
            src,
            [hdu],
            (ZPIX, ZPIX_SECONDARY),
            ("TARGET_RA", "TARGET_DEC"),
            file_id,
            chunk_rows,
            sort_rows,
            split="ZCAT_PRIMARY",
        )


def _fastspec(src: SourceFile, file_id: int, chunk_rows: int, sort_rows: int) -> Iterator[Batch]:
    with _opened(src.path, ["FASTSPEC", "METADATA"], "FastSpecFit catalog") as hdul:
        with _FITS_LOCK:
            names = [h.name for h in hdul]
            hdus = [hdul[n] for n in ("METADATA", "SPECPHOT", "FASTSPEC") if n in names]
            nrows = {h.name: table_nrows(h) for h in hdus}
            required = ["TARGETID", "SURVEY", "PROGRAM", "RA", "DEC"]
            require_columns(src.path, hdul["METADATA"], required)
            _touch(src.path, hdus)
        if len(set(nrows.values())) != 1:
            raise DR1FormatError(src.path, f"HDUs are not row-matched ({nrows})", hdu="FASTSPEC")
        yield from _sky_table_batches(
            src, hdus, (FASTSPEC_TABLE,), ("RA", "DEC"), file_id, chunk_rows, sort_rows
        )


def _desivast(src: SourceFile, file_id: int) -> Iterator[Batch]:
    m = _CAP_RE.search(src.path.name)
    if not m:
        raise DR1FormatError(src.path, "cannot tell the cap (NGC or SGC) from the file name")
    cap = m[1].upper()
    with _FITS_LOCK:
        maximals, holes = read_voidfinder(src.path)
    for t, tab, sky in ((MAXIMALS_TABLE, maximals, True), (HOLES_TABLE, holes, False)):
        data = {name: np.asarray(tab[name]) for name in tab.colnames}
        n = len(tab)
        extra = {"cap": np.array([cap.encode()]), "file_id": np.int32(file_id)}
        if sky:
            extra["hpx"] = _hpx(src.path, "MAXIMALS", "RA", data["RA"], data["DEC"])
        else:
            extra["hole"] = np.arange(n, dtype=np.int32)
        b = make_batch(t, data, extra, n)
        b.ignored = sorted(set(tab.colnames) - {c.source for c in t.columns})
        yield b


def _coadd(src: SourceFile, file_id: int) -> Iterator[Batch]:
    with _FITS_LOCK, CoaddFile(src.path) as f:
        header = f.header
        tid = f.targetids
    m = re.match(r"coadd-([a-z0-9]+)-([a-z]+)-(\d+)\.fits$", src.path.name)
    survey = header.get("SURVEY") or (m[1] if m else None)
    program = header.get("PROGRAM") or (m[2] if m else None)
    healpix = header.get("HPXPIXEL", int(m[3]) if m else None)
    if survey is None or program is None or healpix is None:
        raise DR1FormatError(
            src.path, "SURVEY, PROGRAM or HPXPIXEL missing from the header", hdu="PRIMARY"
        )
    n = len(tid)
    extra = {
        "targetid": tid,
        "survey": np.array([str(survey).encode()]),
        "program": np.array([str(program).encode()]),
        "healpix": np.int32(healpix),
        "coadd_row": np.arange(n, dtype=np.int32),
        "file_id": np.int32(file_id),
    }
    yield make_batch(SPECTRA, {}, extra, n)


def read_batches(
    src: SourceFile, file_id: int, *, chunk_rows: int = 100_000, sort_rows: int = 1_000_000
) -> Iterator[Batch]:
    """COPY batches of one file.

    Parameters
    ----------
    src : SourceFile
        The file.
    file_id : int
        Its ``dr1.ingest_files`` id, stored in every row.
    chunk_rows : int
        Rows per batch.
    sort_rows : int
        Rows sorted by ``hpx`` together (bounded further to ~512 MB of rows).

    Raises
    ------
    DR1FormatError
        The file is missing, corrupt, truncated or not in the DR1 format.
    """
    if src.kind == "zpix":
        yield from _zpix(src, file_id, chunk_rows, sort_rows)
    elif src.kind == "fastspec":
        yield from _fastspec(src, file_id, chunk_rows, sort_rows)
    elif src.kind == "desivast":
        yield from _desivast(src, file_id)
    elif src.kind == "coadd":
        yield from _coadd(src, file_id)
    else:
        raise ValueError(f"unknown kind of DR1 file {src.kind!r}")

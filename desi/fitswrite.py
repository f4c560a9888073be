"""Fast, atomic FITS writing for the DR1 formats.

astropy builds Column and Card objects for every table it writes, which
dominates the cost of writing many small DR1 tables; here headers are built
once per column layout (by astropy, so they are standard) and data are
serialised straight from NumPy. Files appear only when complete: they are
written to a temporary name and renamed.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = [
    "FitsTableWriter",
    "image_hdu_bytes",
    "primary_hdu_bytes",
    "table_hdu_bytes",
    "write_fits_bytes",
]

_FITS_BLOCK = 2880


def _pad(nbytes: int, fill: bytes = b"\0") -> bytes:
    return fill * (-nbytes % _FITS_BLOCK)


def primary_hdu_bytes(header: dict | fits.Header | None = None) -> bytes:
    """Bytes of an empty primary HDU with extra keywords."""
    hdr = fits.PrimaryHDU().header
    for key, value in (header or {}).items():
        hdr[key] = value
    return hdr.tostring().encode()


def _card(key: str, value: object) -> str:
    """One 80-character FITS header card in fixed format (no astropy Header overhead)."""
    if isinstance(value, bool | np.bool_):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int | np.integer):
        text = f"{int(value):>20d}"
    elif isinstance(value, float | np.floating):
        text = f"{float(value):>20.15G}"
    else:
        text = "'" + str(value).replace("'", "''").ljust(8) + "'"
    return f"{key:<8}= {text}".ljust(80)[:80]


def image_hdu_bytes(name: str, data: np.ndarray, header: dict | None = None) -> bytes:
    """Bytes of an image extension (header + big-endian data), built without astropy HDUs.

    uint32 data are stored as int32 with BZERO = 2**31, as FITS requires.
    """
    data = np.asarray(data)
    bzero = None
    if data.dtype == np.uint32:
        raw = (data ^ np.uint32(0x80000000)).view(np.int32).astype(">i4")
        bzero = 2**31
    else:
        raw = data.astype(data.dtype.newbyteorder(">"), copy=False)
    cards = [
        _card("XTENSION", "IMAGE"),
        _card("BITPIX", (-8 if raw.dtype.kind == "f" else 8) * raw.dtype.itemsize),
        _card("NAXIS", raw.ndim),
    ]
    cards += [_card(f"NAXIS{i}", n) for i, n in enumerate(reversed(raw.shape), start=1)]
    cards += [_card("PCOUNT", 0), _card("GCOUNT", 1), _card("EXTNAME", name)]
    if bzero is not None:
        cards += [_card("BSCALE", 1), _card("BZERO", bzero)]
    cards += [_card(k, v) for k, v in (header or {}).items()]
    cards.append("END".ljust(80))
    head = "".join(cards)
    body = raw.tobytes()
    return head.encode() + _pad(len(head), b" ") + body + _pad(len(body))


@functools.lru_cache(maxsize=256)
def _table_template(name: str, dtype: np.dtype, units: tuple, extra: tuple) -> tuple[str, int, str]:
    hdu = _empty_table_hdu(name, dtype)
    for i, col in enumerate(dtype.names, start=1):
        unit = dict(units).get(col)
        if unit:
            hdu.header[f"TUNIT{i}"] = unit
    for key, value, comment in extra:
        hdu.header[key] = (value, comment)
    text = hdu.header.tostring()
    cards = [text[i : i + 80] for i in range(0, len(text), 80)]
    idx = next(i for i, c in enumerate(cards) if c.startswith("NAXIS2  ="))
    return text, idx, cards[idx]


def _header_dtype(dtype: np.dtype) -> np.dtype:
    """dtype astropy should describe: int8 as unsigned bytes (astropy would say logical)."""
    fields = []
    for name in dtype.names:
        base, shape = dtype[name].base, dtype[name].shape
        base = np.dtype("u1") if base == np.dtype("i1") else base
        fields.append((name, base, shape) if shape else (name, base))
    return np.dtype(fields)


def _empty_table_hdu(name: str, dtype: np.dtype) -> fits.BinTableHDU:
    """Zero-row table HDU whose header describes ``dtype`` (signed bytes via TZERO = -128)."""
    hdu = fits.BinTableHDU(np.zeros(0, dtype=_header_dtype(dtype)), name=name)
    for i, col in enumerate(dtype.names, start=1):
        if dtype[col].base == np.dtype("i1"):
            # FITS has no signed byte: unsigned byte with TZERO = -128 (the cfitsio convention).
            hdu.header.insert(f"TFORM{i}", (f"TZERO{i}", -128), after=True)
    return hdu


def table_hdu_bytes(
    name: str, rows: np.ndarray, units: dict[str, str] | None = None, header: dict | None = None
) -> bytes:
    """Bytes of a binary-table extension; headers are cached per column layout.

    astropy builds a Column object per column per call, which dominates the time
    of writing many small DR1 tables; here the header is made once per layout.
    """
    rows = np.asarray(rows)
    extra = []
    for key, value in (header or {}).items():
        value, comment = value if isinstance(value, tuple) else (value, "")
        extra.append((key, value, comment))
    text, idx, _ = _table_template(
        name, rows.dtype, tuple(sorted((units or {}).items())), tuple(extra)
    )
    card = fits.Card("NAXIS2", len(rows), "length of dimension 2").image
    head = text[: idx * 80] + card + text[(idx + 1) * 80 :]
    body = _to_raw(rows, _raw_dtype(rows.dtype))
    return head.encode() + body + _pad(len(body))


def write_fits_bytes(path: str | Path, parts: Sequence[bytes]) -> Path:
    """Write already serialised HDUs to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _raw_dtype(dtype: np.dtype) -> np.dtype:
    """On-disk (big-endian, FITS logical as bytes) dtype for a logical dtype."""
    fields = []
    for name in dtype.names:
        base, shape = dtype[name].base, dtype[name].shape
        if base.kind == "b" or base == np.dtype("i1"):
            raw = np.dtype("u1")
        elif base.kind in "SV":
            raw = base
        else:
            raw = base.newbyteorder(">")
        fields.append((name, raw, shape) if shape else (name, raw))
    return np.dtype(fields)


def _to_raw(arr: np.ndarray, raw: np.dtype) -> bytes:
    out = np.empty(len(arr), dtype=raw)
    for name in arr.dtype.names:
        if arr.dtype[name].base.kind == "b":
            # FITS logicals are the characters T and F.
            out[name] = np.where(arr[name], ord("T"), ord("F"))
        elif arr.dtype[name].base == np.dtype("i1"):
            out[name] = (arr[name].astype(np.int16) + 128).astype(np.uint8)
        else:
            out[name] = arr[name]
    return out.tobytes()


class FitsTableWriter:
    """Write large multi-HDU FITS tables in bounded memory.

    Rows are appended chunk by chunk to one spool file per HDU; :meth:`close`
    assembles the final FITS file (headers from astropy, data copied from the
    spools) and renames it into place. Nothing is visible at ``path`` until
    :meth:`close` succeeds.

    Parameters
    ----------
    path : str or Path
        Final file name.
    primary_header : astropy.io.fits.Header, optional
        Keywords for the empty primary HDU.
    """

    def __init__(self, path: str | Path, primary_header: fits.Header | dict | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.primary_header = fits.Header()
        for key, value in (primary_header or {}).items():
            self.primary_header[key] = value
        self._spooldir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._hdus: dict[str, dict] = {}

    def add_table(
        self,
        name: str,
        dtype: np.dtype,
        units: dict[str, str] | None = None,
        header: fits.Header | dict | None = None,
    ) -> None:
        """Declare a table HDU (in file order) with its logical dtype and units."""
        dtype = np.dtype(dtype)
        extra = fits.Header()
        for key, value in header.items() if header is not None else ():
            extra[key] = value
        self._hdus[name] = {
            "dtype": dtype,
            "raw": _raw_dtype(dtype),
            "units": units or {},
            "header": extra,
            "nrows": 0,
            "spool": open(self._spooldir / f"{name}.bin", "wb"),  # noqa: SIM115
        }

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append rows (a structured array with the declared fields) to HDU ``name``."""
        spec = self._hdus[name]
        rows = np.asarray(rows)
        if rows.dtype.names != spec["dtype"].names:
            missing = set(spec["dtype"].names) ^ set(rows.dtype.names or ())
            raise ValueError(f"rows for {name} do not match its columns: {sorted(missing)}")
        spec["spool"].write(_to_raw(rows, spec["raw"]))
        spec["nrows"] += len(rows)

    def nrows(self, name: str) -> int:
        """Rows appended so far to HDU ``name``."""
        return self._hdus[name]["nrows"]

    def close(self) -> Path:
        """Assemble and atomically publish the FITS file; returns its path."""
        tmp = self._spooldir / "assembled.fits"
        with open(tmp, "wb") as out:
            out.write(fits.PrimaryHDU(header=self.primary_header).header.tostring().encode())
            for name, spec in self._hdus.items():
                spec["spool"].close()
                hdu = _empty_table_hdu(name, spec["dtype"])
                for i, col in enumerate(spec["dtype"].names, start=1):
                    if spec["units"].get(col):
                        hdu.header[f"TUNIT{i}"] = spec["units"][col]
                for card in spec["header"].cards:
                    hdu.header[card.keyword] = (card.value, card.comment)
                hdu.header["NAXIS2"] = spec["nrows"]
                out.write(hdu.header.tostring().encode())
                with open(self._spooldir / f"{name}.bin", "rb") as spool:
                    shutil.copyfileobj(spool, out, length=1 << 24)
                nbytes = spec["nrows"] * spec["raw"].itemsize
                out.write(b"\0" * (-nbytes % _FITS_BLOCK))
        os.replace(tmp, self.path)
        shutil.rmtree(self._spooldir, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        for spec in self._hdus.values():
            spec["spool"].close()
        shutil.rmtree(self._spooldir, ignore_errors=True)

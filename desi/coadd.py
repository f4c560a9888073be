"""Healpix coadd files: ``coadd-{survey}-{program}-{pix}.fits``.

HDUs (desidatamodel, iron): FIBERMAP, EXP_FIBERMAP, then for each arm B, R, Z
``{ARM}_WAVELENGTH`` (float64, Angstrom), ``{ARM}_FLUX`` and ``{ARM}_IVAR``
(float32, nspec x nwave), ``{ARM}_MASK`` (uint32 stored as int32 + BZERO, tile
compressed as in DR1), ``{ARM}_RESOLUTION`` (float32, nspec x 11 x nwave), and
SCORES. ``ivar == 0`` marks a masked pixel.

:class:`CoaddFile` reads by HDU name from a memory-mapped file, so selecting a
few TARGETIDs reads only their rows.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .datamodel import FLUX_UNIT, IVAR_UNIT, NDIAG, NSIDE, SPECPROD
from .errors import DR1FormatError
from .fitsutil import open_fits, read_table, require_columns
from .fitswrite import image_hdu_bytes, primary_hdu_bytes, table_hdu_bytes, write_fits_bytes

__all__ = ["ArmSpectra", "CoaddFile", "CoaddSpectra", "read_coadd", "write_coadd"]

ARM_NAMES = ("B", "R", "Z")
ARM_HDUS = ("WAVELENGTH", "FLUX", "IVAR", "MASK", "RESOLUTION")
REQUIRED_HDUS = (
    "FIBERMAP",
    *[f"{a}_{h}" for a in ARM_NAMES for h in ARM_HDUS],
)


@dataclass
class ArmSpectra:
    """Spectra of one arm.

    Attributes
    ----------
    wave : ndarray, shape (nwave,)
        Vacuum wavelength, Angstrom.
    flux : ndarray, shape (nspec, nwave), float32
        Flux, 1e-17 erg/(s cm2 Angstrom).
    ivar : ndarray, shape (nspec, nwave), float32
        Inverse variance of ``flux``; 0 means masked.
    mask : ndarray, shape (nspec, nwave), uint32
        Pixel mask bits; non-zero means bad.
    resolution : ndarray, shape (nspec, 11, nwave), float32, or None
        Diagonals of the resolution matrix, offsets ``5 - arange(11)`` as in
        ``scipy.sparse.dia_matrix((resolution[i], offsets), (nwave, nwave))``.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    resolution: np.ndarray | None = None

    def good(self) -> np.ndarray:
        """Boolean array of usable pixels (ivar > 0 and mask == 0)."""
        return (self.ivar > 0) & (self.mask == 0)


@dataclass
class CoaddSpectra:
    """Coadded spectra of one healpix file (or a row subset of it)."""

    fibermap: Table
    arms: dict[str, ArmSpectra]
    exp_fibermap: Table | None = None
    scores: Table | None = None
    meta: dict = field(default_factory=dict)

    @property
    def targetid(self) -> np.ndarray:
        """TARGETID of each spectrum, in row order."""
        return np.asarray(self.fibermap["TARGETID"])

    def __len__(self) -> int:
        return len(self.fibermap)


def as_records(table: Table | np.ndarray) -> np.ndarray:
    """Structured array of a table, unicode columns as ASCII bytes (FITS strings)."""
    arr = table.as_array() if isinstance(table, Table) else np.asarray(table)
    if any(arr.dtype[n].kind == "U" for n in arr.dtype.names):
        fields = [
            (
                n,
                f"S{max(1, arr.dtype[n].itemsize // 4)}"
                if arr.dtype[n].kind == "U"
                else arr.dtype[n],
            )
            for n in arr.dtype.names
        ]
        out = np.zeros(len(arr), dtype=fields)
        for n in arr.dtype.names:
            out[n] = np.char.encode(arr[n], "ascii") if arr.dtype[n].kind == "U" else arr[n]
        return out
    return np.ma.filled(arr) if isinstance(arr, np.ma.MaskedArray) else arr


def _table_hdu(table: Table | np.ndarray, name: str, units: dict[str, str]) -> bytes:
    return table_hdu_bytes(name, as_records(table), units)


def write_coadd(
    path: str | Path,
    spectra: CoaddSpectra,
    *,
    survey: str,
    program: str,
    healpix: int,
    units: dict[str, dict[str, str]] | None = None,
    compress_mask: bool = False,
) -> Path:
    """Write a healpix coadd file in the DR1 format (atomically).

    Parameters
    ----------
    path : str or Path
        Output file, normally ``DR1Layout.coadd(survey, program, healpix)``.
    spectra : CoaddSpectra
        FIBERMAP, EXP_FIBERMAP, SCORES and the three arms.
    survey, program : str
        E.g. ``main``, ``bright``.
    healpix : int
        Nested nside=64 pixel.
    units : dict, optional
        ``{"FIBERMAP": {...}, "EXP_FIBERMAP": {...}, "SCORES": {...}}`` TUNIT maps.
    compress_mask : bool
        Tile-compress the MASK HDUs (GZIP_1, one tile per spectrum) as DR1 does.
        Off by default: astropy's compression costs ~20 ms per HDU, and readers
        (this one, fitsio, astropy) read both forms by HDU name.
    """
    units = units or {}
    nspec = len(spectra.fibermap)
    hdr = {
        "HPXNSIDE": NSIDE, "HPXPIXEL": healpix, "HPXNEST": True, "SPGRP": "healpix",
        "SPGRPVAL": healpix, "SURVEY": survey, "PROGRAM": program, "SPECPROD": SPECPROD,
        **spectra.meta,
    }  # fmt: skip
    parts = [
        primary_hdu_bytes(hdr),
        _table_hdu(spectra.fibermap, "FIBERMAP", units.get("FIBERMAP", {})),
    ]
    if spectra.exp_fibermap is not None:
        parts.append(
            _table_hdu(spectra.exp_fibermap, "EXP_FIBERMAP", units.get("EXP_FIBERMAP", {}))
        )
    for arm in ARM_NAMES:
        a = spectra.arms[arm]
        nwave = len(a.wave)
        for name, arr in (("FLUX", a.flux), ("IVAR", a.ivar), ("MASK", a.mask)):
            if np.shape(arr) != (nspec, nwave):
                raise ValueError(
                    f"{arm}_{name} has shape {np.shape(arr)}, expected {(nspec, nwave)}"
                )
        if a.resolution is None or a.resolution.shape != (nspec, NDIAG, nwave):
            raise ValueError(f"{arm}_RESOLUTION must have shape {(nspec, NDIAG, nwave)}")
        parts.append(
            image_hdu_bytes(
                f"{arm}_WAVELENGTH", np.asarray(a.wave, np.float64), {"BUNIT": "Angstrom"}
            )
        )
        parts.append(
            image_hdu_bytes(f"{arm}_FLUX", np.asarray(a.flux, np.float32), {"BUNIT": FLUX_UNIT})
        )
        parts.append(
            image_hdu_bytes(f"{arm}_IVAR", np.asarray(a.ivar, np.float32), {"BUNIT": IVAR_UNIT})
        )
        mask = np.asarray(a.mask, dtype=np.uint32)
        if compress_mask:
            hdu = fits.CompImageHDU(
                mask, name=f"{arm}_MASK", compression_type="GZIP_1", tile_shape=(1, nwave)
            )
            buf = io.BytesIO()
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
            parts.append(buf.getvalue()[len(primary_hdu_bytes()) :])
        else:
            parts.append(image_hdu_bytes(f"{arm}_MASK", mask))
        parts.append(image_hdu_bytes(f"{arm}_RESOLUTION", np.asarray(a.resolution, np.float32)))
    if spectra.scores is not None:
        parts.append(_table_hdu(spectra.scores, "SCORES", units.get("SCORES", {})))
    return write_fits_bytes(path, parts)


def _unscale(raw: np.ndarray, header: fits.Header) -> np.ndarray:
    """Apply BZERO/BSCALE to raw integer mask data (read unscaled for memmap)."""
    bzero = header.get("BZERO", 0)
    bscale = header.get("BSCALE", 1)
    if bzero == 2**31 and bscale == 1:
        return raw.astype(np.int32).view(np.uint32) ^ np.uint32(0x80000000)
    return (raw.astype(np.int64) * bscale + bzero).astype(np.uint32)


class CoaddFile:
    """Lazy reader of one healpix coadd file.

    The file is memory-mapped; nothing but headers is read until a method asks
    for rows. Use as a context manager, or call :meth:`close`.

    Parameters
    ----------
    path : str or Path
        The coadd file.

    Raises
    ------
    DR1FormatError
        If the file is missing, not FITS, truncated, lacks an HDU, or its HDU
        shapes disagree with its FIBERMAP.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        self._hdul = self._stack.enter_context(
            open_fits(self.path, REQUIRED_HDUS, what="healpix coadd file")
        )
        try:
            self._validate()
        except BaseException:
            self.close()
            raise

    def _validate(self) -> None:
        fm = self._hdul["FIBERMAP"]
        require_columns(self.path, fm, ["TARGETID"])
        self.nspec = int(fm.header["NAXIS2"])
        self.nwave: dict[str, int] = {}
        for arm in ARM_NAMES:
            hw = self._hdul[f"{arm}_WAVELENGTH"].header
            nwave = int(hw.get("NAXIS1", 0))
            self.nwave[arm] = nwave
            for name, shape in (
                ("FLUX", (self.nspec, nwave)),
                ("IVAR", (self.nspec, nwave)),
                ("MASK", (self.nspec, nwave)),
                ("RESOLUTION", (self.nspec, NDIAG, nwave)),
            ):
                hdu = self._hdul[f"{arm}_{name}"]
                if tuple(hdu.shape) != shape:
                    raise DR1FormatError(
                        self.path,
                        f"data shape {tuple(hdu.shape)} does not match FIBERMAP and "
                        f"{arm}_WAVELENGTH, expected {shape}",
                        hdu=f"{arm}_{name}",
                    )

    def close(self) -> None:
        """Close the file."""
        self._stack.close()

    def __enter__(self) -> CoaddFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def header(self) -> fits.Header:
        """Primary header (HPXPIXEL, SURVEY, PROGRAM, ...)."""
        return self._hdul[0].header

    @property
    def targetids(self) -> np.ndarray:
        """TARGETID of every row (reads one column)."""
        return np.asarray(self._hdul["FIBERMAP"].data["TARGETID"]).astype(np.int64)

    def rows_of(self, targetids: Iterable[int]) -> np.ndarray:
        """Row index of each TARGETID, in the order given.

        Raises
        ------
        KeyError
            If a TARGETID is not in this file.
        """
        want = np.asarray(list(targetids), dtype=np.int64)
        have = self.targetids
        order = np.argsort(have, kind="stable")
        pos = np.searchsorted(have, want, sorter=order)
        pos = np.clip(pos, 0, len(have) - 1) if len(have) else pos
        rows = order[pos] if len(have) else np.zeros(0, dtype=np.int64)
        missing = want[(len(have) == 0) | (have[rows] != want)] if len(want) else want
        if len(missing):
            raise KeyError(f"TARGETID(s) {missing[:10].tolist()} not in {self.path}")
        return rows

    def fibermap(self, rows: np.ndarray | None = None) -> Table:
        """FIBERMAP rows (all when ``rows`` is None)."""
        return read_table(self.path, "FIBERMAP", rows=rows, hdul=self._hdul)

    def exp_fibermap(self, targetids: Iterable[int] | None = None) -> Table | None:
        """EXP_FIBERMAP rows of the given TARGETIDs (all when None); None if absent."""
        if "EXP_FIBERMAP" not in [h.name for h in self._hdul]:
            return None
        if targetids is None:
            return read_table(self.path, "EXP_FIBERMAP", hdul=self._hdul)
        tid = np.asarray(self._hdul["EXP_FIBERMAP"].data["TARGETID"])
        rows = np.flatnonzero(np.isin(tid, np.asarray(list(targetids), dtype=np.int64)))
        return read_table(self.path, "EXP_FIBERMAP", rows=rows, hdul=self._hdul)

    def scores(self, rows: np.ndarray | None = None) -> Table | None:
        """SCORES rows; None if the HDU is absent."""
        if "SCORES" not in [h.name for h in self._hdul]:
            return None
        return read_table(self.path, "SCORES", rows=rows, hdul=self._hdul)

    def _image_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        hdu = self._hdul[name]
        try:
            if len(rows) == 0:
                return np.zeros((0, *hdu.shape[1:]), dtype=hdu.data.dtype.newbyteorder("="))
            if isinstance(hdu, fits.CompImageHDU):
                lo, hi = int(rows.min()), int(rows.max()) + 1
                block = np.asarray(hdu.section[lo:hi])[rows - lo]
                return _unscale(block, hdu.header)
            # Memory-mapped: fancy indexing copies only the requested rows.
            out = np.asarray(hdu.data[rows])
            if "BZERO" in hdu.header or "BSCALE" in hdu.header:
                return _unscale(out, hdu.header)
            return out.astype(out.dtype.newbyteorder("="))
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise DR1FormatError(self.path, f"cannot read image rows ({exc})", hdu=name) from exc

    def read(
        self,
        targetids: Sequence[int] | None = None,
        *,
        rows: np.ndarray | None = None,
        arms: str = "BRZ",
        resolution: bool = True,
    ) -> CoaddSpectra:
        """Read spectra of selected TARGETIDs (or rows) without loading whole arrays.

        Parameters
        ----------
        targetids : sequence of int, optional
            TARGETIDs to read, returned in this order.
        rows : ndarray of int, optional
            Row indices instead of TARGETIDs. All rows when both are None.
        arms : str
            Arms to read, any of ``"BRZ"``.
        resolution : bool
            Also read the resolution matrices (11 x nwave float32 per spectrum).

        Returns
        -------
        CoaddSpectra
        """
        if targetids is not None:
            rows = self.rows_of(targetids)
        elif rows is None:
            rows = np.arange(self.nspec)
        rows = np.asarray(rows, dtype=np.int64)
        out_arms = {}
        for arm in arms.upper():
            wave = np.asarray(self._hdul[f"{arm}_WAVELENGTH"].data, dtype=np.float64)
            out_arms[arm] = ArmSpectra(
                wave=wave,
                flux=self._image_rows(f"{arm}_FLUX", rows),
                ivar=self._image_rows(f"{arm}_IVAR", rows),
                mask=self._image_rows(f"{arm}_MASK", rows),
                resolution=self._image_rows(f"{arm}_RESOLUTION", rows) if resolution else None,
            )
        fibermap = self.fibermap(rows)
        meta = {k: self.header[k] for k in ("HPXPIXEL", "SURVEY", "PROGRAM") if k in self.header}
        return CoaddSpectra(
            fibermap=fibermap,
            arms=out_arms,
            exp_fibermap=self.exp_fibermap(fibermap["TARGETID"]),
            scores=self.scores(rows),
            meta=meta,
        )


def read_coadd(
    path: str | Path,
    targetids: Sequence[int] | None = None,
    *,
    arms: str = "BRZ",
    resolution: bool = True,
) -> CoaddSpectra:
    """Read a healpix coadd file (or the rows of some TARGETIDs); see :class:`CoaddFile`."""
    with CoaddFile(path) as f:
        return f.read(targetids, arms=arms, resolution=resolution)

"""Selected spectra of a DR1 coadd file, read with fitsio: only the rows and HDUs asked for.

For batch work over many coadd files (the anomaly preparation reads every QSO of
DR1): FIBERMAP's TARGETID column and the selected rows of FLUX and IVAR, never
MASK (in DR1, ivar = 0 marks a masked pixel).
"""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np

from .coadd import ArmSpectra
from .errors import DR1FormatError

__all__ = ["read_selected_arms"]

#: Arm wavelength grids by (arm, nwave): fixed per arm in DR1, read once per process.
_WAVE_CACHE: dict[tuple[str, int], np.ndarray] = {}
#: Selected rows closer than this are read as one block (fewer, larger reads).
_ROW_GAP = 16


def _row_blocks(rows: np.ndarray) -> list[tuple[int, int]]:
    """Half-open row ranges covering ascending ``rows``, merging gaps < ``_ROW_GAP``."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) >= _ROW_GAP)
    starts = np.r_[rows[0], rows[breaks + 1]]
    ends = np.r_[rows[breaks], rows[-1]] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def read_selected_arms(
    path: str | Path, targetid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, ArmSpectra]]:
    """FLUX and IVAR of the selected targets of one coadd file, per arm, with fitsio.

    Only what preparation needs is read: FIBERMAP's TARGETID column, the rows of the
    selected targets in the six FLUX and IVAR HDUs (in blocks of nearby rows), and
    each arm's WAVELENGTH once per process. MASK is not read: in DR1, ivar = 0 marks a
    masked pixel (``mask`` is None in the result). Through astropy, parsing the
    FIBERMAP's column definitions alone cost ~40 ms a file, more than preparing its
    spectra; cfitsio reads one column directly.

    Parameters
    ----------
    path : str or Path
        The coadd file.
    targetid : ndarray
        Selected TARGETIDs.

    Returns
    -------
    present : ndarray of bool
        Which of ``targetid`` are in the file.
    order : ndarray of int
        Indices into ``targetid[present]`` in file row order (the rows of ``arms``).
    arms : dict
        ``B``, ``R``, ``Z`` -> :class:`~desilab.desi.ArmSpectra` (``mask`` None).

    Raises
    ------
    DR1FormatError
        A missing HDU or column, or shapes that disagree with the FIBERMAP.
    """
    path = Path(path)
    hdu = "FIBERMAP"
    try:
        with fitsio.FITS(str(path)) as f:
            have = np.asarray(f["FIBERMAP"].read_column("TARGETID"), dtype=np.int64)
            nspec = len(have)
            sorter = np.argsort(have, kind="stable")
            pos = np.clip(np.searchsorted(have, targetid, sorter=sorter), 0, max(nspec - 1, 0))
            rows_all = sorter[pos] if nspec else np.zeros(len(targetid), dtype=np.int64)
            present = (have[rows_all] == targetid) if nspec else np.zeros(len(targetid), bool)
            rows = rows_all[present]
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
            blocks = _row_blocks(rows)
            arms = {}
            for arm in ("B", "R", "Z"):
                hdu = f"{arm}_WAVELENGTH"
                nwave = int(f[hdu].get_dims()[0])
                key = (arm, nwave)
                if key not in _WAVE_CACHE:
                    _WAVE_CACHE[key] = np.asarray(f[hdu].read(), dtype=np.float64)
                data = {}
                for name in ("FLUX", "IVAR"):
                    hdu = f"{arm}_{name}"
                    h = f[hdu]
                    if tuple(h.get_dims()) != (nspec, nwave):
                        raise DR1FormatError(
                            path,
                            f"data shape {tuple(h.get_dims())} does not match FIBERMAP and "
                            f"{arm}_WAVELENGTH, expected {(nspec, nwave)}",
                            hdu=hdu,
                        )
                    parts = [h[a:b, :][rows[(rows >= a) & (rows < b)] - a] for a, b in blocks]
                    data[name] = (
                        np.concatenate(parts).astype(np.float32, copy=False)
                        if parts
                        else np.zeros((0, nwave), np.float32)
                    )
                arms[arm] = ArmSpectra(_WAVE_CACHE[key], data["FLUX"], data["IVAR"], None)
    except (OSError, ValueError, KeyError) as exc:
        raise DR1FormatError(path, f"cannot read it ({exc})", hdu=hdu) from exc
    return present, order, arms

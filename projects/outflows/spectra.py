"""QSO spectra for the outflow fits: the three DESI arms joined on one grid, de-reddened.

The fits work on one spectrum per QSO on the common 0.8 Angstrom grid of the
DR1 coadds (3600-9824 Angstrom, where the b, r and z arms are slices). Where
two arms overlap, the pixels are combined with inverse-variance weights, as
``desispec.coaddition.coadd_cameras`` does. Galactic extinction is removed with
the zpix ``EBV`` and the Cardelli, Clayton & Mathis (1989) law (R_V = 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from desilab.desi import ARMS, CoaddFile, CoaddSpectra
from desilab.desi.extinction import ccm89

__all__ = [
    "GRID_START",
    "GRID_STEP",
    "QSOSpectra",
    "arm_mismatch",
    "ccm89",
    "combine_arms",
    "full_grid",
    "lsf_sigma",
    "read_qso_spectra",
]

GRID_START = 3600.0
GRID_STEP = 0.8


def full_grid() -> np.ndarray:
    """The union wavelength grid of the three arms (vacuum Angstrom)."""
    stop = max(hi for _, hi, _ in ARMS.values())
    n = int(round((stop - GRID_START) / GRID_STEP)) + 1
    return np.round(GRID_START + GRID_STEP * np.arange(n), 1)


@dataclass
class QSOSpectra:
    """Spectra of several QSOs on the common grid.

    Attributes
    ----------
    targetid : ndarray (n,)
    z : ndarray (n,)
        Redshifts used for the rest frame.
    wave : ndarray (nwave,)
        Observed vacuum wavelength, Angstrom.
    flux, ivar : ndarray (n, nwave)
        Flux (1e-17 erg/s/cm2/Angstrom, Galactic extinction removed when ``ebv``
        was applied) and its inverse variance; ivar = 0 marks unusable pixels
        (masked, NaN, not covered).
    lsf : ndarray (n, nwave) or None
        Line-spread-function Gaussian sigma in Angstrom, from the resolution matrix.
    ebv : ndarray (n,)
        Galactic E(B-V) that was removed.
    arm_mismatch : ndarray of bool (n,)
        The arms disagree where they overlap (a flux-calibration jump).
    """

    targetid: np.ndarray
    z: np.ndarray
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    lsf: np.ndarray | None = None
    ebv: np.ndarray | None = None
    arm_mismatch: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targetid)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(wave, flux, ivar)`` of spectrum ``i``."""
        return self.wave, self.flux[i], self.ivar[i]


def lsf_sigma(resolution: np.ndarray) -> np.ndarray:
    """Gaussian-equivalent LSF sigma (pixels) from resolution-matrix diagonals.

    Parameters
    ----------
    resolution : ndarray (nspec, 11, nwave)
        DR1 diagonals, offsets ``5 - arange(11)``.

    Returns
    -------
    ndarray (nspec, nwave)
        Square root of the second moment of each column of the matrix.
    """
    ndiag = resolution.shape[1]
    offsets = (ndiag // 2 - np.arange(ndiag)).astype(np.float32)
    r = np.clip(resolution, 0.0, None)
    norm = np.maximum(r.sum(axis=1), 1e-12)
    mean = np.einsum("k,nkw->nw", offsets, r) / norm
    second = np.einsum("k,nkw->nw", offsets**2, r) / norm
    return np.sqrt(np.clip(second - mean**2, 0.0, None))


def arm_mismatch(
    spectra: CoaddSpectra, *, min_ratio: float = 0.1, nsigma: float = 5.0
) -> np.ndarray:
    """Spectra whose adjacent arms disagree in their overlap (b/r, r/z).

    The inverse-variance mean flux of each arm over the overlap is compared; a
    spectrum is flagged when the two differ by more than ``min_ratio`` of their
    mean and by more than ``nsigma`` standard errors.
    """
    names = [a for a in ("B", "R", "Z") if a in spectra.arms]
    out = np.zeros(len(spectra), dtype=bool)
    for a, b in zip(names[:-1], names[1:], strict=True):
        wa, wb = spectra.arms[a].wave, spectra.arms[b].wave
        lo, hi = max(wa[0], wb[0]), min(wa[-1], wb[-1])
        if hi <= lo:
            continue
        means = []
        for arm, w in ((spectra.arms[a], wa), (spectra.arms[b], wb)):
            sel = (w >= lo) & (w <= hi)
            iv = np.where(arm.good()[:, sel] & np.isfinite(arm.flux[:, sel]), arm.ivar[:, sel], 0.0)
            f = np.where(iv > 0, arm.flux[:, sel], 0.0)
            wsum = iv.sum(axis=1)
            means.append((np.divide((f * iv).sum(axis=1), wsum, out=np.zeros(len(f)),
                                    where=wsum > 0), wsum))  # fmt: skip
        (ma, wa_), (mb, wb_) = means
        ok = (wa_ > 0) & (wb_ > 0)
        err = np.sqrt(np.divide(1.0, wa_, out=np.full(len(ma), np.inf), where=ok)
                      + np.divide(1.0, wb_, out=np.full(len(ma), np.inf), where=ok))  # fmt: skip
        diff = np.abs(ma - mb)
        scale = 0.5 * np.abs(ma + mb)
        out |= ok & (diff > min_ratio * scale) & (diff > nsigma * err)
    return out


def combine_arms(
    spectra: CoaddSpectra,
    z: np.ndarray,
    ebv: np.ndarray | None = None,
    *,
    with_lsf: bool = True,
) -> QSOSpectra:
    """Join the arms of coadded spectra on the common grid.

    Parameters
    ----------
    spectra : CoaddSpectra
        Rows of a healpix coadd (all three arms read).
    z : ndarray (n,)
        Redshift of each row.
    ebv : ndarray (n,), optional
        Galactic E(B-V) to remove (CCM89, R_V = 3.1); none removed when omitted.
    with_lsf : bool
        Also build the LSF sigma (needs the RESOLUTION HDUs to have been read).

    Returns
    -------
    QSOSpectra
        NaN or infinite fluxes and masked pixels get ivar = 0, so downstream code
        sees them as missing rather than crashing on them.
    """
    wave = full_grid()
    n = len(spectra)
    num = np.zeros((n, len(wave)))
    wsum = np.zeros((n, len(wave)))
    lsf = np.zeros((n, len(wave))) if with_lsf else None
    lsf_w = np.zeros((n, len(wave))) if with_lsf else None
    for arm in spectra.arms.values():
        i0 = int(round((arm.wave[0] - GRID_START) / GRID_STEP))
        sl = slice(i0, i0 + len(arm.wave))
        if not np.allclose(wave[sl], arm.wave, atol=0.01):
            raise ValueError("arm wavelengths are not on the DR1 0.8 Angstrom grid")
        flux = np.asarray(arm.flux, dtype=np.float64)
        ivar = np.where(arm.good() & np.isfinite(flux), arm.ivar, 0.0).astype(np.float64)
        ivar[~np.isfinite(ivar)] = 0.0
        flux = np.where(ivar > 0, flux, 0.0)
        num[:, sl] += flux * ivar
        wsum[:, sl] += ivar
        if with_lsf and arm.resolution is not None:
            sig = lsf_sigma(arm.resolution) * GRID_STEP
            # Where arms overlap the LSF is averaged with the same weights as the flux.
            w = np.maximum(ivar, 1e-30)
            lsf[:, sl] += sig * w
            lsf_w[:, sl] += w
    flux = np.divide(num, wsum, out=np.zeros_like(num), where=wsum > 0)
    ivar = wsum
    if with_lsf:
        lsf = np.divide(lsf, lsf_w, out=np.full_like(lsf, np.nan), where=lsf_w > 0)
    ebv_arr = np.zeros(n) if ebv is None else np.nan_to_num(np.asarray(ebv, dtype=np.float64))
    if np.any(ebv_arr > 0):
        a_lam = 3.1 * ccm89(wave)
        scale = 10 ** (0.4 * ebv_arr[:, None] * a_lam[None, :])
        flux = flux * scale
        ivar = ivar / scale**2
    return QSOSpectra(
        targetid=np.asarray(spectra.targetid, dtype=np.int64),
        z=np.asarray(z, dtype=np.float64),
        wave=wave,
        flux=flux,
        ivar=ivar,
        lsf=lsf,
        ebv=ebv_arr,
        arm_mismatch=arm_mismatch(spectra),
    )


def read_qso_spectra(
    coadd_path: str,
    targetids: np.ndarray,
    z: np.ndarray,
    ebv: np.ndarray | None = None,
    *,
    with_lsf: bool = True,
) -> tuple[QSOSpectra, np.ndarray]:
    """Read the QSOs of one coadd file that it holds.

    Parameters
    ----------
    coadd_path : str
        A ``coadd-{survey}-{program}-{pix}.fits`` file.
    targetids, z, ebv : ndarray (n,)
        The wanted QSOs, their redshifts and Galactic E(B-V).
    with_lsf : bool
        Read the resolution matrices to get the LSF.

    Returns
    -------
    spectra : QSOSpectra
        Those found, in the order given.
    found : ndarray of bool (n,)
        Which TARGETIDs the file holds (a mock writes spectra of a subset only).
    """
    targetids = np.asarray(targetids, dtype=np.int64)
    with CoaddFile(coadd_path) as f:
        found = np.isin(targetids, f.targetids)
        coadd = f.read(targetids[found], resolution=with_lsf)
    sel_ebv = None if ebv is None else np.asarray(ebv)[found]
    return combine_arms(coadd, np.asarray(z)[found], sel_ebv, with_lsf=with_lsf), found

"""Spectra to features: combine the arms, move to the rest frame, rebin, normalise.

Everything here is vectorised over spectra: a batch of ``n`` coadded spectra is
turned into ``n`` rows of a common rest-frame log-wavelength grid with a weight
(inverse variance of the normalised flux) per bin. A weight of 0 means "no
data": no coverage at that redshift, masked pixels, or ivar = 0.

The three DR1 arms sample one global linear grid (3600 + 0.8 i Angstrom), so
combining them is index arithmetic; in the b/r and r/z overlaps the fluxes are
averaged with inverse-variance weights. Rest-frame bins are wider than the
observed pixels (the default bin is ~415 km/s against 0.8 A ~ 25-65 km/s), so
each observed pixel is assigned to the bin holding its rest wavelength and a
bin's flux is the inverse-variance weighted mean of its pixels: that is the
maximum-likelihood estimate of the bin's mean flux, and its weight is the sum
of the pixels' ivar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from astropy import units as u

__all__ = [
    "OBS_START",
    "OBS_STEP",
    "ObservedSpectra",
    "PreparedSpectra",
    "RestGrid",
    "combine_arms",
    "normalise",
    "prepare_spectra",
    "rebin_rest",
]

#: The global observed-frame grid that every DR1 arm is a slice of (Angstrom).
OBS_START = 3600.0
OBS_STEP = 0.8


def _angstrom(value: float | u.Quantity) -> float:
    return float(u.Quantity(value, u.AA).to_value(u.AA, equivalencies=u.spectral()))


@dataclass(frozen=True)
class RestGrid:
    """A rest-frame grid uniform in ln(wavelength).

    Parameters
    ----------
    lam_min, lam_max : float or Quantity
        Lower edge of the first bin and upper edge of the last bin (Angstrom
        when plain numbers).
    n_bins : int
        Number of bins.
    """

    lam_min: float = 900.0
    lam_max: float = 7200.0
    n_bins: int = 1500

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam_min", _angstrom(self.lam_min))
        object.__setattr__(self, "lam_max", _angstrom(self.lam_max))
        if not 0 < self.lam_min < self.lam_max or self.n_bins < 2:
            raise ValueError(
                f"need 0 < lam_min < lam_max and n_bins >= 2, got {self.lam_min}, "
                f"{self.lam_max}, {self.n_bins}"
            )

    @property
    def dloglam(self) -> float:
        """Bin width in natural log of wavelength."""
        return float(np.log(self.lam_max / self.lam_min) / self.n_bins)

    @property
    def edges(self) -> u.Quantity:
        """Bin edges, ``n_bins + 1`` values."""
        return np.exp(np.log(self.lam_min) + self.dloglam * np.arange(self.n_bins + 1)) * u.AA

    @property
    def centers(self) -> u.Quantity:
        """Geometric bin centres."""
        return np.exp(np.log(self.lam_min) + self.dloglam * (np.arange(self.n_bins) + 0.5)) * u.AA

    def bin_of(self, lam_rest: float | np.ndarray | u.Quantity) -> np.ndarray:
        """Bin index of rest wavelengths; -1 outside the grid."""
        lam = np.asarray(u.Quantity(lam_rest, u.AA).to_value(u.AA), dtype=np.float64)
        idx = np.floor(np.log(lam / self.lam_min) / self.dloglam).astype(np.int64)
        return np.where((idx >= 0) & (idx < self.n_bins), idx, -1)

    def to_dict(self) -> dict:
        """JSON-serialisable form (Angstrom)."""
        return asdict(self)


@dataclass
class ObservedSpectra:
    """Arm-combined spectra on the global observed grid.

    Attributes
    ----------
    wave : ndarray, shape (nwave,)
        Observed vacuum wavelength, Angstrom.
    flux, ivar : ndarray, shape (n, nwave), float32
        Flux (1e-17 erg/s/cm2/A) and its inverse variance; ``ivar == 0`` where no
        arm has a good pixel.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray


@dataclass
class PreparedSpectra:
    """Spectra on a :class:`RestGrid`, normalised.

    Attributes
    ----------
    flux : ndarray, shape (n, n_bins), float32
        Normalised flux (0 where ``weight == 0``).
    weight : ndarray, shape (n, n_bins), float32
        Inverse variance of ``flux``; 0 means no data.
    norm : ndarray, shape (n,), float64
        Observed-frame flux (1e-17 erg/s/cm2/A) that ``flux == 1`` stands for.
    n_good : ndarray, shape (n,), int32
        Bins with data.
    """

    flux: np.ndarray
    weight: np.ndarray
    norm: np.ndarray
    n_good: np.ndarray

    def __len__(self) -> int:
        return len(self.flux)


def _arm_offset(arm: str, wave: np.ndarray) -> int:
    """First index of an arm on the global observed grid; refuses other grids."""
    offset = int(round((wave[0] - OBS_START) / OBS_STEP))
    expected = OBS_START + OBS_STEP * (offset + np.arange(len(wave)))
    if offset < 0 or not np.allclose(wave, expected, atol=0.01, rtol=0):
        raise ValueError(
            f"arm {arm}: wavelengths {wave[0]:.2f}..{wave[-1]:.2f} are not on the DR1 grid "
            f"{OBS_START} + {OBS_STEP} i Angstrom; resample the spectra onto it first"
        )
    return offset


def _good_pixels(arm: object, flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """ivar > 0 (NaN compares False), finite flux, and mask == 0 where a mask is given.

    DR1's contract is that ivar = 0 marks a masked pixel, so readers may pass
    ``mask=None`` and skip the (tile-compressed, costly) MASK HDUs.
    """
    good = (ivar > 0) & np.isfinite(flux)
    mask = getattr(arm, "mask", None)
    if mask is not None:
        good &= np.asarray(mask) == 0
    return good


def _arm_sums(
    arms: Mapping[str, object], offsets: dict[str, int], nwave: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sums over arms of flux*ivar and of ivar on the global grid, (n, nwave + 1) float32
    with a last column of zeros (see :func:`_bin_sums`)."""
    n = len(next(iter(arms.values())).flux)
    fw = np.zeros((n, nwave + 1), dtype=np.float32)
    w = np.zeros((n, nwave + 1), dtype=np.float32)
    for name, a in arms.items():
        flux = np.asarray(a.flux, dtype=np.float32)
        ivar = np.asarray(a.ivar, dtype=np.float32)
        good = _good_pixels(a, flux, ivar)
        sl = slice(offsets[name], offsets[name] + flux.shape[1])
        # In place, only where good: bad pixels (NaN flux included) are never touched.
        np.add(w[:, sl], ivar, out=w[:, sl], where=good)
        np.add(fw[:, sl], flux * ivar, out=fw[:, sl], where=good)
    return fw, w


def combine_arms(arms: Mapping[str, object]) -> ObservedSpectra:
    """Combine b, r, z arms into one spectrum per row (inverse-variance mean in overlaps).

    Parameters
    ----------
    arms : mapping
        Arm name -> object with ``wave``, ``flux``, ``ivar`` and ``mask`` attributes
        (:class:`desilab.desi.ArmSpectra`). Pixels with ``mask != 0`` (when
        ``mask`` is not None) or ``ivar <= 0`` or a non-finite flux get no weight.

    Returns
    -------
    ObservedSpectra
    """
    offsets = {name: _arm_offset(name, np.asarray(a.wave)) for name, a in arms.items()}
    n = len(next(iter(arms.values())).flux)
    nwave = max(offsets[k] + len(a.wave) for k, a in arms.items())
    num = np.zeros((n, nwave), dtype=np.float32)
    den = np.zeros((n, nwave), dtype=np.float32)
    for name, a in arms.items():
        flux = np.asarray(a.flux, dtype=np.float32)
        w = np.array(a.ivar, dtype=np.float32)
        w[~_good_pixels(a, flux, w)] = 0
        sl = slice(offsets[name], offsets[name] + len(a.wave))
        num[:, sl] += np.where(w > 0, flux, np.float32(0)) * w
        den[:, sl] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(num, den, out=num, where=den > 0)
    wave = OBS_START + OBS_STEP * np.arange(nwave)
    return ObservedSpectra(wave=wave, flux=num, ivar=den)


def _bin_sums(
    a: np.ndarray | None, fw: np.ndarray, w: np.ndarray, z: np.ndarray, grid: RestGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Per rest bin, the sums of ``fw`` and ``w`` over the observed pixels in it.

    ``a`` = ``ln(lam / lam_min) / dloglam`` of the observed pixels (increasing), or
    None for the global DR1 grid (``OBS_START + OBS_STEP * j``); ``fw`` and ``w``
    are (n, nwave + 1) float32 with a last column of zeros.

    Pixel j of row i is in rest bin ``floor(a_j - s_i)`` with ``s = ln(1+z)/dloglam``;
    as ``a`` increases, the pixels of bin k are the contiguous run starting at
    ``searchsorted(a, k + s_i)``. One ``np.add.reduceat`` over the flattened rows
    sums every run of every row in one pass over the pixels, in float32 (a bin holds
    ~10-20 pixels, so float32 sums keep ~1e-7 relative precision). The run after a
    row's last bin (to the next row's first cut) is computed and discarded; the
    zero column keeps every index inside the array.
    """
    n, nb = len(z), grid.n_bins
    stride = fw.shape[1]
    s = np.log1p(z) / grid.dloglam
    if a is None:
        # The global DR1 grid is uniform in wavelength, so the first pixel at or above
        # an edge is a ceil(): the same cuts as searchsorted, without the search.
        edges = grid.lam_min * np.exp((np.arange(nb + 1)[None, :] + s[:, None]) * grid.dloglam)
        cuts = np.clip(np.ceil((edges - OBS_START) / OBS_STEP), 0, stride - 1).astype(np.int64)
    else:
        cuts = np.searchsorted(a, np.arange(nb + 1)[None, :] + s[:, None], side="left")
    idx = (cuts + (np.arange(n) * stride)[:, None]).ravel()
    sum_w = np.add.reduceat(w.ravel(), idx).reshape(n, nb + 1)[:, :nb]
    sum_fw = np.add.reduceat(fw.ravel(), idx).reshape(n, nb + 1)[:, :nb]
    # reduceat returns the element at the index for an empty run: no pixel, no weight.
    empty = (np.diff(cuts, axis=1) == 0) | ~(sum_w > 0)
    sum_w[empty] = 0
    sum_fw[empty] = 0
    return sum_fw, sum_w


def rebin_rest(
    wave_obs: np.ndarray | u.Quantity,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    grid: RestGrid,
) -> tuple[np.ndarray, np.ndarray]:
    """Move observed spectra to the rest frame and bin them on ``grid``.

    Parameters
    ----------
    wave_obs : ndarray or Quantity, shape (nwave,)
        Observed wavelengths shared by all rows (Angstrom), increasing.
    flux, ivar : ndarray, shape (n, nwave)
        Observed flux and inverse variance (0 = no data).
    z : ndarray, shape (n,)
        Redshifts.
    grid : RestGrid

    Returns
    -------
    flux, weight : ndarray, shape (n, n_bins), float32
        Inverse-variance weighted mean flux per rest bin, and the summed ivar.
    """
    lam = np.asarray(u.Quantity(wave_obs, u.AA).to_value(u.AA), dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float32)
    n, nwave = ivar.shape if ivar.ndim == 2 else (len(z), len(lam))
    w = np.zeros((n, nwave + 1), dtype=np.float32)
    fw = np.zeros((n, nwave + 1), dtype=np.float32)
    good = ivar > 0
    np.copyto(w[:, :nwave], ivar, where=good)
    np.multiply(np.asarray(flux, dtype=np.float32), w[:, :nwave], out=fw[:, :nwave], where=good)
    return _ratio(*_bin_sums(_pixel_coordinate(lam, grid), fw, w, z, grid))


def _pixel_coordinate(lam: np.ndarray, grid: RestGrid) -> np.ndarray:
    return np.log(lam / grid.lam_min) / grid.dloglam


def _ratio(sum_fw: np.ndarray, sum_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean flux and weight per bin (0 where the bin has no weight)."""
    flux = np.zeros_like(sum_w)
    np.divide(sum_fw, sum_w, out=flux, where=sum_w > 0)
    return flux, sum_w


def normalise(flux: np.ndarray, weight: np.ndarray, *, min_bins: int = 50) -> PreparedSpectra:
    """Scale each spectrum to unit mean flux over the bins it covers.

    The mean (not the median) keeps this a single vectorised pass; the model fits a
    free amplitude per spectrum anyway, so the choice only sets the flux scale.
    Spectra with fewer than ``min_bins`` covered bins, or a mean flux <= 0, get
    all-zero weights (``n_good`` is set to 0) so that callers can drop them.
    """
    good = weight > 0
    n_good = good.sum(axis=1).astype(np.int32)
    total = np.where(good, flux, 0).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(n_good > 0, total / np.maximum(n_good, 1), 0.0)
    ok = (n_good >= min_bins) & (norm > 0) & np.isfinite(norm)
    scale = np.where(ok, norm, 1.0)
    f = np.where(good & ok[:, None], flux / scale[:, None], 0).astype(np.float32)
    w = np.where(good & ok[:, None], weight * (scale**2)[:, None], 0).astype(np.float32)
    return PreparedSpectra(flux=f, weight=w, norm=np.where(ok, norm, 0.0), n_good=n_good * ok)


def prepare_spectra(
    arms: Mapping[str, object],
    z: np.ndarray,
    grid: RestGrid,
    *,
    min_bins: int = 50,
    chunk: int = 256,
) -> PreparedSpectra:
    """Combine arms, rebin to the rest frame and normalise, for a batch of spectra.

    Parameters
    ----------
    arms : mapping
        Arm name -> :class:`desilab.desi.ArmSpectra` (any object with ``wave``,
        ``flux``, ``ivar``, ``mask``).
    z : ndarray, shape (n,)
        Redshift of each spectrum.
    grid : RestGrid
    min_bins : int
        Spectra covering fewer rest bins are flagged (``n_good == 0``).
    chunk : int
        Rows processed at a time (memory and cache use only).

    Returns
    -------
    PreparedSpectra
    """
    z = np.asarray(z, dtype=np.float64)
    parts = []
    # The combined spectrum's flux is (sum of flux*ivar) / (sum of ivar) per pixel and a
    # rest bin's flux the ivar-weighted mean of its pixels, so the bin sums can be taken
    # straight from the arms' flux*ivar and ivar: no per-pixel division and
    # re-multiplication (same result as combine_arms + rebin_rest, up to rounding).
    # Chunks of rows keep the arrays in cache.
    offsets = {name: _arm_offset(name, np.asarray(a.wave)) for name, a in arms.items()}
    nwave = max((offsets[k] + len(a.wave) for k, a in arms.items()), default=0)
    for start in range(0, len(z), chunk):
        sl = slice(start, start + chunk)
        fw, w = _arm_sums({k: _RowSlice(a, sl) for k, a in arms.items()}, offsets, nwave)
        flux, weight = _ratio(*_bin_sums(None, fw, w, z[sl], grid))
        parts.append(normalise(flux, weight, min_bins=min_bins))
    if not parts:
        nb = grid.n_bins
        empty = np.zeros((0, nb), dtype=np.float32)
        return PreparedSpectra(empty, empty.copy(), np.zeros(0), np.zeros(0, dtype=np.int32))
    return PreparedSpectra(
        flux=np.concatenate([p.flux for p in parts]),
        weight=np.concatenate([p.weight for p in parts]),
        norm=np.concatenate([p.norm for p in parts]),
        n_good=np.concatenate([p.n_good for p in parts]),
    )


class _RowSlice:
    """Rows ``sl`` of an arm, without copying until used."""

    def __init__(self, arm: object, sl: slice) -> None:
        self.wave = arm.wave
        self.flux = arm.flux[sl]
        self.ivar = arm.ivar[sl]
        self.mask = None if arm.mask is None else arm.mask[sl]

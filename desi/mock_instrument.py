"""A DESI-like instrument for the mock: grids, throughput, sky, resolution, noise, photometry.

The numbers are those of the Mayall/DESI system to the level that matters for
a realistic S/N: ~8.66 m2 collecting area, 1.5 arcsec fibers, per-arm
throughput peaking near 0.5 minus the fiber aperture loss, dark and
moon-lit sky continua with [OI], Na D and OH emission lines, ~3 e- read noise,
and a Gaussian line-spread function with R ~ 2000-5500.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import speclite.filters

from .datamodel import ARMS, NDIAG, wavelength
from .extinction import ccm89

H_C = 1.98644586e-8  # erg Angstrom
C_KMS = 299792.458
AREA_CM2 = 86_590.0  # Mayall effective collecting area
FIBER_AREA_ARCSEC2 = 1.77  # 1.5 arcsec diameter
READ_NOISE2 = 4 * 3.0**2  # e-^2 per extracted pixel: ~4 CCD pixels of 3 e- each
PIXEL = 0.8  # Angstrom
PSF_FIBER_FRACTION = 0.78  # point source in 1.1 arcsec seeing

#: Photometry bands (speclite names) in the order FLUX_G, R, Z, W1, W2.
BANDS = ("decam2014-g", "decam2014-r", "decam2014-z", "wise2010-W1", "wise2010-W2")
BAND_KEYS = ("G", "R", "Z", "W1", "W2")
#: 1-sigma flux errors (nanomaggy) of Legacy Surveys DR9 photometry at typical depth.
PHOT_SIGMA = np.array([0.06, 0.09, 0.25, 1.0, 2.2])
#: Galactic extinction coefficients A_band / E(B-V) used by DR9 (MW_TRANSMISSION).
EXT_COEFF = np.array([3.214, 2.165, 1.211, 0.184, 0.113])

#: Strong night-sky lines (air Angstrom, relative intensity) converted to vacuum below.
_SKY_LINES_AIR = [
    (5577.34, 30.0), (5889.95, 6.0), (5895.92, 4.0), (6300.30, 12.0), (6363.78, 4.0),
    (6863.96, 6.0), (6923.22, 5.0), (7276.41, 6.0), (7316.28, 10.0), (7340.89, 10.0),
    (7369.25, 8.0), (7401.69, 6.0), (7750.64, 12.0), (7794.11, 12.0), (7821.50, 10.0),
    (7913.71, 14.0), (7993.33, 16.0), (8344.60, 22.0), (8399.17, 24.0), (8430.17, 18.0),
    (8465.36, 18.0), (8504.63, 14.0), (8761.31, 16.0), (8827.10, 26.0), (8885.85, 20.0),
    (8919.60, 16.0), (8958.09, 22.0), (8988.38, 12.0), (9001.35, 24.0), (9037.95, 14.0),
    (9375.96, 24.0), (9419.73, 30.0), (9439.67, 26.0), (9476.77, 22.0), (9502.80, 18.0),
    (9568.20, 16.0), (9607.50, 14.0), (9714.20, 18.0), (9792.10, 14.0),
]  # fmt: skip


def air_to_vacuum(air: np.ndarray) -> np.ndarray:
    """Air to vacuum wavelength (Angstrom), Morton (2000) refractive index."""
    air = np.asarray(air, dtype=np.float64)
    s2 = (1e4 / air) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return air * n


@lru_cache(maxsize=1)
def full_wavelength() -> np.ndarray:
    """Union grid 3600.0-9824.0 A at 0.8 A (7781 pixels), on which arms are slices."""
    return np.round(3600.0 + PIXEL * np.arange(7781), 1)


def arm_slice(arm: str) -> slice:
    """Slice of :func:`full_wavelength` that is ``arm``'s grid."""
    start, _, n = ARMS[arm]
    i0 = int(round((start - 3600.0) / PIXEL))
    return slice(i0, i0 + n)


def throughput(arm: str, wave: np.ndarray) -> np.ndarray:
    """Total throughput (atmosphere to CCD, excluding fiber aperture loss) of an arm."""
    centres = {
        "B": (4700.0, 1400.0, 0.46),
        "R": (6700.0, 1500.0, 0.55),
        "Z": (8600.0, 1700.0, 0.50),
    }
    c, w, peak = centres[arm]
    t = peak * np.exp(-0.5 * ((wave - c) / w) ** 4)
    if arm == "B":
        t *= 1 - np.exp(-(((wave - 3400.0) / 400.0).clip(0) ** 2))  # UV atmosphere + CCD QE
    if arm == "Z":
        t *= np.clip((10100.0 - wave) / 900.0, 0, 1) ** 0.5  # red CCD QE cut-off
    return t


def sky_lines(wave: np.ndarray) -> np.ndarray:
    """Night-sky emission lines alone, 1e-17 erg/(s cm2 A arcsec2)."""
    lines = np.zeros_like(wave, dtype=np.float64)
    vac = air_to_vacuum(np.array([w for w, _ in _SKY_LINES_AIR]))
    sig = 0.6
    for lam, amp in zip(vac, (a for _, a in _SKY_LINES_AIR), strict=True):
        # amp 30 ([OI] 5577, ~250 R) corresponds to ~150 (1e-17 erg/s/cm2/arcsec2).
        lines += 5.0 * amp / (np.sqrt(2 * np.pi) * sig) * np.exp(-0.5 * ((wave - lam) / sig) ** 2)
    return lines


def sky_surface_brightness(wave: np.ndarray, bright: bool) -> np.ndarray:
    """Night-sky surface brightness, 1e-17 erg/(s cm2 A arcsec2).

    Dark sky is ~22 mag/arcsec2 in V; bright (moon-lit, BGS) sky is ~2.5 mag
    brighter with a scattered-sunlight (bluer) continuum.
    """
    # Dark KPNO sky: ~22.0 mag/arcsec2 in g, ~21.1 in r, brighter in z (OH continuum).
    cont = 0.45 * (wave / 5500.0) ** 0.8 + 0.35 * (wave / 8500.0) ** 6
    if bright:
        # Moon-lit sky for BGS: scattered sunlight, ~2 mag brighter in g.
        cont = cont + 4.0 * (wave / 5000.0) ** -1.5 * np.exp(-((3500.0 / wave) ** 4))
    lines = sky_lines(wave)
    return cont + lines


@lru_cache(maxsize=3)
def _sky_arm(arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark sky, moon-lit sky and the sky-line part alone, on an arm's grid."""
    wave = wavelength(arm)
    dark = sky_surface_brightness(wave, False)
    return dark, sky_surface_brightness(wave, True), sky_lines(wave)


def lsf_sigma_pix(arm: str, wave: np.ndarray) -> np.ndarray:
    """Line-spread-function Gaussian sigma in pixels (R ~ 2000 at 3600 A to 5500 at 9800 A)."""
    start, stop, _ = ARMS[arm]
    x = (wave - start) / (stop - start)
    base = {"B": 1.05, "R": 0.98, "Z": 0.95}[arm]
    return base * (1.0 + 0.08 * (x - 0.5) ** 2)


def resolution_data(arm: str, fiber_scale: np.ndarray) -> np.ndarray:
    """Resolution-matrix diagonals (nspec, 11, nwave), float32, columns summing to 1.

    Parameters
    ----------
    arm : str
        'B', 'R' or 'Z'.
    fiber_scale : ndarray, shape (nspec,)
        Per-fiber multiplicative LSF width (fiber-to-fiber variation).
    """
    wave = wavelength(arm)
    offsets = (NDIAG // 2 - np.arange(NDIAG)).astype(np.float32)
    inv = 1.0 / (
        lsf_sigma_pix(arm, wave).astype(np.float32)[None, :]
        * np.asarray(fiber_scale, dtype=np.float32)[:, None]
    )
    # exp(-x^2/2) for each diagonal, in float32 (the stored precision) to halve the cost.
    kern = np.exp(-0.5 * (offsets[None, :, None] * inv[:, None, :]) ** 2)
    kern /= kern.sum(axis=1, keepdims=True)
    return kern


def apply_resolution(rdata: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Multiply each spectrum by its resolution matrix (DR1 diagonal convention).

    ``R[i, j] = rdata[k, j]`` with ``j - i = offsets[k]``, offsets ``5 - arange(11)``.
    """
    nw = model.shape[-1]
    out = np.zeros_like(model)
    for k, off in enumerate(NDIAG // 2 - np.arange(NDIAG)):
        if off >= 0:
            out[:, : nw - off] += rdata[:, k, off:] * model[:, off:]
        else:
            out[:, -off:] += rdata[:, k, : nw + off] * model[:, : nw + off]
    return out


def photons_per_flux(arm: str, wave: np.ndarray, exptime: np.ndarray) -> np.ndarray:
    """Detected photons per pixel per unit flux (1e-17 erg/s/cm2/A), shape (n, nwave)."""
    t = throughput(arm, wave)
    per = 1e-17 * AREA_CM2 * t * PIXEL * wave / H_C
    return np.asarray(exptime)[:, None] * per[None, :]


def noise_model(
    arm: str,
    model_flux: np.ndarray,
    exptime: np.ndarray,
    nexp: np.ndarray,
    bright_sky: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed flux, ivar and mask for noiseless fiber spectra of one arm.

    Variance = object + sky photons + read noise (per exposure) + 1 % sky-line
    subtraction residuals; a few pixels per spectrum are masked (cosmics, bad
    columns) with ivar = 0.

    Returns
    -------
    flux, ivar : float32 arrays (n, nwave)
    mask : uint32 array (n, nwave)
    """
    wave = wavelength(arm)
    n = model_flux.shape[0]
    # Spectra are calibrated to the total flux of a point source: only the PSF fraction
    # of that flux enters the fiber and is counted.
    conv = photons_per_flux(arm, wave, exptime) * PSF_FIBER_FRACTION
    dark, moon, skylines = _sky_arm(arm)
    sky = np.where(np.asarray(bright_sky)[:, None], moon[None, :], dark[None, :])
    sky = sky * FIBER_AREA_ARCSEC2
    obj = np.clip(model_flux, 0, None) * conv
    counts_var = obj + sky * conv + READ_NOISE2 * np.asarray(nexp)[:, None]
    counts_var += (0.01 * skylines[None, :] * FIBER_AREA_ARCSEC2 * conv) ** 2
    var = counts_var / conv**2
    flux = model_flux + rng.standard_normal(model_flux.shape) * np.sqrt(var)
    ivar = 1.0 / var
    mask = np.zeros(model_flux.shape, dtype=np.uint32)
    ncosmic = rng.poisson(3.0, size=n)
    for i in np.flatnonzero(ncosmic):
        pix = rng.integers(0, len(wave), size=ncosmic[i])
        mask[i, pix] |= 4  # COSMIC
    bad = np.flatnonzero(rng.random(n) < 0.03)
    for i in bad:
        lo = rng.integers(0, len(wave) - 40)
        mask[i, lo : lo + rng.integers(5, 40)] |= 1  # BADPIX
    ivar[mask != 0] = 0.0
    return flux.astype(np.float32), ivar.astype(np.float32), mask


# -- photometry ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def photometry_grid() -> np.ndarray:
    """Observed wavelengths (A) on which SEDs are integrated through the filters."""
    optical = np.arange(3000.0, 11600.0, 6.0)
    infrared = np.arange(24000.0, 57000.0, 40.0)
    return np.concatenate([optical, infrared])


@lru_cache(maxsize=4)
def _filters(names: tuple[str, ...]) -> speclite.filters.FilterSequence:
    return speclite.filters.load_filters(*names)


@lru_cache(maxsize=4)
def filter_weights(names: tuple[str, ...] = BANDS) -> np.ndarray:
    """Matrix W (nwave, nband): maggies = f_lambda(grid) @ W, f in 1e-17 erg/s/cm2/A.

    Uses the speclite filter curves and the AB definition
    maggies = int f lam R dlam / int f_AB lam R dlam, with trapezoid weights.
    """
    grid = photometry_grid()
    w = np.zeros((len(grid), len(names)))
    trap = np.gradient(grid)
    for j, filt in enumerate(_filters(names)):
        resp = np.interp(grid, filt.wavelength, filt.response, left=0.0, right=0.0)
        norm = (
            3631e-23
            * 2.99792458e18
            * np.trapezoid(filt.response / filt.wavelength, filt.wavelength)
        )
        w[:, j] = 1e-17 * grid * resp * trap / norm
    return w


def line_weights(wave_obs: np.ndarray, names: tuple[str, ...] = BANDS) -> np.ndarray:
    """Maggies per unit line flux (1e-17 erg/s/cm2) at observed wavelengths, (..., nband)."""
    out = np.zeros((*np.shape(wave_obs), len(names)))
    for j, filt in enumerate(_filters(names)):
        resp = np.interp(wave_obs, filt.wavelength, filt.response, left=0.0, right=0.0)
        norm = (
            3631e-23
            * 2.99792458e18
            * np.trapezoid(filt.response / filt.wavelength, filt.wavelength)
        )
        out[..., j] = 1e-17 * np.asarray(wave_obs) * resp / norm
    return out


def nanomaggies_to_mag(nmgy: np.ndarray) -> np.ndarray:
    """AB magnitude of a flux in nanomaggies (NaN where not positive)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nmgy > 0, 22.5 - 2.5 * np.log10(np.clip(nmgy, 1e-30, None)), np.nan)


def mw_transmission(wave: np.ndarray, ebv: np.ndarray) -> np.ndarray:
    """Milky Way transmission exp(-tau) for E(B-V) ``ebv`` (n,), shape (n, nwave)."""
    return 10 ** (-0.4 * 3.1 * np.asarray(ebv)[:, None] * ccm89(wave)[None, :])


@lru_cache(maxsize=1)
def snr2_tables() -> dict[str, np.ndarray]:
    """Per-pixel photons/flux and sky+read variance per unit exposure time, for TSNR2."""
    out = {}
    for arm in "BRZ":
        wave = wavelength(arm)
        conv = photons_per_flux(arm, wave, np.ones(1))[0]
        for name, bright in (("dark", False), ("bright", True)):
            sky = sky_surface_brightness(wave, bright) * FIBER_AREA_ARCSEC2
            out[f"{arm}_{name}_conv"] = conv
            out[f"{arm}_{name}_sky"] = sky * conv
    return out

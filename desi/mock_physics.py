"""Astrophysics shared by the mock's spectral models.

Dust laws (SMC after Pei 1992, Calzetti et al. 2000), emission-line profiles,
Lyman-alpha forest transmission, blackbodies, and the DESI definitions of the
BAL balnicity (BI) and absorption (AI) indices as implemented in baltools.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

C_KMS = 299792.458
LYA = 1215.67
LYB = 1025.72
LYLIMIT = 911.75
#: Rest wavelengths baltools uses for the BAL velocity scales.
BAL_LAMBDA = {"CIV": 1549.0, "SIIV": 1398.0}
BAL_CONTINUUM_THRESHOLD = 0.9


@lru_cache(maxsize=1)
def _distance_table() -> tuple[np.ndarray, np.ndarray]:
    from astropy.cosmology import Planck18

    z = np.linspace(0.0, 6.0, 12001)
    return z, Planck18.comoving_distance(z).value


def comoving_distance(z: np.ndarray) -> np.ndarray:
    """Planck18 comoving distance (Mpc), from a fine table (astropy's integral is slow)."""
    zt, dt = _distance_table()
    return np.interp(np.asarray(z, dtype=np.float64), zt, dt)


def luminosity_distance(z: np.ndarray) -> np.ndarray:
    """Planck18 luminosity distance (Mpc); the cosmology is flat."""
    return (1.0 + np.asarray(z)) * comoving_distance(z)


def smc_pei92(wave: np.ndarray) -> np.ndarray:
    """SMC extinction A_lambda / E(B-V) (Pei 1992 fit), rest wavelength in Angstrom."""
    lam = np.asarray(wave, dtype=np.float64) / 1e4
    a = (185.0, 27.0, 0.005, 0.010, 0.012, 0.030)
    lc = (0.042, 0.08, 0.22, 9.7, 18.0, 25.0)
    b = (90.0, 5.50, -1.95, -1.95, -1.80, 0.0)
    n = (2.0, 4.0, 2.0, 2.0, 2.0, 2.0)
    xi = np.zeros_like(lam)
    for ai, li, bi, ni in zip(a, lc, b, n, strict=True):
        xi += ai / ((lam / li) ** ni + (li / lam) ** ni + bi)
    r_v = 2.93
    return xi * (1.0 + r_v)


def calzetti(wave: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) starburst attenuation k(lambda) = A_lambda / E(B-V)_stars."""
    lam = np.asarray(wave, dtype=np.float64) / 1e4
    r_v = 4.05
    k = np.where(
        lam >= 0.63,
        2.659 * (-1.857 + 1.040 / lam) + r_v,
        2.659 * (-2.156 + 1.509 / lam - 0.198 / lam**2 + 0.011 / lam**3) + r_v,
    )
    # Beyond the fitted range keep the curve smooth and non-negative.
    k = np.where(
        lam < 0.12,
        2.659 * (-2.156 + 1.509 / 0.12 - 0.198 / 0.0144 + 0.011 / 0.001728)
        + r_v
        + (0.12 - lam) * 40,
        k,
    )
    return np.clip(k, 0.0, None)


def blackbody(wave: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """Planck B_lambda shape (arbitrary units), broadcasting wave against temperature."""
    x = 1.43877735e8 / (np.asarray(wave) * np.asarray(temperature))  # hc / (lambda k T)
    with np.errstate(over="ignore"):
        return (np.asarray(wave) / 5000.0) ** -5 / np.expm1(np.minimum(x, 700.0))


def gaussian_lines(
    wave_rest: np.ndarray, centers: np.ndarray, sigma_kms: np.ndarray, flux: np.ndarray
) -> np.ndarray:
    """Sum of Gaussian lines (flux per unit rest wavelength).

    Parameters
    ----------
    wave_rest : ndarray (n, nwave)
        Rest-frame wavelength of each pixel of each object, increasing along axis 1.
    centers : ndarray (nline,)
        Rest wavelengths.
    sigma_kms : ndarray (n, nline)
        Gaussian sigma of each line, km/s.
    flux : ndarray (n, nline)
        Integrated line flux (same units as the result times Angstrom).
    """
    out = np.zeros_like(wave_rest)
    for j, lam in enumerate(centers):
        sig = lam * sigma_kms[:, j] / C_KMS
        amp = flux[:, j] / (np.sqrt(2 * np.pi) * sig)
        for i in np.flatnonzero(amp != 0):
            row = wave_rest[i]
            # Pixels within 7 sigma form a contiguous window of the increasing grid.
            lo, hi = np.searchsorted(row, (lam - 7 * sig[i], lam + 7 * sig[i]))
            if hi > lo:
                x = (row[lo:hi] - lam) / sig[i]
                out[i, lo:hi] += amp[i] * np.exp(-0.5 * x * x)
    return out


@lru_cache(maxsize=8)
def _log_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Tabulated curve on a fine log-wavelength grid, for fast interpolation."""
    loglam = np.linspace(np.log(300.0), np.log(2.0e5), 60001)
    lam = np.exp(loglam)
    funcs = {"smc": smc_pei92, "calzetti": calzetti}
    return loglam, funcs[name](lam)


def tabulated(name: str, wave: np.ndarray) -> np.ndarray:
    """Fast evaluation of the ``smc`` or ``calzetti`` curve by interpolation in log lambda."""
    loglam, values = _log_table(name)
    return np.interp(np.log(wave), loglam, values)


def tau_eff_lya(z: np.ndarray) -> np.ndarray:
    """Mean Lyman-alpha forest effective optical depth (Faucher-Giguere et al. 2008 form)."""
    return 0.0023 * (1.0 + np.asarray(z)) ** 3.65


FOREST_SIGMA = 1.3


@lru_cache(maxsize=1)
def _forest_calibration() -> tuple[np.ndarray, np.ndarray]:
    """Map tau amplitude A -> mean transmission <exp(-A exp(s g - s^2/2))>, g ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(64)
    w = w / w.sum()
    amps = np.logspace(-4, 2, 400)
    mean_f = np.array(
        [np.sum(w * np.exp(-a * np.exp(FOREST_SIGMA * x - FOREST_SIGMA**2 / 2))) for a in amps]
    )
    return amps, mean_f


def forest_transmission(
    wave_obs: np.ndarray, z: np.ndarray, seeds: np.ndarray | None
) -> np.ndarray:
    """Lyman-alpha/beta forest and Lyman-limit transmission (n, nwave).

    With ``seeds`` None, the mean transmission (for photometry); otherwise a
    lognormal optical-depth field per object, correlated over ~2 pixels and
    calibrated so its mean transmission matches exp(-tau_eff(z)).

    Parameters
    ----------
    wave_obs : ndarray (nwave,)
        Observed wavelengths, shared by all objects.
    z : ndarray (n,)
        Emission redshifts.
    seeds : ndarray (n,) of int, optional
        Per-object seeds of the fluctuations.
    """
    wave_obs = np.asarray(wave_obs, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    trans = np.ones((len(z), len(wave_obs)))
    # Only wavelengths below Lyman alpha in the rest frame are absorbed.
    ncols = np.searchsorted(wave_obs, LYA * (1 + z))
    tau_a = tau_eff_lya(np.clip(wave_obs / LYA - 1.0, 0, None))
    tau_b = 0.16 * tau_eff_lya(np.clip(wave_obs / LYB - 1.0, 0, None))
    amps = mean_f = None
    if seeds is not None:
        amps, mean_f = _forest_calibration()
    for i in np.flatnonzero(ncols > 0):
        k = ncols[i]
        w = wave_obs[:k]
        lam_r = w / (1 + z[i])
        if seeds is None:
            t = np.exp(-tau_a[:k])
        else:
            # Mean transmission decreases with amplitude: interpolate the reversed table.
            amp = np.interp(np.exp(-tau_a[:k]), mean_f[::-1], amps[::-1])
            white = np.random.default_rng(int(seeds[i])).standard_normal(k)
            g = gaussian_filter1d(white, 2.0)
            g /= max(g.std(), 1e-12)
            t = np.exp(-amp * np.exp(np.minimum(FOREST_SIGMA * g - FOREST_SIGMA**2 / 2, 50.0)))
        t = t * np.where(lam_r < LYB, np.exp(-tau_b[:k]), 1.0)
        t = t * np.where(lam_r < LYLIMIT, np.exp(-2.0 * (lam_r / LYLIMIT) ** 3), 1.0)
        trans[i, :k] = t
    return trans


def bal_velocity(wave_rest: np.ndarray, line: str) -> np.ndarray:
    """Velocity (km/s, negative = blueshift) relative to a BAL line, baltools convention."""
    lam0 = BAL_LAMBDA[line]
    return C_KMS * (np.asarray(wave_rest) - lam0) / lam0


def _troughs(below: np.ndarray) -> list[tuple[int, int]]:
    """Start/end indices of runs of True."""
    edges = np.diff(np.concatenate([[0], below.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def balnicity(
    wave_rest: np.ndarray, norm_flux: np.ndarray, line: str = "CIV", kind: str = "BI"
) -> float:
    """DESI balnicity (BI) or absorption index (AI) of a continuum-normalised spectrum.

    Follows baltools (Filbert et al. 2023): velocity v = c (lambda - lambda0) / lambda0
    with lambda0 = 1549 (C IV) or 1398 (Si IV); troughs are contiguous runs with
    normalised flux below 0.9; BI counts troughs over -25,000..-3,000 km/s at least
    2,000 km/s wide, AI troughs over -25,000..0 km/s at least 450 km/s wide; the
    index sums (1 - f/0.9) dv over each trough once it has been that wide.

    Parameters
    ----------
    wave_rest : ndarray
        Rest-frame wavelength (Angstrom), increasing.
    norm_flux : ndarray
        Flux divided by the unabsorbed (continuum + emission) model; noiseless.
    line : {'CIV', 'SIIV'}
    kind : {'BI', 'AI'}

    Returns
    -------
    float
        Index in km/s.
    """
    vmax, width = (-3000.0, 2000.0) if kind == "BI" else (0.0, 450.0)
    speed = bal_velocity(wave_rest, line)
    i0 = np.searchsorted(speed, -25000.0)
    i1 = np.searchsorted(speed, vmax)
    v = speed[i0:i1]
    f = np.asarray(norm_flux)[i0:i1]
    if len(v) < 2:
        return 0.0
    total = 0.0
    for s, e in _troughs(1.0 - f / BAL_CONTINUUM_THRESHOLD > 0):
        if v[e] - v[s] <= width:
            continue
        vv, ff = v[s : e + 1], f[s : e + 1]
        dv = np.diff(vv)
        counted = (vv - vv[0])[:-1] >= width
        total += float(np.sum((1.0 - ff[1:] / BAL_CONTINUUM_THRESHOLD)[counted] * dv[counted]))
    return max(total, 0.0)

"""Stars for the mock: blackbody photospheres with the strongest absorption features.

Balmer lines (strong in A/F stars and white dwarfs), Ca II H&K, the G band,
Mg b, Na D, the Ca II triplet and TiO bands (M stars) are imposed on a Planck
continuum; depths scale with effective temperature. Enough to make redrock-like
classification and star+QSO blends meaningful; not a stellar atmosphere model.
"""

from __future__ import annotations

import numpy as np

from .mock_physics import C_KMS, blackbody

STAR_TRUTH_DTYPE = np.dtype(
    [
        ("TARGETID", "i8"),
        ("TEFF", "f4"),
        ("LOGG", "f4"),
        ("FEH", "f4"),
        ("RV", "f4"),
        ("RMAG", "f4"),
        ("SUBTYPE", "S2"),
        ("PROGRAM", "S6"),
        ("SCALE", "f8"),
        ("RA", "f8"),
        ("DEC", "f8"),
        ("HEALPIX", "i4"),
        ("HAS_SPECTRUM", "?"),
        ("SV3_DUPLICATE", "?"),
    ]
)

_BALMER = (6564.61, 4862.68, 4341.69, 4102.89, 3971.20, 3890.15)
# (rest vacuum A, equivalent width A at its strongest, Gaussian sigma A, temperature peak K)
_METALS = (
    (3934.78, 12.0, 6.0, 4500.0),
    (3969.59, 10.0, 6.0, 4500.0),
    (4305.0, 5.0, 12.0, 4800.0),
    (5176.7, 5.0, 10.0, 4500.0),
    (5895.9, 3.0, 4.0, 4000.0),
    (8500.4, 2.0, 4.0, 5000.0),
    (8544.4, 3.0, 4.0, 5000.0),
    (8664.5, 2.5, 4.0, 5000.0),
)
_TIO = ((7054.0, 7200.0), (7589.0, 7800.0), (8432.0, 8600.0), (6158.0, 6300.0))


def subtype(teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """Redrock-like stellar subtype from Teff (and log g for white dwarfs)."""
    t = np.asarray(teff)
    out = np.full(t.shape, b"K", dtype="S2")
    out[t >= 10000] = b"B"
    out[(t >= 7300) & (t < 10000)] = b"A"
    out[(t >= 6000) & (t < 7300)] = b"F"
    out[(t >= 5200) & (t < 6000)] = b"G"
    out[t < 3900] = b"M"
    out[np.asarray(logg) > 7] = b"WD"
    return out


def draw_star_params(rng: np.random.Generator, n: int, program: str) -> np.ndarray:
    """Draw ``n`` stars: MWS-like for ``bright``, faint QSO-target contaminants for ``dark``."""
    p = np.zeros(n, dtype=STAR_TRUTH_DTYPE)
    wd = rng.random(n) < 0.04
    p["TEFF"] = np.where(
        wd,
        rng.uniform(7000, 25000, n),
        np.clip(10 ** rng.normal(np.log10(5300), 0.08, n), 3000, 12000),
    )
    p["LOGG"] = np.where(wd, rng.uniform(7.5, 8.5, n), rng.uniform(3.5, 5.0, n))
    p["FEH"] = rng.normal(-0.5, 0.5, n)
    p["RV"] = rng.normal(-10.0, 60.0, n)
    if program == "bright":
        p["RMAG"] = rng.uniform(16.0, 19.0, n)
    else:
        p["RMAG"] = rng.uniform(19.0, 22.5, n)
    p["SUBTYPE"] = subtype(p["TEFF"], p["LOGG"])
    p["PROGRAM"] = program.encode()
    return p


def star_sed(
    teff: np.ndarray,
    wave_obs: np.ndarray,
    rv: np.ndarray | None = None,
    logg: np.ndarray | None = None,
) -> np.ndarray:
    """Unnormalised stellar spectra (n, nwave) at observed wavelengths."""
    teff = np.asarray(teff, dtype=np.float64)
    n = len(teff)
    rv = np.zeros(n) if rv is None else np.asarray(rv)
    logg = np.full(n, 4.5) if logg is None else np.asarray(logg)
    lam = wave_obs[None, :] / (1.0 + rv[:, None] / C_KMS)
    flux = blackbody(lam, teff[:, None])
    flux /= np.median(flux, axis=1, keepdims=True)
    absorb = np.zeros_like(lam)
    # Balmer strength peaks near 9500 K; white dwarfs get pressure-broadened lines.
    balmer = np.exp(-0.5 * ((teff - 9500.0) / 3000.0) ** 2) * 10.0
    width = np.where(logg > 7, 30.0, 6.0)
    for lam0 in _BALMER:
        absorb += (balmer / (np.sqrt(2 * np.pi) * width))[:, None] * np.exp(
            -0.5 * ((lam - lam0) / width[:, None]) ** 2
        )
    for lam0, ew, sig, tpeak in _METALS:
        depth = ew * np.exp(-0.5 * ((teff - tpeak) / 1500.0) ** 2) * (logg < 7)
        absorb += (depth / (np.sqrt(2 * np.pi) * sig))[:, None] * np.exp(
            -0.5 * ((lam - lam0) / sig) ** 2
        )
    flux *= np.exp(-absorb)
    tio = np.clip((4000.0 - teff) / 800.0, 0, 1)[:, None]
    for lo, hi in _TIO:
        band = (lam > lo) & (lam < hi)
        flux *= 1.0 - 0.5 * tio * band * np.exp(-(lam - lo) / (hi - lo))
    return flux

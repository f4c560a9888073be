"""Quasar population and spectra for the mock.

Continuum: broken power law (f_nu ~ nu^alpha, alpha ~ -0.5 blueward of 5000 A
rest, redder beyond) plus a 1200 K hot-dust bump; SMC-like intrinsic reddening.
Lines: broad and narrow emission at their rest vacuum wavelengths with
Vanden Berk et al. (2001)-like equivalent widths and widths, a Baldwin effect
on C IV. Lyman-alpha/beta forest and Lyman-limit absorption.

Labelled populations (recorded in the truth table):

* BAL: 1-3 troughs in C IV with Si IV and N V counterparts, in 15 % of the
  QSOs whose C IV region is observable (z >= 1.6); BI and AI follow from the
  injected troughs with the DESI (baltools) definitions.
* OUTFLOW: a blueshifted broad [O III] 4959/5007 wing with known velocity
  shift, sigma and flux fraction, in 30 % of QSOs with [O III] in range.
* ANOMALY: DOUBLE_Z (two QSOs blended), EXTREME_RED (E(B-V) 0.3-0.7),
  WEAK_LINE (lines 10-25 % of normal), ARM_JUMP (arm-to-arm flux calibration
  jump), STAR_QSO (a star on the same fiber), each in ~0.75 % of QSOs.
"""

from __future__ import annotations

import numpy as np

from .mock_physics import (
    C_KMS,
    balnicity,
    blackbody,
    forest_transmission,
    gaussian_lines,
    tabulated,
)

#: (name, rest vacuum wavelength, median rest EW [A], FWHM [km/s]).
QSO_LINES = [
    ("OVI", 1033.82, 8.0, 5000.0),
    ("LYA", 1215.67, 75.0, 4500.0),
    ("NV", 1240.81, 20.0, 4000.0),
    ("SIIV", 1399.80, 8.0, 5000.0),
    ("CIV", 1549.06, 30.0, 4500.0),
    ("HEII", 1640.42, 3.0, 4000.0),
    ("CIII", 1908.73, 22.0, 5000.0),
    ("MGII", 2798.75, 30.0, 3500.0),
    ("NEV", 3426.85, 1.0, 500.0),
    ("OII", 3728.48, 2.0, 500.0),
    ("NEIII", 3869.85, 1.5, 500.0),
    ("HDELTA", 4102.89, 8.0, 3500.0),
    ("HGAMMA", 4341.69, 20.0, 3500.0),
    ("HBETA", 4862.68, 60.0, 4000.0),
    ("HBETA_N", 4862.68, 3.0, 500.0),
    ("HEI", 5877.25, 5.0, 3500.0),
    ("HALPHA", 6564.61, 250.0, 3500.0),
    ("HALPHA_N", 6564.61, 10.0, 500.0),
    ("NII_6585", 6585.27, 5.0, 500.0),
    ("NII_6550", 6549.86, 1.7, 500.0),
    ("SII_6718", 6718.29, 2.0, 500.0),
    ("SII_6733", 6732.67, 1.5, 500.0),
]
LINE_NAMES = [n for n, *_ in QSO_LINES]
LINE_WAVE = np.array([w for _, w, *_ in QSO_LINES])
OIII = (4960.30, 5008.24)
OIII_RATIO = 2.98  # 5007 / 4959 (atomic physics)
#: BAL ions: rest wavelength and optical depth relative to C IV.
BAL_IONS = ((1549.06, 1.0), (1396.76, 0.6), (1240.81, 0.8))
ANOMALIES = ("DOUBLE_Z", "EXTREME_RED", "WEAK_LINE", "ARM_JUMP", "STAR_QSO")
MAX_TROUGHS = 3
_LOGLAM = np.linspace(np.log(300.0), np.log(2.0e5), 20001)
_DUST = blackbody(np.exp(_LOGLAM), 1200.0) / blackbody(np.array(10000.0), 1200.0)

QSO_TRUTH_DTYPE = np.dtype(
    [
        ("TARGETID", "i8"),
        ("Z", "f8"),
        ("RMAG", "f4"),
        ("ALPHA_BLUE", "f4"),
        ("ALPHA_RED", "f4"),
        ("DUST_BUMP", "f4"),
        ("EBV_QSO", "f4"),
        ("LINE_EW", "f4", (len(QSO_LINES),)),
        ("FWHM_SCALE", "f4"),
        ("OIII_EW", "f4"),
        ("OIII_CORE_SIGMA", "f4"),
        ("BAL", "?"),
        ("N_TROUGH", "i2"),
        ("TROUGH_VCEN", "f4", (MAX_TROUGHS,)),
        ("TROUGH_WIDTH", "f4", (MAX_TROUGHS,)),
        ("TROUGH_DEPTH", "f4", (MAX_TROUGHS,)),
        ("BI_CIV", "f4"),
        ("AI_CIV", "f4"),
        ("BI_SIIV", "f4"),
        ("AI_SIIV", "f4"),
        ("OUTFLOW", "?"),
        ("OIII_WING_VSHIFT", "f4"),
        ("OIII_WING_SIGMA", "f4"),
        ("OIII_WING_FRAC", "f4"),
        ("ANOMALY", "S12"),
        ("Z2", "f8"),
        ("BLEND_FRAC", "f4"),
        ("JUMP_ARM", "S1"),
        ("JUMP_SCALE", "f4"),
        ("STAR_TEFF", "f4"),
        ("FOREST_SEED", "i8"),
        ("SCALE", "f8"),
        ("RA", "f8"),
        ("DEC", "f8"),
        ("HEALPIX", "i4"),
        ("HAS_SPECTRUM", "?"),
        ("SV3_DUPLICATE", "?"),
    ]
)

# DESI-like QSO redshift distribution (Chaussidon et al. 2023 shape), tabulated.
_ZNODES = np.array([0.5, 0.8, 1.1, 1.4, 1.7, 2.0, 2.3, 2.6, 2.9, 3.2, 3.5, 4.0])
_ZWEIGHT = np.array([0.35, 0.6, 0.8, 0.95, 1.0, 0.95, 0.8, 0.55, 0.35, 0.2, 0.1, 0.03])


def sample_redshift(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw QSO redshifts in 0.5-4 from the tabulated DESI-like dN/dz."""
    grid = np.linspace(0.5, 4.0, 701)
    pdf = np.interp(grid, _ZNODES, _ZWEIGHT)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]))])
    return np.interp(rng.random(n) * cdf[-1], cdf, grid)


def draw_qso_params(
    rng: np.random.Generator,
    n: int,
    *,
    bal_fraction: float = 0.15,
    outflow_fraction: float = 0.30,
    anomaly_fraction: float = 0.0075,
) -> np.ndarray:
    """Draw intrinsic parameters of ``n`` QSOs (truth rows without TARGETID/SCALE/BI)."""
    p = np.zeros(n, dtype=QSO_TRUTH_DTYPE)
    z = sample_redshift(rng, n)
    p["Z"] = z
    lo, hi = 17.5, 22.8
    u = rng.random(n)
    p["RMAG"] = np.log10(10 ** (0.35 * lo) + u * (10 ** (0.35 * hi) - 10 ** (0.35 * lo))) / 0.35
    p["ALPHA_BLUE"] = rng.normal(-0.5, 0.3, n)
    p["ALPHA_RED"] = rng.normal(-1.2, 0.4, n)
    p["DUST_BUMP"] = rng.uniform(0.5, 2.0, n)
    p["EBV_QSO"] = rng.exponential(0.02, n)
    ew = np.array([e for _, _, e, _ in QSO_LINES])
    scatter = 10 ** rng.normal(0, 0.2, (n, len(QSO_LINES)))
    # Baldwin effect: brighter QSOs have weaker C IV.
    baldwin = 10 ** (0.08 * (p["RMAG"] - 21.0))
    p["LINE_EW"] = ew * scatter
    p["LINE_EW"][:, LINE_NAMES.index("CIV")] *= baldwin
    p["FWHM_SCALE"] = 10 ** rng.normal(0, 0.12, n)
    p["OIII_EW"] = 15.0 * 10 ** rng.normal(0, 0.3, n)
    p["OIII_CORE_SIGMA"] = rng.uniform(120, 250, n)
    p["FOREST_SEED"] = rng.integers(0, 2**62, n)
    p["ANOMALY"] = b"NONE"
    # Anomalies are mutually exclusive; each class gets anomaly_fraction of the QSOs.
    u = rng.random(n)
    for k, name in enumerate(ANOMALIES):
        sel = (u >= k * anomaly_fraction) & (u < (k + 1) * anomaly_fraction)
        p["ANOMALY"][sel] = name.encode()
    anomaly = p["ANOMALY"]
    dz = anomaly == b"DOUBLE_Z"
    p["Z2"][dz] = np.where(rng.random(dz.sum()) < 0.5, 1, -1) * rng.uniform(0.3, 1.5, dz.sum())
    p["Z2"][dz] = np.clip(p["Z"][dz] + p["Z2"][dz], 0.3, 4.0)
    p["BLEND_FRAC"][dz] = rng.uniform(0.3, 1.0, dz.sum())
    red = anomaly == b"EXTREME_RED"
    p["EBV_QSO"][red] = rng.uniform(0.3, 0.7, red.sum())
    weak = anomaly == b"WEAK_LINE"
    p["LINE_EW"][weak] *= rng.uniform(0.1, 0.25, (weak.sum(), 1))
    p["OIII_EW"][weak] *= 0.2
    jump = anomaly == b"ARM_JUMP"
    p["JUMP_ARM"][jump] = rng.choice([b"B", b"Z"], jump.sum())
    p["JUMP_SCALE"][jump] = np.where(
        rng.random(jump.sum()) < 0.5,
        rng.uniform(0.55, 0.8, jump.sum()),
        rng.uniform(1.25, 1.7, jump.sum()),
    )
    p["JUMP_SCALE"][~jump] = 1.0
    star = anomaly == b"STAR_QSO"
    p["STAR_TEFF"][star] = rng.uniform(3500, 7500, star.sum())
    p["BLEND_FRAC"][star] = rng.uniform(0.4, 1.5, star.sum())
    # BAL troughs where C IV is observable.
    can_bal = (z >= 1.6) & (anomaly != b"WEAK_LINE")
    bal = can_bal & (rng.random(n) < bal_fraction)
    p["BAL"] = bal
    nt = rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1], size=n)
    p["N_TROUGH"] = np.where(bal, nt, 0)
    for t in range(MAX_TROUGHS):
        on = bal & (t < nt)
        p["TROUGH_VCEN"][on, t] = rng.uniform(-22000, -3500, on.sum())
        p["TROUGH_WIDTH"][on, t] = 10 ** rng.uniform(np.log10(800), np.log10(9000), on.sum())
        p["TROUGH_DEPTH"][on, t] = rng.uniform(0.3, 0.95, on.sum())
    # [O III] outflow wings where [O III] 5007 lands in the spectrum.
    can_out = (z < 0.95) & (anomaly == b"NONE")
    out = can_out & (rng.random(n) < outflow_fraction)
    p["OUTFLOW"] = out
    p["OIII_WING_VSHIFT"][out] = rng.uniform(-900, -100, out.sum())
    p["OIII_WING_SIGMA"][out] = rng.uniform(300, 900, out.sum())
    p["OIII_WING_FRAC"][out] = rng.uniform(0.15, 0.6, out.sum())
    return p


def bal_transmission(p: np.ndarray, wave_rest: np.ndarray) -> np.ndarray:
    """Transmission of the injected BAL troughs, (n, nwave); 1 where no BAL."""
    tau = np.zeros_like(wave_rest)
    for i in np.flatnonzero(p["BAL"]):
        row = wave_rest[i]
        for t in range(int(p["N_TROUGH"][i])):
            vc, width, depth = (
                p["TROUGH_VCEN"][i, t],
                p["TROUGH_WIDTH"][i, t],
                p["TROUGH_DEPTH"][i, t],
            )
            tau0 = -np.log(1.0 - depth)
            for lam0, rel in BAL_IONS:
                # The trough lives within ~1.5 widths of its centre: only those pixels.
                vlo, vhi = vc - 1.5 * width, vc + 1.5 * width
                lo, hi = np.searchsorted(row, (lam0 * (1 + vlo / C_KMS), lam0 * (1 + vhi / C_KMS)))
                v = C_KMS * (row[lo:hi] - lam0) / lam0
                # Flat-bottomed (super-Gaussian) trough of full width ~ `width`.
                tau[i, lo:hi] += rel * tau0 * np.exp(-(((v - vc) / (0.5 * width)) ** 4))
    return np.exp(-tau)


def _continuum(p: np.ndarray, lam_r: np.ndarray) -> np.ndarray:
    ab = p["ALPHA_BLUE"][:, None]
    ar = p["ALPHA_RED"][:, None]
    loglr = np.log(lam_r)
    lb, lbreak, lum = np.log(1450.0), np.log(5000.0), np.log(10000.0)
    at_break = -(2.0 + ab) * (lbreak - lb)
    expo = np.where(
        loglr < lbreak, -(2.0 + ab) * (loglr - lb), at_break - (2.0 + ar) * (loglr - lbreak)
    )
    dust = np.interp(loglr, _LOGLAM, _DUST)
    pl_1um = np.exp(at_break - (2.0 + ar) * (lum - lbreak))
    return np.exp(expo) + p["DUST_BUMP"][:, None] * pl_1um * dust


def _lines(p: np.ndarray, lam_r: np.ndarray, cont_at: np.ndarray) -> np.ndarray:
    fwhm = np.array([f for *_, f in QSO_LINES])
    broad = fwhm > 1000
    sigma = np.where(broad, fwhm * p["FWHM_SCALE"][:, None], fwhm) / 2.3548 * np.ones((len(p), 1))
    flux = p["LINE_EW"] * cont_at
    out = gaussian_lines(lam_r, LINE_WAVE, sigma, flux)
    # [O III] 4959/5007: core plus, for outflows, a blueshifted broad wing.
    c5007 = cont_at[:, LINE_NAMES.index("HBETA")] * p["OIII_EW"]
    frac = p["OIII_WING_FRAC"]
    centers = np.array(OIII)
    core = np.stack([c5007 * (1 - frac) / OIII_RATIO, c5007 * (1 - frac)], axis=1)
    csig = np.repeat(p["OIII_CORE_SIGMA"][:, None], 2, axis=1)
    out += gaussian_lines(lam_r, centers, csig, core)
    if np.any(frac > 0):
        shifted = centers[None, :] * (1 + p["OIII_WING_VSHIFT"][:, None] / C_KMS)
        wing = np.stack([c5007 * frac / OIII_RATIO, c5007 * frac], axis=1)
        wsig = np.repeat(np.maximum(p["OIII_WING_SIGMA"], 1.0)[:, None], 2, axis=1)
        for j in range(2):
            # Each object has its own wing centre: shift the wavelength axis instead.
            rel = lam_r * centers[j] / shifted[:, j : j + 1]
            out += gaussian_lines(rel, centers[j : j + 1], wsig[:, j : j + 1], wing[:, j : j + 1])
    return out


def _single(p: np.ndarray, wave_obs: np.ndarray, forest_seeds: bool) -> tuple[np.ndarray, ...]:
    z = p["Z"][:, None]
    lam_r = wave_obs[None, :] / (1 + z)
    cont = _continuum(p, lam_r)
    anchors = np.broadcast_to(LINE_WAVE, (len(p), len(LINE_WAVE)))
    cont_at = _continuum(p, anchors)
    unabs = cont + _lines(p, lam_r, cont_at)
    unabs *= 10 ** (-0.4 * p["EBV_QSO"][:, None] * tabulated("smc", lam_r))
    unabs *= forest_transmission(wave_obs, p["Z"], p["FOREST_SEED"] if forest_seeds else None)
    return unabs, bal_transmission(p, lam_r)


def qso_model(
    p: np.ndarray, wave_obs: np.ndarray, *, forest: bool = True, star_sed=None
) -> dict[str, np.ndarray]:
    """Noiseless observed-frame QSO spectra, in units where ``SCALE`` converts to 1e-17 cgs.

    Parameters
    ----------
    p : structured array (QSO_TRUTH_DTYPE)
        QSO parameters (truth rows).
    wave_obs : ndarray (nwave,)
        Observed vacuum wavelengths.
    forest : bool
        Fluctuating Lyman-alpha forest from FOREST_SEED (spectra); the mean
        transmission when False (photometry).
    star_sed : callable, optional
        ``star_sed(teff, wave_obs) -> (n, nwave)``, for STAR_QSO blends.

    Returns
    -------
    dict
        ``flux`` (with BAL troughs), ``unabsorbed`` (same without troughs),
        ``bal`` (trough transmission); all multiplied by ``SCALE`` when it is set,
        before Milky Way extinction.
    """
    unabs, trans = _single(p, wave_obs, forest)
    flux = unabs * trans
    dz = np.flatnonzero(p["ANOMALY"] == b"DOUBLE_Z")
    if len(dz):
        second = p[dz].copy()
        second["Z"] = p["Z2"][dz]
        second["BAL"] = False
        s_unabs, _ = _single(second, wave_obs, forest)
        add = s_unabs * _norm_ratio(unabs[dz], s_unabs) * p["BLEND_FRAC"][dz, None]
        flux[dz] += add
        unabs[dz] += add
    st = np.flatnonzero(p["ANOMALY"] == b"STAR_QSO")
    if len(st) and star_sed is not None:
        s = star_sed(p["STAR_TEFF"][st], wave_obs)
        add = s * _norm_ratio(unabs[st], s) * p["BLEND_FRAC"][st, None]
        flux[st] += add
        unabs[st] += add
    scale = np.where(p["SCALE"] > 0, p["SCALE"], 1.0)[:, None]
    return {"flux": flux * scale, "unabsorbed": unabs * scale, "bal": trans}


def _norm_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Factor making ``b`` as bright as ``a`` (median over the spectrum)."""
    return (np.median(a, axis=1) / np.maximum(np.median(b, axis=1), 1e-30))[:, None]


def bal_indices(p: np.ndarray, wave_obs: np.ndarray) -> np.ndarray:
    """BI/AI of C IV and Si IV from the injected troughs on the DESI pixel grid, (n, 4)."""
    out = np.zeros((len(p), 4), dtype=np.float32)
    for i in np.flatnonzero(p["BAL"]):
        lam_r = wave_obs / (1 + p["Z"][i])
        trans = bal_transmission(p[i : i + 1], lam_r[None, :])[0]
        out[i] = [
            balnicity(lam_r, trans, "CIV", "BI"),
            balnicity(lam_r, trans, "CIV", "AI"),
            balnicity(lam_r, trans, "SIIV", "BI"),
            balnicity(lam_r, trans, "SIIV", "AI"),
        ]
    return out

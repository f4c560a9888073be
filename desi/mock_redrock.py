"""Pipeline outputs of the mock: TSNR2, SCORES, redrock results, zpix and FastSpecFit rows.

Redrock is not run; its outcome is drawn from the truth and the S/N so that the
catalogs behave like DR1: DELTACHI2 grows with the squared S/N in the spectral
features, low-DELTACHI2 spectra get ZWARN bit SMALL_DELTA_CHI2 and often a wrong
redshift/type, redshift errors scale as 1/sqrt(DELTACHI2), and the anomaly
classes fail in their characteristic ways.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import expit

from .datamodel import (
    FASTSPEC,
    METADATA,
    REDSHIFTS,
    SCORES,
    TSNR2_COLUMNS,
    dtype_of,
    wavelength,
    zcatalog_columns,
)
from .mock_instrument import READ_NOISE2, snr2_tables
from .mock_physics import C_KMS

SMALL_DELTA_CHI2 = 1 << 2
_TEMPLATES = ("GPBDARK", "ELG", "GPBBRIGHT", "LYA", "BGS", "GPBBACKUP", "QSO", "LRG")
#: TSNR2 of each template for a nominal exposure (dark 1000 s, bright 180 s effective).
_NOMINAL = {"LRG": 82.0, "ELG": 92.0, "QSO": 24.0, "LYA": 62.0, "BGS": 1286.0,
            "GPBDARK": 105.0, "GPBBRIGHT": 22.0, "GPBBACKUP": 4.0}  # fmt: skip


def _template_shape(name: str, wave: np.ndarray) -> np.ndarray:
    shapes = {
        "LRG": (wave / 7000.0) ** 2,
        "ELG": np.ones_like(wave),
        "QSO": (wave / 5000.0) ** -1,
        "LYA": np.exp(-(((wave - 4200.0) / 600.0) ** 2)),
        "BGS": wave / 6000.0,
    }
    return shapes.get(name, np.exp(-(((wave - 6500.0) / 1200.0) ** 2)))


@lru_cache(maxsize=1)
def _tsnr2_per_second() -> dict[tuple[str, str, str], float]:
    """TSNR2 per second of exposure per template, arm and sky (sky-dominated limit)."""
    tab = snr2_tables()
    raw = {}
    for sky in ("dark", "bright"):
        for t in _TEMPLATES:
            for arm in "BRZ":
                conv = tab[f"{arm}_{sky}_conv"]
                var_per_s = tab[f"{arm}_{sky}_sky"] / conv**2
                raw[(t, arm, sky)] = float(
                    np.sum(_template_shape(t, wavelength(arm)) ** 2 / var_per_s)
                )
    out = {}
    for t in _TEMPLATES:
        sky, texp = (
            ("bright", 180.0) if t in ("BGS", "GPBBRIGHT", "GPBBACKUP") else ("dark", 1000.0)
        )
        norm = _NOMINAL[t] / (texp * sum(raw[(t, a, sky)] for a in "BRZ"))
        for arm in "BRZ":
            for s in ("dark", "bright"):
                out[(t, arm, s)] = raw[(t, arm, s)] * norm
    return out


def tsnr2(exptime: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """TSNR2 columns (structured, DR1 names) for total exposure times."""
    per = _tsnr2_per_second()
    out = np.zeros(len(exptime), dtype=dtype_of(TSNR2_COLUMNS))
    sky = np.where(bright, "bright", "dark")
    for t in _TEMPLATES:
        total = np.zeros(len(exptime))
        for arm in "BRZ":
            v = exptime * np.array([per[(t, arm, s)] for s in sky]) if len(sky) else total
            out[f"TSNR2_{t}_{arm}"] = v
            total = total + v
        out[f"TSNR2_{t}"] = total
    return out


def snr2_proxy(fiber_rflux: np.ndarray, exptime: np.ndarray, nexp: np.ndarray, bright: np.ndarray):
    """Total S/N^2 over the three arms of a flat spectrum with this fiber r flux (nanomaggies)."""
    tab = snr2_tables()
    # nmgy -> 1e-17 erg/s/cm2/A at 6400 A; the fiber flux is what the CCD counts.
    flux = 0.266 * np.clip(fiber_rflux, 0, None)
    total = np.zeros(len(flux))
    for arm in "BRZ":
        step = slice(None, None, 40)
        for name, sel in (("dark", ~bright), ("bright", bright)):
            if not sel.any():
                continue
            conv = tab[f"{arm}_{name}_conv"][step][None, :] * exptime[sel, None]
            sky = tab[f"{arm}_{name}_sky"][step][None, :] * exptime[sel, None]
            sig = flux[sel, None] * conv
            var = sig + sky + READ_NOISE2 * nexp[sel, None]
            total[sel] += 40 * np.sum(sig**2 / var, axis=1)
    return total


def simulate_redrock(
    rng: np.random.Generator, cat: dict, snr2: np.ndarray, npixels: np.ndarray
) -> np.ndarray:
    """REDSHIFTS rows drawn from the truth and the S/N (see module docstring)."""
    n = len(snr2)
    rr = np.zeros(n, dtype=dtype_of(REDSHIFTS))
    cls = cat["CLASS"]
    # Fraction of the spectrum's S/N^2 that separates the best fit from the next one.
    kappa = np.where(cls == b"QSO", 0.003, np.where(cls == b"STAR", 0.01, 0.003))
    kappa = kappa * cat["FEATURE_BOOST"]
    dchi2 = snr2 * kappa * 10 ** rng.normal(0, 0.4, n)
    z = cat["Z_RR_TRUE"].copy()
    spectype = cls.copy()
    subtype = cat["SUBTYPE_TRUE"].copy()
    p_fail = expit(-(dchi2 - 9.0) / 3.0)
    fail = rng.random(n) < p_fail
    z[fail] = rng.uniform(0.0, 1.6, fail.sum())
    spectype[fail] = rng.choice(np.array([b"GALAXY", b"QSO", b"STAR"]), fail.sum())
    dchi2[fail] = np.minimum(dchi2[fail], rng.uniform(0.5, 12.0, fail.sum()))
    star = spectype == b"STAR"
    z[star & ~fail] = cat["Z_RR_TRUE"][star & ~fail]
    z[star & fail] = rng.normal(0, 2e-4, (star & fail).sum())
    subtype[fail] = np.where(star[fail], b"K", b"")
    sigma_v = np.where(spectype == b"QSO", 400.0, np.where(spectype == b"STAR", 15.0, 30.0))
    zerr = sigma_v / C_KMS * (1 + np.abs(z)) * np.sqrt(25.0 / np.maximum(dchi2, 1.0)) * 0.5
    z = z + rng.standard_normal(n) * zerr * ~fail
    rr["TARGETID"] = cat["TARGETID"]
    rr["Z"], rr["ZERR"] = z, zerr
    rr["ZWARN"] = np.where(dchi2 < 9.0, SMALL_DELTA_CHI2, 0)
    rr["DELTACHI2"] = dchi2
    rr["SPECTYPE"] = spectype
    rr["SUBTYPE"] = np.where(spectype == b"QSO", np.where(z > 2.0, b"HIZ", b"LOZ"), subtype)
    rr["SUBTYPE"][spectype == b"GALAXY"] = b""
    rr["NPIXELS"] = npixels
    rr["CHI2"] = npixels * (1.0 + rng.normal(0, 0.02, n)) + 0.02 * snr2
    rr["NCOEFF"] = np.where(spectype == b"GALAXY", 10, np.where(spectype == b"QSO", 4, 5))
    coeff = rng.normal(0, 0.1, (n, 10)) * np.abs(cat["FLUX"][:, 1:2])
    coeff[:, 0] = np.abs(cat["FLUX"][:, 1]) * (1 + rng.normal(0, 0.05, n))
    coeff[np.arange(10)[None, :] >= rr["NCOEFF"][:, None]] = 0.0
    rr["COEFF"] = coeff
    return rr


def scores(flux: dict, ivar: dict, tsnr: np.ndarray, targetid: np.ndarray) -> np.ndarray:
    """SCORES rows from the coadded spectra (DR1 definitions and ranges)."""
    out = np.zeros(len(targetid), dtype=dtype_of(SCORES))
    out["TARGETID"] = targetid
    ranges = {"B": (4000, 5800), "R": (5800, 7600), "Z": (7600, 9800)}
    for arm, (lo, hi) in ranges.items():
        w = wavelength(arm)
        sel = (w >= lo) & (w < hi)
        f, iv = flux[arm][:, sel], ivar[arm][:, sel]
        out[f"INTEG_COADD_FLUX_{arm}"] = np.sum(f, axis=1) * 0.8
        out[f"MEDIAN_COADD_FLUX_{arm}"] = np.median(f, axis=1)
        out[f"MEDIAN_COADD_SNR_{arm}"] = np.median(f * np.sqrt(iv), axis=1) / np.sqrt(0.8)
    for name in tsnr.dtype.names:
        out[name] = tsnr[name]
    return out


def zcatalog_rows(
    rr: np.ndarray,
    fm: np.ndarray,
    tsnr: np.ndarray,
    survey: str,
    program: str,
    healpix: int,
    names: np.ndarray,
) -> np.ndarray:
    """ZCATALOG rows joining REDSHIFTS, FIBERMAP and TSNR2 for one healpix file."""
    cols = zcatalog_columns(survey)
    out = np.zeros(len(rr), dtype=dtype_of(cols))
    for name in out.dtype.names:
        for src in (rr, fm, tsnr):
            if name in src.dtype.names:
                out[name] = src[name]
                break
    out["SURVEY"], out["PROGRAM"] = survey, program
    out["HEALPIX"] = out["SPGRPVAL"] = healpix
    out["DESINAME"] = names
    out["ZCAT_NSPEC"] = 1
    out["ZCAT_PRIMARY"] = True
    return out


def fastspec_rows(
    rng: np.random.Generator,
    cat: dict,
    truth: np.ndarray,
    rr: np.ndarray,
    zc: np.ndarray,
    snr_arm: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """FASTSPEC and METADATA rows: FastSpecFit-like measurements of the truth with errors."""
    n = len(truth)
    fs = np.zeros(n, dtype=dtype_of(FASTSPEC))
    md = np.zeros(n, dtype=dtype_of(METADATA))
    fs["TARGETID"] = md["TARGETID"] = truth["TARGETID"]
    fs["SURVEY"] = md["SURVEY"] = b"main"
    fs["PROGRAM"] = md["PROGRAM"] = b"bright"
    fs["HEALPIX"] = md["HEALPIX"] = zc["HEALPIX"]
    fs["Z"] = md["Z"] = md["Z_RR"] = rr["Z"]
    snr = np.clip(snr_arm, 0.3, None)
    fs["SNR_B"], fs["SNR_R"], fs["SNR_Z"] = snr_arm.T
    fs["RCHI2"] = 1.0 + np.abs(rng.normal(0, 0.05, n))
    fs["VDISP"] = truth["VDISP"] * 10 ** rng.normal(0, 0.03 + 0.3 / snr[:, 1], n)
    fs["AV"] = np.clip(truth["AV"] + rng.normal(0, 0.15, n), 0, None)
    fs["AGE"] = truth["AGE"] * 10 ** rng.normal(0, 0.1, n)
    fs["ZZSUN"] = truth["ZZSUN"] + rng.normal(0, 0.1, n)
    fs["LOGMSTAR"] = truth["LOGMSTAR"] + rng.normal(0, 0.08, n)
    fs["SFR"] = truth["SFR"] * 10 ** rng.normal(0, 0.2, n)
    err_dn = 0.02 + 0.3 / snr[:, 0]
    fs["DN4000_MODEL"] = truth["DN4000"]
    fs["DN4000"] = fs["DN4000_OBS"] = truth["DN4000"] + rng.normal(0, 1, n) * err_dn
    fs["DN4000_IVAR"] = 1 / err_dn**2
    for j, band in enumerate(("G", "R", "Z")):
        fs[f"FLUX_SYNTH_{band}"] = cat["FLUX_TRUE"][:, j] * (1 + rng.normal(0, 0.03, n))
    for band, col in (("G", "ABSMAG01_SDSS_G"), ("R", "ABSMAG01_SDSS_R")):
        fs[col] = truth[col] + rng.normal(0, 0.03, n)
        fs[f"ABSMAG01_IVAR_SDSS_{band}"] = 1 / 0.03**2
    from .mock_galaxy import EMLINE_NAMES

    for line in ("OII_3726", "OII_3729", "HBETA", "OIII_5007", "NII_6584", "HALPHA",
                 "SII_6716", "SII_6731"):  # fmt: skip
        j = EMLINE_NAMES.index(line)
        flux, ew = truth["LINE_FLUX"][:, j], truth["LINE_EW"][:, j]
        ferr = 0.3 + 0.05 * np.abs(flux)
        fs[f"{line}_FLUX"] = flux + rng.normal(0, 1, n) * ferr
        fs[f"{line}_FLUX_IVAR"] = 1 / ferr**2
        eerr = ferr * np.abs(ew) / np.maximum(np.abs(flux), 1e-3) + 0.1
        fs[f"{line}_EW"] = ew + rng.normal(0, 1, n) * eerr
        fs[f"{line}_EW_IVAR"] = 1 / eerr**2
        fs[f"{line}_SIGMA"] = 80.0
        fs[f"{line}_VSHIFT"] = rng.normal(0, 10, n)
    md["TILEID_LIST"] = np.char.mod("%d", zc["HEALPIX"]).astype("S54")
    md["RA"], md["DEC"] = zc["TARGET_RA"], zc["TARGET_DEC"]
    md["COADD_FIBERSTATUS"] = zc["COADD_FIBERSTATUS"]
    for key in ("DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "SCND_TARGET", "DELTACHI2", "SPECTYPE"):
        md[key] = zc[key]
    md["ZWARN"] = zc["ZWARN"].astype(np.int8)
    for key in ("BGS", "LRG", "ELG", "QSO", "LYA"):
        md[f"TSNR2_{key}"] = zc[f"TSNR2_{key}"]
    md["PHOTSYS"] = b"S"
    md["LS_ID"] = zc["TARGETID"] & ((1 << 42) - 1)
    from .mock_instrument import EXT_COEFF

    for j, band in enumerate(("G", "R", "Z", "W1", "W2")):
        trans = 10 ** (-0.4 * EXT_COEFF[j] * zc["EBV"])
        md[f"MW_TRANSMISSION_{band}"] = trans
        md[f"FLUX_{band}"] = zc[f"FLUX_{band}"] / trans  # FastSpecFit de-reddens the photometry
        md[f"FLUX_IVAR_{band}"] = zc[f"FLUX_IVAR_{band}"] * trans**2
    md["EBV"] = zc["EBV"]
    return fs, md

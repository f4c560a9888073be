"""Everything the mock does for one healpix pixel: objects, spectra, files, catalog rows.

A pixel is self-contained: its random streams derive from (seed, pixel), so the
result does not depend on which process handles it or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mock_galaxy import (
    EMLINE_NAMES,
    EMLINE_WAVE,
    GALAXY_TRUTH_DTYPE,
    absmag01,
    distance_factor,
    dn4000,
    draw_galaxies,
    line_fluxes_10pc,
    rest_continuum,
    rest_continuum_at,
)
from .mock_instrument import (
    BANDS,
    EXT_COEFF,
    PHOT_SIGMA,
    PSF_FIBER_FRACTION,
    filter_weights,
    full_wavelength,
    mw_transmission,
    photometry_grid,
)
from .mock_physics import comoving_distance, gaussian_lines
from .mock_qso import bal_indices, draw_qso_params, qso_model
from .mock_star import draw_star_params, star_sed
from .mock_targets import (
    BGS_MASK,
    DESI_MASK,
    MWS_MASK,
    PRIORITY,
    bricks,
    encode_targetid,
    galactic_ebv,
)


@dataclass(frozen=True)
class PixelConfig:
    """Settings shared by all pixels of one mock run."""

    root: str
    seed: int
    qso_spectra_fraction: float
    galaxy_spectra_fraction: float
    star_spectra_fraction: float


def _rng(cfg: PixelConfig, pixel: int, tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, pixel, tag]))


def _photometry(rng, n, maggies_true):
    """Observed Legacy-Surveys-like fluxes (nmgy) and inverse variances."""
    sigma = PHOT_SIGMA[None, :] * rng.uniform(0.8, 1.25, (n, len(BANDS)))
    true = maggies_true * 1e9
    return true, true + rng.standard_normal(true.shape) * sigma, 1.0 / sigma**2


def _qsos(cfg, pixel, task):
    n = len(task["qso_objid"])
    rng = _rng(cfg, pixel, 1)
    p = draw_qso_params(rng, n)
    p["RA"], p["DEC"], p["HEALPIX"] = task["qso_ra"], task["qso_dec"], pixel
    brick, bname = bricks(p["RA"], p["DEC"])
    p["TARGETID"] = encode_targetid(task["qso_objid"], brick, 9010)
    ebv = galactic_ebv(p["RA"], p["DEC"], np.full(n, pixel))
    grid = photometry_grid()
    sed = qso_model(p, grid, forest=False, star_sed=star_sed)["flux"] * mw_transmission(grid, ebv)
    maggies = sed @ filter_weights()
    p["SCALE"] = 10 ** (-0.4 * p["RMAG"]) / np.maximum(maggies[:, 1], 1e-300)
    bi = bal_indices(p, full_wavelength())
    p["BI_CIV"], p["AI_CIV"], p["BI_SIIV"], p["AI_SIIV"] = bi.T
    labelled = p["BAL"] | p["OUTFLOW"] | (p["ANOMALY"] != b"NONE")
    p["HAS_SPECTRUM"] = labelled | (task["qso_u"] < cfg.qso_spectra_fraction)
    p["SV3_DUPLICATE"] = task["qso_dup"]
    true, obs, ivar = _photometry(rng, n, maggies * p["SCALE"][:, None])
    boost = np.where(p["ANOMALY"] == b"WEAK_LINE", 0.1, 1.0)
    boost *= np.where(p["ANOMALY"] == b"EXTREME_RED", 0.3, 1.0)
    z_rr = p["Z"].copy()
    dz = p["ANOMALY"] == b"DOUBLE_Z"
    pick2 = dz & (rng.random(n) < p["BLEND_FRAC"] / (1 + p["BLEND_FRAC"]))
    z_rr[pick2] = p["Z2"][pick2]
    cat = _base_cat(n, p["TARGETID"], p["RA"], p["DEC"], b"QSO", z_rr, b"", obs, ivar, true, ebv)
    cat.update(
        BRICKID=brick,
        BRICKNAME=bname,
        PROGRAM=np.full(n, b"dark"),
        DESI_TARGET=np.full(n, DESI_MASK["QSO"]),
        PRIORITY_INIT=np.full(n, PRIORITY["QSO"]),
        FEATURE_BOOST=boost,
        HAS_SPECTRUM=p["HAS_SPECTRUM"],
        DUP=task["qso_dup"],
    )
    star_qso = p["ANOMALY"] == b"STAR_QSO"
    cat["CLASS"] = np.where(
        star_qso & (p["BLEND_FRAC"] > 1) & (rng.random(n) < 0.5), b"STAR", b"QSO"
    ).astype("S6")
    cat["SUBTYPE_TRUE"] = np.where(cat["CLASS"] == b"STAR", b"K", b"").astype("S20")

    def model(sel):
        w = full_wavelength()
        flux = qso_model(p[sel], w, forest=True, star_sed=star_sed)["flux"]
        return flux * mw_transmission(w, ebv[sel])

    cat["MODEL"] = model
    cat["JUMP_ARM"], cat["JUMP_SCALE"] = p["JUMP_ARM"], p["JUMP_SCALE"]
    return p, cat


def _galaxies(cfg, pixel, task):
    n = len(task["gal_objid"])
    rng = _rng(cfg, pixel, 2)
    t = np.zeros(n, dtype=GALAXY_TRUTH_DTYPE)
    t["RA"], t["DEC"], t["HEALPIX"] = task["gal_ra"], task["gal_dec"], pixel
    t["Z_COSMO"], t["DELTA_8"], t["IN_VOID"] = (
        task["gal_zcos"],
        task["gal_delta8"],
        task["gal_void"],
    )
    t["CX"], t["CY"], t["CZ"] = task["gal_xyz"].T if n else (0, 0, 0)
    brick, bname = bricks(t["RA"], t["DEC"])
    t["TARGETID"] = encode_targetid(task["gal_objid"], brick, 9010)
    # Peculiar velocities (250 km/s rms) turn cosmological into observed redshifts.
    t["Z"] = t["Z_COSMO"] + (1 + t["Z_COSMO"]) * rng.normal(0, 250.0, n) / 299792.458
    d = draw_galaxies(rng, t["Z"], t["IN_VOID"])
    mstar = 10 ** d["logm"]
    t["LOGMSTAR"], t["LOG_SSFR"], t["QUENCHED"] = d["logm"], d["lssfr"], d["quenched"]
    t["SFR"] = mstar * 10 ** d["lssfr"]
    t["AV"], t["VDISP"] = d["av"], d["vdisp"]
    young_frac = np.clip(t["SFR"] * 1e8 / 0.15 / np.maximum(mstar / 3.0, 1), 0, None)
    t["AGE"] = (8.0 + 0.1 * young_frac) / (1.0 + young_frac)
    t["ZZSUN"] = np.clip(0.15 * (d["logm"] - 10.5), -0.6, 0.3)
    ebv = galactic_ebv(t["RA"], t["DEC"], np.full(n, pixel))
    mw = 10 ** (-0.4 * EXT_COEFF[None, :] * ebv[:, None])
    true, obs, ivar = _photometry(rng, n, d["maggies"] * mw)
    t["RMAG"] = 22.5 - 2.5 * np.log10(np.maximum(d["maggies"][:, 1] * 1e9, 1e-9))
    am = absmag01(d)
    t["ABSMAG01_SDSS_G"], t["ABSMAG01_SDSS_R"] = am[:, 0], am[:, 1]
    t["DN4000"] = dn4000(d) if n else []
    lines = line_fluxes_10pc(d)
    t["LINE_FLUX"] = lines * distance_factor(t["Z"])[:, None]
    t["LINE_EW"] = lines / np.maximum(rest_continuum_at(d, EMLINE_WAVE), 1e-30)
    kpc_per_arcsec = _kpc_per_arcsec(t["Z"])
    r_e_kpc = 10 ** (0.2 * (d["logm"] - 10.0) + 0.5 + rng.normal(0, 0.15, n))
    t["SHAPE_R"] = r_e_kpc / kpc_per_arcsec
    t["FIBER_FRAC"] = PSF_FIBER_FRACTION / (1.0 + (t["SHAPE_R"] / 0.8) ** 1.3)
    t["HAS_SPECTRUM"] = task["gal_u"] < cfg.galaxy_spectra_fraction
    t["SV3_DUPLICATE"] = task["gal_dup"]
    bright = t["RMAG"] < 19.5
    cat = _base_cat(
        n,
        t["TARGETID"],
        t["RA"],
        t["DEC"],
        b"GALAXY",
        t["Z"],
        b"",
        obs,
        ivar,
        true,
        ebv,
        fiber_frac=t["FIBER_FRAC"],
        shape_r=t["SHAPE_R"],
    )
    cat.update(
        BRICKID=brick,
        BRICKNAME=bname,
        PROGRAM=np.full(n, b"bright"),
        MORPHTYPE=np.where(t["QUENCHED"], b"DEV", b"EXP").astype("S4"),
        DESI_TARGET=np.full(n, DESI_MASK["BGS_ANY"]),
        BGS_TARGET=np.where(bright, BGS_MASK["BGS_BRIGHT"], BGS_MASK["BGS_FAINT"]),
        PRIORITY_INIT=np.where(bright, PRIORITY["BGS_BRIGHT"], PRIORITY["BGS_FAINT"]),
        FEATURE_BOOST=1.0 + np.clip(t["LINE_EW"][:, EMLINE_NAMES.index("HALPHA")], 0, 200) / 20.0,
        HAS_SPECTRUM=t["HAS_SPECTRUM"],
        DUP=task["gal_dup"],
    )

    def model(sel):
        w = full_wavelength()
        z = t["Z"][sel]
        lam_r = w[None, :] / (1 + z[:, None])
        ds = {k: v[sel] for k, v in d.items()}
        rest = rest_continuum(ds, lam_r)
        # Gas velocity dispersion of BGS galaxies' nebular lines: ~70 km/s.
        sig = np.full((sel.sum(), len(EMLINE_WAVE)), 70.0)
        rest += gaussian_lines(lam_r, EMLINE_WAVE, sig, line_fluxes_10pc(ds))
        obs_flux = rest * (distance_factor(z) / (1 + z))[:, None]
        # DESI calibrates to point sources: an extended galaxy's spectrum is its fiber
        # flux divided by the PSF fiber fraction.
        obs_flux *= (t["FIBER_FRAC"][sel] / PSF_FIBER_FRACTION)[:, None]
        return obs_flux * mw_transmission(w, ebv[sel])

    cat["MODEL"] = model
    return t, cat


def _kpc_per_arcsec(z):
    """Proper kpc per arcsec at redshift z."""
    da_mpc = comoving_distance(np.maximum(z, 1e-4)) / (1 + np.maximum(z, 1e-4))
    return da_mpc * 1e3 * np.radians(1 / 3600.0)


def _stars(cfg, pixel, task):
    n = len(task["star_objid"])
    rng = _rng(cfg, pixel, 3)
    bright = task["star_bright"]
    p = np.concatenate([draw_star_params(rng, n, "bright"), draw_star_params(rng, n, "dark")])
    p = np.where(bright, p[:n], p[n:]) if n else p[:0]
    p["RA"], p["DEC"], p["HEALPIX"] = task["star_ra"], task["star_dec"], pixel
    brick, bname = bricks(p["RA"], p["DEC"])
    p["TARGETID"] = encode_targetid(task["star_objid"], brick, 9010)
    ebv = galactic_ebv(p["RA"], p["DEC"], np.full(n, pixel))
    grid = photometry_grid()
    sed = star_sed(p["TEFF"], grid, p["RV"], p["LOGG"]) * mw_transmission(grid, ebv)
    maggies = sed @ filter_weights()
    p["SCALE"] = 10 ** (-0.4 * p["RMAG"]) / np.maximum(maggies[:, 1], 1e-300)
    p["HAS_SPECTRUM"] = task["star_u"] < cfg.star_spectra_fraction
    p["SV3_DUPLICATE"] = task["star_dup"]
    true, obs, ivar = _photometry(rng, n, maggies * p["SCALE"][:, None])
    cat = _base_cat(
        n,
        p["TARGETID"],
        p["RA"],
        p["DEC"],
        b"STAR",
        p["RV"] / 299792.458,
        p["SUBTYPE"],
        obs,
        ivar,
        true,
        ebv,
    )
    abs_r = np.clip(4.6 + (5800.0 - p["TEFF"]) / 450.0, -1, 15) + np.where(p["LOGG"] > 7, 7, 0)
    dist_pc = 10 ** ((p["RMAG"] - abs_r + 5) / 5)
    cat.update(
        BRICKID=brick,
        BRICKNAME=bname,
        PROGRAM=np.where(bright, b"bright", b"dark"),
        DESI_TARGET=np.where(bright, DESI_MASK["MWS_ANY"], DESI_MASK["QSO"]),
        MWS_TARGET=np.where(
            bright, np.where(p["SUBTYPE"] == b"WD", MWS_MASK["MWS_WD"], MWS_MASK["MWS_BROAD"]), 0
        ),
        PRIORITY_INIT=np.where(bright, PRIORITY["MWS"], PRIORITY["QSO"]),
        PARALLAX=(1000.0 / dist_pc).astype(np.float32),
        PMRA=rng.normal(0, 8, n),
        PMDEC=rng.normal(-3, 8, n),
        REF_ID=rng.integers(1, 2**60, n),
        REF_CAT=np.full(n, b"G2"),
        GAIA_PHOT_G_MEAN_MAG=p["RMAG"] - 0.15,
        GAIA_PHOT_BP_MEAN_MAG=p["RMAG"] + 0.25,
        GAIA_PHOT_RP_MEAN_MAG=p["RMAG"] - 0.6,
        FEATURE_BOOST=np.ones(n),
        HAS_SPECTRUM=p["HAS_SPECTRUM"],
        DUP=task["star_dup"],
    )

    def model(sel):
        w = full_wavelength()
        s = star_sed(p["TEFF"][sel], w, p["RV"][sel], p["LOGG"][sel]) * p["SCALE"][sel, None]
        return s * mw_transmission(w, ebv[sel])

    cat["MODEL"] = model
    return p, cat


def _base_cat(
    n, tid, ra, dec, cls, z, subtype, obs, ivar, true, ebv, fiber_frac=None, shape_r=None
):
    return {
        "TARGETID": tid, "RA": ra, "DEC": dec, "CLASS": np.full(n, cls, dtype="S6"),
        "Z_RR_TRUE": np.asarray(z, dtype=np.float64),
        "SUBTYPE_TRUE": np.broadcast_to(np.asarray(subtype, dtype="S20"), (n,)).copy(),
        "FLUX": obs, "FLUX_IVAR": ivar, "FLUX_TRUE": true, "EBV": ebv,
        "FIBER_FRAC": np.full(n, PSF_FIBER_FRACTION) if fiber_frac is None else fiber_frac,
        "SHAPE_R": np.zeros(n) if shape_r is None else shape_r,
        "MORPHTYPE": np.full(n, b"PSF", dtype="S4"), "BGS_TARGET": np.zeros(n, np.int64),
        "MWS_TARGET": np.zeros(n, np.int64), "PMRA": np.zeros(n), "PMDEC": np.zeros(n),
        "PARALLAX": np.zeros(n), "REF_ID": np.zeros(n, np.int64),
        "REF_CAT": np.full(n, b"", dtype="S2"), "GAIA_PHOT_G_MEAN_MAG": np.zeros(n),
        "GAIA_PHOT_BP_MEAN_MAG": np.zeros(n), "GAIA_PHOT_RP_MEAN_MAG": np.zeros(n),
        "JUMP_ARM": np.full(n, b"", dtype="S1"), "JUMP_SCALE": np.ones(n),
    }  # fmt: skip

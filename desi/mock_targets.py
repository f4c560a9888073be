"""Targeting and fiber-assignment columns for the mock: TARGETID, bricks, FIBERMAP rows.

TARGETIDs use the desitarget bit layout (OBJID 22 bits, BRICKID 20, RELEASE
16, then MOCK) with the MOCK bit set, so mock targets can never be mistaken for
real ones. Bricks follow the Legacy Surveys 0.25 deg layout closely enough
for BRICKID/BRICKNAME to be consistent with positions.
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from .datamodel import dtype_of, fibermap_columns
from .mock_instrument import PSF_FIBER_FRACTION

RELEASE_DR9_SOUTH = 9010
MOCK_BIT = 58
#: desitarget main-survey bits.
DESI_MASK = {"QSO": 1 << 2, "BGS_ANY": 1 << 60, "MWS_ANY": 1 << 61}
BGS_MASK = {"BGS_FAINT": 1 << 0, "BGS_BRIGHT": 1 << 1}
MWS_MASK = {"MWS_BROAD": 1 << 0, "MWS_WD": 1 << 1}
PRIORITY = {"QSO": 3400, "BGS_BRIGHT": 2100, "BGS_FAINT": 2000, "MWS": 1400}


def encode_targetid(objid: np.ndarray, brickid: np.ndarray, release: int) -> np.ndarray:
    """desitarget TARGETID with the MOCK bit set."""
    objid = np.asarray(objid, dtype=np.int64) & ((1 << 22) - 1)
    brickid = np.asarray(brickid, dtype=np.int64) & ((1 << 20) - 1)
    return objid | (brickid << 22) | (np.int64(release) << 42) | (np.int64(1) << MOCK_BIT)


def bricks(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BRICKID and BRICKNAME (e.g. '1852p300') of 0.25 deg Legacy-Surveys-like bricks."""
    ra, dec = np.asarray(ra), np.asarray(dec)
    row = np.clip(np.floor((dec + 90.0) / 0.25).astype(int), 0, 719)
    dec_c = -90.0 + (row + 0.5) * 0.25
    ncol = np.maximum(1, np.round(360.0 * np.cos(np.radians(dec_c)) / 0.25)).astype(int)
    col = np.floor(ra / 360.0 * ncol).astype(int) % ncol
    ra_c = (col + 0.5) * 360.0 / ncol
    rows_all = -90.0 + (np.arange(720) + 0.5) * 0.25
    per_row = np.maximum(1, np.round(360.0 * np.cos(np.radians(rows_all)) / 0.25)).astype(int)
    offset = np.concatenate([[0], np.cumsum(per_row)])
    brickid = offset[row] + col + 1
    names = np.array(
        [
            f"{int(r * 10):04d}{'p' if d >= 0 else 'm'}{int(round(abs(d) * 10)):03d}"
            for r, d in zip(ra_c, dec_c, strict=True)
        ],
        dtype="S8",
    )
    return brickid.astype(np.int32), names


def galactic_ebv(ra: np.ndarray, dec: np.ndarray, healpix: np.ndarray) -> np.ndarray:
    """Smooth Galactic E(B-V): a cosecant law in latitude with pixel-to-pixel patchiness."""
    b = SkyCoord(ra=np.asarray(ra) * u.deg, dec=np.asarray(dec) * u.deg).galactic.b.radian
    base = 0.012 / np.maximum(np.abs(np.sin(b)), 0.15)
    patch = 1.0 + 0.3 * np.sin(np.asarray(healpix) * 2.399963)
    return (base * patch).astype(np.float32)


def desiname(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """DESINAME 'DESI JRRR.RRRR+DD.DDDD' from truncated coordinates."""
    out = []
    for r, d in zip(np.asarray(ra), np.asarray(dec), strict=True):
        rt = np.floor(r * 1e4) / 1e4
        dt = np.floor(abs(d) * 1e4) / 1e4
        out.append(f"DESI J{rt:08.4f}{'+' if d >= 0 else '-'}{dt:07.4f}")
    return np.array(out, dtype="S22")


def observe_plan(
    rng: np.random.Generator, n: int, program: str, survey: str, z: np.ndarray, cls: np.ndarray
) -> dict[str, np.ndarray]:
    """Exposures of each target: count, total exposure time, nights, tiles, fibers."""
    if program == "dark":
        # Lyman-alpha QSOs (z > 2.1) are re-observed up to four times in DESI main dark.
        nexp = np.where((cls == b"QSO") & (z > 2.1), rng.integers(2, 5, n), rng.integers(1, 3, n))
        per = rng.normal(1000.0, 150.0, n).clip(500)
    else:
        nexp = rng.integers(1, 3, n)
        per = rng.normal(300.0, 60.0, n).clip(150)
    if survey == "sv3":
        nexp = nexp + 1
    night0 = 20210514 if survey == "main" else 20210405
    mjd0 = 59348.0 if survey == "main" else 59309.0
    day = rng.integers(0, 700, n)
    return {
        "NUMEXP": nexp.astype(np.int16),
        "EXPTIME": (nexp * per).astype(np.float32),
        "MJD": mjd0 + day + rng.random(n) * 0.3,
        "NIGHT0": night0,
        "DAY": day,
        "FIBER": rng.integers(0, 5000, n).astype(np.int32),
        "TILEID": rng.integers(1000, 42000, n).astype(np.int32),
    }


def _night(mjd: np.ndarray) -> np.ndarray:
    from astropy.time import Time

    t = Time(np.asarray(mjd) - 0.5, format="mjd").to_value("iso", subfmt="date")
    return np.array([int(s.replace("-", "")) for s in np.atleast_1d(t)], dtype=np.int32)


def fibermap_rows(cat: dict, obs: dict, survey: str, rng: np.random.Generator) -> np.ndarray:
    """FIBERMAP rows (DR1 columns) for a batch of targets."""
    cols = fibermap_columns(survey)
    n = len(cat["TARGETID"])
    fm = np.zeros(n, dtype=dtype_of(cols))
    fm["TARGETID"] = cat["TARGETID"]
    fm["TARGET_RA"], fm["TARGET_DEC"] = cat["RA"], cat["DEC"]
    fm["PLATE_RA"], fm["PLATE_DEC"] = cat["RA"], cat["DEC"]
    fm["MEAN_FIBER_RA"] = cat["RA"] + rng.normal(0, 0.1 / 3600, n)
    fm["MEAN_FIBER_DEC"] = cat["DEC"] + rng.normal(0, 0.1 / 3600, n)
    fm["STD_FIBER_RA"] = np.abs(rng.normal(0, 0.05, n))
    fm["STD_FIBER_DEC"] = np.abs(rng.normal(0, 0.05, n))
    fm["PMRA"], fm["PMDEC"], fm["PARALLAX"] = cat["PMRA"], cat["PMDEC"], cat["PARALLAX"]
    fm["REF_EPOCH"] = np.where(cat["REF_CAT"] == b"G2", 2015.5, 0.0)
    fm["REF_ID"], fm["REF_CAT"] = cat["REF_ID"], cat["REF_CAT"]
    for key in ("GAIA_PHOT_G_MEAN_MAG", "GAIA_PHOT_BP_MEAN_MAG", "GAIA_PHOT_RP_MEAN_MAG"):
        fm[key] = cat[key]
    fm["OBJTYPE"] = b"TGT"
    fm["FA_TYPE"] = 1
    fm["SUBPRIORITY"] = rng.random(n)
    fm["OBSCONDITIONS"] = np.where(cat["PROGRAM"] == b"dark", 1, 4)
    fm["RELEASE"] = RELEASE_DR9_SOUTH
    fm["BRICKID"], fm["BRICKNAME"] = cat["BRICKID"], cat["BRICKNAME"]
    fm["BRICK_OBJID"] = cat["TARGETID"] & ((1 << 22) - 1)
    fm["MORPHTYPE"] = cat["MORPHTYPE"]
    for j, band in enumerate(("G", "R", "Z", "W1", "W2")):
        fm[f"FLUX_{band}"] = cat["FLUX"][:, j]
        fm[f"FLUX_IVAR_{band}"] = cat["FLUX_IVAR"][:, j]
    for j, band in enumerate(("G", "R", "Z")):
        fiber = cat["FLUX_TRUE"][:, j] * cat["FIBER_FRAC"]
        fm[f"FIBERFLUX_{band}"] = fiber
        fm[f"FIBERTOTFLUX_{band}"] = fiber * (1 + np.abs(rng.normal(0, 0.03, n)))
    fm["EBV"] = cat["EBV"]
    fm["SERSIC"] = np.where(cat["MORPHTYPE"] == b"SER", rng.uniform(1, 4, n), 0.0)
    fm["SHAPE_R"] = cat["SHAPE_R"]
    e = rng.normal(0, 0.15, (n, 2)) * (cat["SHAPE_R"] > 0)[:, None]
    fm["SHAPE_E1"], fm["SHAPE_E2"] = e[:, 0], e[:, 1]
    fm["PHOTSYS"] = b"S"
    fm["PRIORITY_INIT"] = cat["PRIORITY_INIT"]
    fm["NUMOBS_INIT"] = np.where(cat["CLASS"] == b"QSO", 4, 1)
    prefix = "SV3_" if survey == "sv3" else ""
    fm[f"{prefix}DESI_TARGET"] = cat["DESI_TARGET"]
    fm[f"{prefix}BGS_TARGET"] = cat["BGS_TARGET"]
    fm[f"{prefix}MWS_TARGET"] = cat["MWS_TARGET"]
    fm["COADD_NUMEXP"] = obs["NUMEXP"]
    fm["COADD_EXPTIME"] = obs["EXPTIME"]
    fm["COADD_NUMNIGHT"] = np.minimum(obs["NUMEXP"], rng.integers(1, 3, n))
    fm["COADD_NUMTILE"] = fm["COADD_NUMNIGHT"]
    fm["MEAN_DELTA_X"] = rng.normal(0, 0.002, n)
    fm["MEAN_DELTA_Y"] = rng.normal(0, 0.002, n)
    fm["RMS_DELTA_X"] = np.abs(rng.normal(0.005, 0.002, n))
    fm["RMS_DELTA_Y"] = np.abs(rng.normal(0.005, 0.002, n))
    fm["MEAN_PSF_TO_FIBER_SPECFLUX"] = PSF_FIBER_FRACTION + rng.normal(0, 0.02, n)
    span = (obs["NUMEXP"] - 1) * rng.uniform(0.0, 60.0, n)
    fm["MIN_MJD"] = obs["MJD"]
    fm["MAX_MJD"] = obs["MJD"] + span
    fm["MEAN_MJD"] = obs["MJD"] + span / 2
    return fm


def exp_fibermap_rows(fm: np.ndarray, obs: dict, rng: np.random.Generator) -> np.ndarray:
    """EXP_FIBERMAP: one row per exposure of each target."""
    from .datamodel import EXP_FIBERMAP

    nexp = obs["NUMEXP"].astype(int)
    idx = np.repeat(np.arange(len(fm)), nexp)
    k = np.concatenate([np.arange(m) for m in nexp]) if len(nexp) else np.zeros(0, int)
    ef = np.zeros(len(idx), dtype=dtype_of(EXP_FIBERMAP))
    ef["TARGETID"] = fm["TARGETID"][idx]
    ef["PRIORITY"] = fm["PRIORITY_INIT"][idx]
    ef["SUBPRIORITY"] = fm["SUBPRIORITY"][idx]
    mjd = fm["MIN_MJD"][idx] + (fm["MAX_MJD"][idx] - fm["MIN_MJD"][idx]) * k / np.maximum(
        nexp[idx] - 1, 1
    )
    ef["MJD"] = mjd
    ef["NIGHT"] = _night(mjd) if len(mjd) else ef["NIGHT"]
    ef["EXPID"] = 90000 + (np.floor(mjd - 59000).astype(np.int32) * 40) + k
    ef["TILEID"] = obs["TILEID"][idx] + k
    ef["EXPTIME"] = obs["EXPTIME"][idx] / nexp[idx]
    fiber = (obs["FIBER"][idx] + 37 * k) % 5000
    ef["FIBER"] = fiber
    ef["PETAL_LOC"] = fiber // 500
    ef["DEVICE_LOC"] = fiber % 500
    ef["LOCATION"] = ef["PETAL_LOC"].astype(np.int64) * 1000 + ef["DEVICE_LOC"]
    ef["FIBERASSIGN_X"] = rng.uniform(-400, 400, len(idx))
    ef["FIBERASSIGN_Y"] = rng.uniform(-400, 400, len(idx))
    ef["LAMBDA_REF"] = 5400.0
    ef["PLATE_RA"], ef["PLATE_DEC"] = fm["PLATE_RA"][idx], fm["PLATE_DEC"][idx]
    ef["NUM_ITER"] = 2
    ef["FIBER_X"], ef["FIBER_Y"] = ef["FIBERASSIGN_X"], ef["FIBERASSIGN_Y"]
    ef["DELTA_X"] = rng.normal(0, 0.005, len(idx))
    ef["DELTA_Y"] = rng.normal(0, 0.005, len(idx))
    ef["FIBER_RA"] = fm["TARGET_RA"][idx] + rng.normal(0, 0.1 / 3600, len(idx))
    ef["FIBER_DEC"] = fm["TARGET_DEC"][idx] + rng.normal(0, 0.1 / 3600, len(idx))
    ef["PSF_TO_FIBER_SPECFLUX"] = PSF_FIBER_FRACTION + rng.normal(0, 0.02, len(idx))
    ef["IN_COADD_B"] = ef["IN_COADD_R"] = ef["IN_COADD_Z"] = True
    return ef

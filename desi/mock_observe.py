"""Observing one healpix pixel of the mock: coadds, redrock files and catalog rows."""

from __future__ import annotations

import numpy as np

from .coadd import ArmSpectra, CoaddSpectra, write_coadd
from .datamodel import ARMS, EXP_FIBERMAP, SCORES, fibermap_columns, units_of
from .layout import DR1Layout
from .mock_instrument import apply_resolution, arm_slice, noise_model, resolution_data
from .mock_pixel import PixelConfig, _galaxies, _qsos, _rng, _stars
from .mock_redrock import fastspec_rows, scores, simulate_redrock, snr2_proxy, tsnr2, zcatalog_rows
from .mock_targets import desiname, exp_fibermap_rows, fibermap_rows, observe_plan
from .redrock import write_redrock
from .zcatalog import find_primary

NPIX_TOTAL = sum(n for *_, n in ARMS.values())


def _subset(members: list[tuple[dict, np.ndarray]]) -> dict:
    keys = [k for k in members[0][0] if k != "MODEL"]
    return {k: np.concatenate([np.asarray(c[k])[sel] for c, sel in members]) for k in keys}


def _observe(cfg, layout, rng, pixel, survey, program, members):
    sub = _subset(members)
    n = len(sub["TARGETID"])
    bright = np.full(n, program == "bright")
    obs = observe_plan(rng, n, program, survey, sub["Z_RR_TRUE"], sub["CLASS"])
    fm = fibermap_rows(sub, obs, survey, rng)
    ef = exp_fibermap_rows(fm, obs, rng)
    ts = tsnr2(obs["EXPTIME"], bright)
    snr2 = snr2_proxy(
        sub["FLUX_TRUE"][:, 1] * sub["FIBER_FRAC"],
        obs["EXPTIME"],
        obs["NUMEXP"].astype(float),
        bright,
    )
    npix = NPIX_TOTAL - rng.poisson(8, n)
    snr_arm = np.repeat(np.sqrt(snr2 / NPIX_TOTAL)[:, None], 3, axis=1)
    has = sub["HAS_SPECTRUM"].astype(bool)
    arms = {}
    if has.any():
        model = np.concatenate([c["MODEL"](sel & c["HAS_SPECTRUM"]) for c, sel in members])
        fiber_scale = rng.normal(1.0, 0.04, has.sum())
        good = np.zeros(has.sum(), dtype=int)
        for k, arm in enumerate("BRZ"):
            rdata = resolution_data(arm, fiber_scale)
            conv = apply_resolution(rdata, model[:, arm_slice(arm)])
            flux, ivar, mask = noise_model(
                arm, conv, obs["EXPTIME"][has], obs["NUMEXP"][has], bright[has], rng
            )
            jump = sub["JUMP_ARM"][has] == arm.encode()
            flux[jump] *= sub["JUMP_SCALE"][has][jump, None].astype(np.float32)
            ivar[jump] /= (sub["JUMP_SCALE"][has][jump, None] ** 2).astype(np.float32)
            arms[arm] = (flux, ivar, mask, rdata)
            good += np.sum(ivar > 0, axis=1)
            snr_arm[has, k] = np.median(flux * np.sqrt(ivar), axis=1)
        npix[has] = good
    rr = simulate_redrock(rng, sub, snr2, npix)
    zc = zcatalog_rows(rr, fm, ts, survey, program, pixel, desiname(sub["RA"], sub["DEC"]))
    units = {
        "FIBERMAP": units_of(fibermap_columns(survey)),
        "EXP_FIBERMAP": units_of(EXP_FIBERMAP),
        "SCORES": units_of(SCORES),
    }
    write_redrock(
        layout.redrock(survey, program, pixel),
        rr,
        fm,
        survey=survey,
        program=program,
        healpix=pixel,
        exp_fibermap=ef,
        tsnr2=ts,
        units=units,
    )
    if has.any():
        from .datamodel import wavelength

        spec = CoaddSpectra(
            fibermap=fm[has],
            exp_fibermap=ef[np.isin(ef["TARGETID"], fm["TARGETID"][has])],
            arms={a: ArmSpectra(wavelength(a), f, i, m, r) for a, (f, i, m, r) in arms.items()},
            scores=scores(
                {a: v[0] for a, v in arms.items()},
                {a: v[1] for a, v in arms.items()},
                ts[has],
                fm["TARGETID"][has],
            ),
        )
        write_coadd(
            layout.coadd(survey, program, pixel),
            spec,
            survey=survey,
            program=program,
            healpix=pixel,
            units=units,
        )
    return zc, rr, snr_arm, sub


def process_pixel(cfg: PixelConfig, task: dict) -> dict:
    """Generate, observe and write one healpix pixel; return its catalog and truth rows."""
    pixel = int(task["pixel"])
    layout = DR1Layout(cfg.root)
    truth, cats = {}, []
    if len(task["qso_objid"]):
        truth["QSO"], c = _qsos(cfg, pixel, task)
        cats.append(c)
    if len(task["gal_objid"]):
        truth["GALAXY"], c = _galaxies(cfg, pixel, task)
        cats.append(c)
    if len(task["star_objid"]):
        truth["STAR"], c = _stars(cfg, pixel, task)
        cats.append(c)
    rng = _rng(cfg, pixel, 4)
    out = {"pixel": pixel, "truth": truth, "zpix": {}, "fastspec": None}
    for program in ("bright", "dark"):
        done = {}
        for survey in ("main", "sv3"):
            members = []
            for c in cats:
                sel = c["PROGRAM"] == program.encode()
                if survey == "sv3":
                    sel = sel & c["DUP"]
                if sel.any():
                    members.append((c, sel))
            if members:
                done[survey] = _observe(cfg, layout, rng, pixel, survey, program, members)
        if not done:
            continue
        # ZCAT_NSPEC / ZCAT_PRIMARY across all zpix files of the mock (see generate_mock).
        allzc = np.concatenate([done[s][0][["TARGETID", "ZWARN", "TSNR2_LRG"]] for s in done])
        nspec, primary = find_primary(allzc["TARGETID"], allzc["ZWARN"], allzc["TSNR2_LRG"])
        start = 0
        for survey, (zc, rr, snr_arm, sub) in done.items():
            zc["ZCAT_NSPEC"] = nspec[start : start + len(zc)]
            zc["ZCAT_PRIMARY"] = primary[start : start + len(zc)]
            start += len(zc)
            out["zpix"][(survey, program)] = zc
            if survey == "main" and program == "bright" and "GALAXY" in truth:
                gal = sub["CLASS"] == b"GALAXY"
                gt = truth["GALAXY"]
                order = np.searchsorted(
                    gt["TARGETID"], sub["TARGETID"][gal], sorter=np.argsort(gt["TARGETID"])
                )
                rows = np.argsort(gt["TARGETID"])[order]
                catg = {k: v[gal] for k, v in sub.items()}
                out["fastspec"] = fastspec_rows(rng, catg, gt[rows], rr[gal], zc[gal], snr_arm[gal])
    return out

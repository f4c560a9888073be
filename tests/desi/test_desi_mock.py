"""The mock DR1: structure, determinism and the physics it injects."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits
from desilab.desi import (
    CoaddFile,
    DR1Layout,
    generate_mock,
    good_redshift,
    read_coadd,
    read_fastspec,
    read_redrock,
    read_truth,
    read_voidfinder,
    read_zpix,
)
from desilab.desi.mock_instrument import full_wavelength
from desilab.desi.mock_lss import lognormal_box, smooth
from desilab.desi.mock_qso import LINE_NAMES, qso_model
from desilab.desi.mock_star import star_sed

C_KMS = 299792.458


def test_tree_and_catalogs_are_consistent(mock_dr1):
    summary, layout = mock_dr1
    zb = read_zpix(layout.zpix("main", "bright"))
    zd = read_zpix(layout.zpix("main", "dark"))
    gal = read_truth(summary.outdir, "galaxy")
    qso = read_truth(summary.outdir, "qso")
    assert len(gal) == summary.n_galaxy and len(qso) == summary.n_qso
    assert set(gal["TARGETID"]) <= set(zb["TARGETID"])
    assert set(qso["TARGETID"]) <= set(zd["TARGETID"])
    assert np.all(zb["HEALPIX"] == zb["SPGRPVAL"]) and set(zb["SURVEY"]) == {"main"}
    # Every coadd row has a redrock row in the same pixel; redrock rows are the zpix rows.
    n_spec = 0
    for hp in layout.iter_healpix():
        with CoaddFile(hp.coadd) as f:
            tid = f.targetids
            n_spec += len(tid)
            assert set(f.exp_fibermap(tid)["TARGETID"]) == set(tid)
            nexp = f.fibermap()["COADD_NUMEXP"].sum()
            assert len(f.exp_fibermap(tid)) == nexp
        rr = read_redrock(hp.redrock)
        assert set(tid) <= set(rr["TARGETID"])
        z = read_zpix(layout.zpix(hp.survey, hp.program), columns=["TARGETID", "HEALPIX"])
        assert set(rr["TARGETID"]) == set(z["TARGETID"][z["HEALPIX"] == hp.healpix])
    assert n_spec == summary.n_spectra + sum(
        int(
            np.sum(
                read_truth(summary.outdir, k)["HAS_SPECTRUM"]
                & read_truth(summary.outdir, k)["SV3_DUPLICATE"]
            )
        )
        for k in ("qso", "galaxy", "star")
    )
    # ZCAT_PRIMARY gives one row per TARGETID over all zpix files; duplicates exist.
    allz = [
        read_zpix(p, columns=["TARGETID", "ZCAT_PRIMARY", "ZCAT_NSPEC"])
        for p in layout.zpix_files()
    ]
    tid = np.concatenate([t["TARGETID"] for t in allz])
    prim = np.concatenate([t["ZCAT_PRIMARY"] for t in allz])
    nspec = np.concatenate([t["ZCAT_NSPEC"] for t in allz])
    assert len(np.unique(tid[prim])) == prim.sum() == len(np.unique(tid))
    assert (nspec == 2).sum() > 0 and np.all(nspec >= 1)
    # Redrock results behave like DR1: mostly good, with some failures.
    good = good_redshift(zb)
    assert 0.9 < good.mean() < 1.0
    fs = read_fastspec(layout)
    assert layout.fastspec_version() == "v2.1"
    assert set(fs["TARGETID"]) == set(gal["TARGETID"])
    for cap in ("NGC", "SGC"):
        maximals, holes = read_voidfinder(layout.desivast_voidfinder(cap))
        assert set(holes["VOID"]) <= set(maximals["VOID"])


def test_lazy_targetid_reads_match_full_reads(mock_dr1):
    _, layout = mock_dr1
    hp = max(layout.iter_healpix("main", "dark"), key=lambda h: h.coadd.stat().st_size)
    full = read_coadd(hp.coadd)
    pick = [int(full.targetid[-1]), int(full.targetid[0]), int(full.targetid[len(full) // 2])]
    rows = [len(full) - 1, 0, len(full) // 2]
    part = read_coadd(hp.coadd, targetids=pick)
    assert part.targetid.tolist() == pick
    for arm in "BRZ":
        for attr in ("flux", "ivar", "mask", "resolution"):
            assert np.array_equal(
                getattr(part.arms[arm], attr), getattr(full.arms[arm], attr)[rows]
            )
        # ivar = 0 marks masked pixels; the resolution columns sum to one.
        a = part.arms[arm]
        assert np.all(a.ivar[a.mask != 0] == 0)
        assert np.allclose(a.resolution.sum(axis=1), 1.0, atol=1e-5)


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.fits"))
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = {
        "n_qso": 30,
        "n_galaxy": 200,
        "n_star": 20,
        "progress": False,
        "workers": 1,
        "qso_spectra_fraction": 1.0,
        "galaxy_spectra_fraction": 0.2,
    }
    a = generate_mock(tmp_path / "a", seed=5, **kw)
    generate_mock(tmp_path / "b", seed=5, **kw)
    c = generate_mock(tmp_path / "c", seed=6, **kw)
    ha, hb, hc = (_hashes(tmp_path / x) for x in "abc")
    assert ha == hb and len(ha) > 10
    assert ha != hc
    za, zc = (read_zpix(DR1Layout(s.data_root).zpix("main", "dark")) for s in (a, c))
    assert not np.array_equal(za["Z"], zc["Z"][: len(za)] if len(zc) >= len(za) else zc["Z"])


def test_qso_line_lands_at_observed_wavelength(mock_dr1):
    summary, _ = mock_dr1
    qso = read_truth(summary.outdir, "qso").as_array()
    wave = full_wavelength()
    j = LINE_NAMES.index("MGII")
    sel = qso[(qso["Z"] > 0.5) & (qso["Z"] < 2.3) & (qso["ANOMALY"] == "NONE")][:5]
    assert len(sel)
    no_line = sel.copy()
    no_line["LINE_EW"][:, j] = 0.0
    diff = qso_model(sel, wave)["flux"] - qso_model(no_line, wave)["flux"]
    peak = wave[np.argmax(diff, axis=1)]
    assert np.all(np.abs(peak - 2798.75 * (1 + sel["Z"])) <= 0.8)


def test_galaxy_halpha_in_stored_spectrum(mock_dr1):
    summary, layout = mock_dr1
    gal = read_truth(summary.outdir, "galaxy")
    gal = gal[gal["HAS_SPECTRUM"]]
    best = gal[np.argmax(gal["LINE_FLUX"][:, 7])]  # HALPHA
    lam = 6564.608 * (1 + best["Z"])
    path = layout.coadd("main", "bright", int(best["HEALPIX"]))
    spec = read_coadd(path, targetids=[int(best["TARGETID"])])
    arm = "Z" if lam > 7600 else "R"
    w, f = spec.arms[arm].wave, spec.arms[arm].flux[0]
    win = np.abs(w - lam) < 30
    assert abs(w[win][np.argmax(f[win])] - lam) < 2.0


def _bi_reference(wave_rest, ratio, lam0, vmax, width):
    """Straightforward BI/AI: troughs below 0.9 counted once wider than `width`."""
    v = C_KMS * (wave_rest - lam0) / lam0
    total, run_start = 0.0, None
    for k in range(len(v)):
        inside = -25000 <= v[k] < vmax and ratio[k] < 0.9
        if inside and run_start is None:
            run_start = k
        if run_start is not None and (not inside or k == len(v) - 1):
            end = k - 1 if not inside else k
            vv, ff = v[run_start : end + 1], ratio[run_start : end + 1]
            if vv[-1] - vv[0] > width:
                for m in range(1, len(vv)):
                    if vv[m - 1] - vv[0] >= width:
                        total += (1 - ff[m] / 0.9) * (vv[m] - vv[m - 1])
            run_start = None
    return total


def test_bal_truth_matches_noiseless_spectrum(mock_dr1):
    summary, _ = mock_dr1
    qso = read_truth(summary.outdir, "qso").as_array()
    bal = qso[qso["BAL"] & (qso["ANOMALY"] == "NONE")]
    assert len(bal) >= 5
    assert 0.08 < qso["BAL"][qso["Z"] >= 1.6].mean() < 0.25
    wave = full_wavelength()
    model = qso_model(bal, wave, star_sed=star_sed)
    ratio = model["flux"] / model["unabsorbed"]
    for i, row in enumerate(bal):
        rest = wave / (1 + row["Z"])
        bi = _bi_reference(rest, ratio[i], 1549.0, -3000.0, 2000.0)
        ai = _bi_reference(rest, ratio[i], 1549.0, 0.0, 450.0)
        assert bi == pytest.approx(row["BI_CIV"], rel=1e-3, abs=1.0)
        assert ai == pytest.approx(row["AI_CIV"], rel=1e-3, abs=1.0)
    assert np.any(bal["BI_CIV"] > 0)


def test_lognormal_field_has_voids(mock_dr1):
    rng = np.random.default_rng(3)
    rho = lognormal_box(rng, (64, 64, 64), 4.0)
    assert rho.mean() == pytest.approx(1.0, abs=0.1)
    smoothed = smooth(rho, 4.0, 14.8)  # 10 Mpc/h
    assert smoothed.min() < 0.35 and np.mean(smoothed < 0.5) > 0.08
    low = smoothed < 0.7
    # Underdense regions hold much less mass than their share of the volume.
    assert rho[low].sum() / rho.sum() < 0.5 * low.mean()
    summary, _ = mock_dr1
    gal = read_truth(summary.outdir, "galaxy")
    # 35 % of the volume is flagged void but holds far fewer of the galaxies.
    assert gal["IN_VOID"].mean() < 0.25
    assert np.median(gal["DELTA_8"][gal["IN_VOID"]]) < np.median(gal["DELTA_8"][~gal["IN_VOID"]])
    assert gal.meta["VDLOGM"] == pytest.approx(-0.2)


def test_photometry_and_units(mock_dr1):
    summary, layout = mock_dr1
    z = read_zpix(layout.zpix("main", "bright"))
    assert str(z["FLUX_R"].unit) == "nmgy" and z["TARGET_RA"].unit == "deg"
    gal = z["SPECTYPE"] == "GALAXY"
    rmag = 22.5 - 2.5 * np.log10(
        np.clip(z["FLUX_R"][gal] / 10 ** (-0.4 * 2.165 * z["EBV"][gal]), 1e-3, None)
    )
    assert np.percentile(rmag, 95) < 20.4 and np.percentile(rmag, 5) > 14
    with fits.open(next(layout.iter_healpix("main", "dark")).coadd) as hdul:
        assert hdul["R_FLUX"].header["BUNIT"] == "10**-17 erg/(s cm2 Angstrom)"
        assert hdul["R_RESOLUTION"].data.shape[1] == 11


def test_cli_mock_app(tmp_path, capsys):
    from desilab.desi.cli import MockApp

    app = MockApp()
    app.initialize(
        [
            str(tmp_path / "cli"),
            "--n-qso",
            "12",
            "--n-galaxy",
            "80",
            "--n-star",
            "6",
            "--seed",
            "9",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert (app.n_qso, app.n_galaxy, app.n_star, app.seed) == (12, 80, 6, 9)
    app.start()
    assert '"n_qso": 12' in capsys.readouterr().out
    assert DR1Layout(tmp_path / "cli" / "dr1").zpix("main", "dark").is_file()
    assert (tmp_path / "cli" / "truth" / "truth-qso.fits").is_file()

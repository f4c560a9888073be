"""AGN outflows: BAL indices, continuum, [O III] fits, flags, energetics and plots.

The accuracy tests use spectra made with the mock DR1's own physics and
instrument (desilab.desi.mock_qso, mock_instrument): the QSO model with its
injected BAL troughs or [O III] wings, the resolution matrix and the noise
model, for QSOs brighter than most of the mock so the S/N cuts of the
targets are reached by many objects.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from desilab.desi import ArmSpectra, CoaddSpectra
from desilab.desi.mock_instrument import (
    apply_resolution,
    arm_slice,
    filter_weights,
    full_wavelength,
    noise_model,
    photometry_grid,
    resolution_data,
)
from desilab.desi.mock_physics import C_KMS, balnicity
from desilab.desi.mock_qso import bal_indices, draw_qso_params, qso_model
from desilab.projects.outflows import (
    Assumptions,
    FitConfig,
    Flag,
    RadiusLuminosity,
    combine_arms,
    fit_oiii_batch,
    fit_spectra,
    measure_bal_batch,
    oiii_energetics,
    summary_figures,
    write_report,
)
from desilab.projects.outflows.bal import balnicity_draws
from desilab.projects.outflows.energetics import bal_energetics
from desilab.projects.outflows.spectra import arm_mismatch


def simulate(n, seed, *, kind, rmag, exptime=1000.0):
    """Spectra of ``n`` mock QSOs of one kind ('bal', 'outflow', 'plain_low_z')."""
    rng = np.random.default_rng(seed)
    pool = draw_qso_params(rng, 60 * n, anomaly_fraction=0.0)
    z = pool["Z"]
    sel = {
        "bal": pool["BAL"] & (z < 3.5),
        "outflow": pool["OUTFLOW"] & (z > 0.5) & (z < 0.9),
        "plain_low_z": ~pool["OUTFLOW"] & (z > 0.5) & (z < 0.9),
    }[kind]
    p = pool[sel][:n].copy()
    assert len(p) == n, "not enough QSOs of this kind drawn"
    p["TARGETID"] = np.arange(n) + 1
    p["RMAG"] = rng.uniform(*rmag, n)
    # The mock's truth BI/AI: DESI definitions on the injected troughs, DESI pixel grid.
    p["BI_CIV"], p["AI_CIV"], p["BI_SIIV"], p["AI_SIIV"] = bal_indices(p, full_wavelength()).T
    sed = qso_model(p, photometry_grid(), forest=False)["flux"]
    p["SCALE"] = 10 ** (-0.4 * p["RMAG"]) / (sed @ filter_weights())[:, 1]
    wave = full_wavelength()
    model = qso_model(p, wave, forest=True)["flux"]
    arms = {}
    for arm in "BRZ":
        rdata = resolution_data(arm, rng.normal(1.0, 0.04, n))
        conv = apply_resolution(rdata, model[:, arm_slice(arm)])
        flux, ivar, mask = noise_model(
            arm, conv, np.full(n, exptime), np.ones(n, int), np.zeros(n, bool), rng
        )
        arms[arm] = ArmSpectra(wave[arm_slice(arm)], flux, ivar, mask, rdata)
    return combine_arms(CoaddSpectra(Table({"TARGETID": p["TARGETID"]}), arms), p["Z"]), p


# -- BAL definitions ------------------------------------------------------------------------


def test_bi_and_ai_follow_the_desi_definitions():
    v = np.linspace(-30000.0, 2000.0, 3201)  # 10 km/s steps
    wave = 1549.0 * (1 + v / C_KMS)
    f = np.ones_like(v)
    f[(v > -10000) & (v < -5000)] = 0.5  # counts for BI and AI
    f[(v > -2500) & (v < -1000)] = 0.6  # too red for BI, counts for AI
    f[(v > -20000) & (v < -19000)] = 0.5  # too narrow for BI
    f[(v > -28000) & (v < -26000)] = 0.2  # outside -25,000 km/s
    for kind, vtop in (("BI", -3000.0), ("AI", 0.0)):
        sel = (v >= -25000) & (v < vtop)
        got = balnicity_draws(v[sel], f[sel][None], np.zeros(sel.sum()), kind, error_scaling=0)[0]
        assert got == pytest.approx(balnicity(wave, f, "CIV", kind), rel=0.01)
    sel = (v >= -25000) & (v < -3000)
    bi = balnicity_draws(v[sel], f[sel][None], np.zeros(sel.sum()), "BI", error_scaling=0)[0]
    assert bi == pytest.approx((1 - 0.5 / 0.9) * (5000 - 2000), rel=0.01)


def test_bal_measurements_of_bright_mock_bals():
    spectra, truth = simulate(40, 11, kind="bal", rmag=(18.0, 19.5))
    res = measure_bal_batch(spectra.wave, spectra.flux, spectra.ivar, spectra.z)
    bi = np.array([r.values["BI_CIV"] for r in res])
    big = truth["BI_CIV"] > 500
    assert big.sum() >= 15
    rel = np.abs(bi[big] - truth["BI_CIV"][big]) / truth["BI_CIV"][big]
    assert np.median(rel) < 0.1
    # Every BI-BAL is found, and troughs come with DESI-style velocities.
    assert np.all(bi[truth["BI_CIV"] > 300] > 0)
    r = res[int(np.argmax(bi))]
    assert r.values["NCIV_2000"] >= 1 and len(r.troughs) >= 1
    vmin, vmax = r.values["VMIN_CIV_2000"][0], r.values["VMAX_CIV_2000"][0]
    assert 3000 <= vmin < vmax <= 25000
    assert r.values["ERR_BI_CIV"] > 0
    t = r.troughs[0]
    assert 0 < t.depth <= 1 and vmin <= t.posmin <= vmax
    # The continuum follows the unabsorbed spectrum outside the troughs.
    cont = r.continuum
    red = (cont.wave > 1560) & (cont.wave < 2300) & (cont.ivar > 0)
    assert abs(np.median(cont.flux[red] / cont.model[red]) - 1) < 0.03


# -- [O III] --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bright_outflows():
    spectra, truth = simulate(60, 3, kind="outflow", rmag=(18.0, 19.5))
    fits = fit_oiii_batch(spectra.wave, spectra.flux, spectra.ivar, spectra.z,
                          lsf_sigma_angstrom=spectra.lsf)  # fmt: skip
    return spectra, truth, fits


def test_oiii_wing_velocity_within_100_kms_at_snr_above_10(bright_outflows):
    _, truth, fits = bright_outflows
    wing = np.array([f.values["OIII_WING"] for f in fits])
    snr = np.array([f.values.get("OIII_WING_SNR") or 0.0 for f in fits], dtype=float)
    dv = np.array([f.values["OIII_WING_VSHIFT"] for f in fits], dtype=float)
    assert wing.mean() > 0.8, "the BIC keeps the wing of most bright outflows"
    good = wing & (snr > 10)
    assert good.sum() >= 20
    err = np.abs(dv[good] - truth["OIII_WING_VSHIFT"][good])
    assert np.median(err) < 100
    assert np.mean(err < 100) >= 0.85
    sigma = np.array([f.values["OIII_WING_SIGMA"] for f in fits], dtype=float)[good]
    assert np.median(np.abs(sigma / truth["OIII_WING_SIGMA"][good] - 1)) < 0.2
    vmax = np.array([f.values["OIII_VMAX"] for f in fits], dtype=float)[good]
    assert np.allclose(vmax, np.abs(dv[good]) + 2 * sigma, rtol=1e-6)
    frac = np.array([f.values["OIII_WING_FRAC"] for f in fits], dtype=float)[good]
    assert np.median(np.abs(frac - truth["OIII_WING_FRAC"][good])) < 0.1


def test_oiii_core_and_luminosity(bright_outflows):
    spectra, truth, fits = bright_outflows
    core = np.array([f.values["OIII_CORE_SIGMA"] for f in fits], dtype=float)
    ok = np.array([f.values["OIII_WING_SNR"] or 0 for f in fits], dtype=float) > 10
    assert np.median(np.abs(core[ok] - truth["OIII_CORE_SIGMA"][ok])) < 30
    lum = np.array([f.values["LOG_L_OIII"] for f in fits], dtype=float)
    err = np.array([f.values["LOG_L_OIII_ERR"] for f in fits], dtype=float)
    assert np.all(np.isfinite(lum)) and np.all((lum > 40) & (lum < 46)) and np.all(err > 0)
    w80 = np.array([f.values["OIII_W80"] for f in fits], dtype=float)
    assert np.all(w80[ok] > 2.5 * core[ok])


def test_oiii_wing_is_not_invented_for_plain_qsos():
    spectra, _ = simulate(30, 5, kind="plain_low_z", rmag=(18.0, 19.5))
    fits = fit_oiii_batch(spectra.wave, spectra.flux, spectra.ivar, spectra.z,
                          lsf_sigma_angstrom=spectra.lsf)  # fmt: skip
    assert np.mean([f.values["OIII_WING"] for f in fits]) <= 0.1
    forced = fit_oiii_batch(spectra.wave, spectra.flux[:3], spectra.ivar[:3], spectra.z[:3],
                            wing="on")  # fmt: skip
    assert all(f.values["OIII_WING"] for f in forced)


# -- flags, not crashes ---------------------------------------------------------------------


def test_missing_coverage_and_nans_give_flags_not_crashes():
    spectra, _ = simulate(6, 7, kind="bal", rmag=(19.0, 19.5))
    spectra.z[0] = 1.2  # neither BAL nor [O III] in range
    spectra.flux[1] = np.nan  # all NaN
    spectra.ivar[2] = 0.0  # no data
    spectra.flux[3, ::7] = np.inf  # some bad pixels
    spectra.ivar[4, : int(0.8 * spectra.ivar.shape[1])] = 0.0  # blue part missing
    spectra.z[5] = 6.5  # beyond the BAL range
    rows = [o.row for o in fit_spectra(spectra, FitConfig(n_mc=5))]
    for i in (0, 1, 2, 4, 5):
        assert rows[i]["FLAGS"] & Flag.NO_COVERAGE, rows[i]["FLAGS"]
        assert rows[i]["BI_CIV"] is None
    assert np.isfinite(rows[3]["BI_CIV"]) and rows[3]["FLAGS"] & Flag.NO_COVERAGE == 0
    # The same spectra as if they were at z = 0.7: [O III] fits.
    spectra.z[:] = 0.7
    rows = [o.row for o in fit_spectra(spectra, FitConfig(n_draws=20))]
    for i in (1, 2):
        assert rows[i]["OIII_FLUX"] is None and rows[i]["FLAGS"] & Flag.NO_COVERAGE
    assert rows[3]["FLAGS"] & Flag.BAD_PIXELS and rows[3]["OIII_FLUX"] is not None


def test_arm_jumps_are_flagged():
    spectra, _ = simulate(3, 8, kind="outflow", rmag=(18.0, 18.5))
    wave = full_wavelength()
    arms = {}
    for arm in "BRZ":
        sl = arm_slice(arm)
        scale = 1.5 if arm == "Z" else 1.0
        i0 = int(round((wave[sl][0] - spectra.wave[0]) / 0.8))
        n = sl.stop - sl.start
        flux = spectra.flux[:, i0 : i0 + n] * scale
        ivar = spectra.ivar[:, i0 : i0 + n] / scale**2
        arms[arm] = ArmSpectra(wave[sl], flux, ivar, np.zeros(flux.shape, np.uint32))
    coadd = CoaddSpectra(Table({"TARGETID": [1, 2, 3]}), arms)
    assert arm_mismatch(coadd).all()
    arms["Z"] = ArmSpectra(wave[arm_slice("Z")], arms["Z"].flux / 1.5, arms["Z"].ivar * 2.25,
                           arms["Z"].mask)  # fmt: skip
    assert not arm_mismatch(coadd).any()


# -- energetics -----------------------------------------------------------------------------


def test_oiii_energetics_follow_the_stated_formulae():
    a = Assumptions(n_e=500 * u.cm**-3, radius=1 * u.kpc, geometry="filled_cone")
    en = oiii_energetics(1e44 * u.erg / u.s, 1000 * u.km / u.s, 1e46 * u.erg / u.s, a)
    mass = 0.8e8 * u.Msun
    mdot = (3 * mass * 1000 * u.km / u.s / u.kpc).to(u.Msun / u.yr)
    edot = (0.5 * mdot * (1000 * u.km / u.s) ** 2).to(u.erg / u.s)
    assert en.mass[0].to_value(u.Msun) == pytest.approx(mass.value)
    assert en.mdot[0].to_value(u.Msun / u.yr) == pytest.approx(mdot.value, rel=1e-6)
    assert en.edot[0].to_value(u.erg / u.s) == pytest.approx(edot.value, rel=1e-6)
    assert en.pdot[0].to_value(u.dyn) == pytest.approx((mdot * 1000 * u.km / u.s).to_value(u.dyn))
    assert en.coupling[0].value == pytest.approx(edot.value / 1e46, rel=1e-6)
    lo, hi = en.bands["edot"][0]
    assert lo < edot.value < hi
    shell = oiii_energetics(1e44 * u.erg / u.s, 1000 * u.km / u.s, 1e46 * u.erg / u.s,
                            a.replace(geometry="shell", n_e=1000 * u.cm**-3))  # fmt: skip
    assert (shell.mdot[0] / en.mdot[0]).to_value(u.one) == pytest.approx(1 / 6)
    rl = RadiusLuminosity(2 * u.kpc, 1e42 * u.erg / u.s, 0.5)
    scaled = oiii_energetics(1e44 * u.erg / u.s, 1000 * u.km / u.s, 1e46 * u.erg / u.s,
                             a.replace(radius=None, radius_luminosity=rl))  # fmt: skip
    assert scaled.radius[0].to_value(u.kpc) == pytest.approx(20.0)


def test_assumptions_are_explicit_and_round_trip():
    a = Assumptions(n_e=300 * u.cm**-3, velocity="w80", covering=0.3)
    b = Assumptions.from_dict(a.to_dict())
    assert b == a and b.digest() == a.digest()
    assert a.digest() != Assumptions().digest()
    assert a.to_dict()["model_version"]
    with pytest.raises(ValueError, match="geometry"):
        Assumptions(geometry="sphere")
    with pytest.raises(ValueError, match="radius"):
        Assumptions(radius=None)
    en = bal_energetics(10000 * u.km / u.s, 1e46 * u.erg / u.s, Assumptions())
    expected = 4 * np.pi * 0.2 * (1 * u.kpc) ** 2 * 1.4 * 1.67262192e-24 * u.g * 1e20 / u.cm**2
    assert en.mass[0].to_value(u.Msun) == pytest.approx(expected.to_value(u.Msun), rel=1e-6)


# -- plots ----------------------------------------------------------------------------------


def test_summary_plots_are_bokeh_figures(tmp_path):
    rng = np.random.default_rng(1)
    rows = [
        {"Z": float(z), "BI_CIV": float(b), "OIII_WING": w, "OIII_VMAX": 900.0,
         "OIII_VMAX_ERR": 50.0, "LOG_L_OIII": 42.5, "LOG_EDOT": 43.0 + e, "LOG_EDOT_LO": 42.7 + e,
         "LOG_EDOT_HI": 43.3 + e, "LOG_LBOL": 45.5 + e, "ENERGETICS_TRACER": t,
         "LOG_COUPLING": -2.5, "NEEDS_REVIEW": False}
        for z, b, w, e, t in zip(rng.uniform(1.6, 4, 50), rng.choice([0, 800, 3000], 50),
                                 rng.random(50) < 0.5, rng.normal(0, 0.5, 50),
                                 rng.choice(["OIII", "BAL"], 50), strict=True)
    ]  # fmt: skip
    figs = summary_figures(rows)
    assert set(figs) == {"bi_distribution", "bal_fraction_vs_z", "vmax_vs_loiii", "edot_vs_lbol"}
    assert all(f.renderers for f in figs.values())
    lines = [r for r in figs["edot_vs_lbol"].renderers if type(r.glyph).__name__ == "Line"]
    offsets = sorted(np.round(np.asarray(r.data_source.data["y"]) - r.data_source.data["x"], 3)[0]
                     for r in lines)  # fmt: skip
    assert offsets == pytest.approx([np.log10(0.005), np.log10(0.05)], abs=1e-3)
    path = write_report(rows, tmp_path / "report.html")
    assert "BAL fraction" in path.read_text()

"""On a mock DR1 with an injected void effect, the whole chain finds it.

The mock draws galaxies from a lognormal density field; galaxies flagged IN_VOID
(smoothed density in the lowest 35 % of the volume) are less massive, have a higher
sSFR on the star-forming sequence (+0.15 dex, the header's VDLSSFR) and quench less,
so they are bluer. VoidFinder voids only partly coincide with IN_VOID regions, so with
our classification the effect is diluted: we ask for the right sign, beyond the
bootstrap interval, on every property. With the truth flags, in a mass-complete
star-forming subset (so that the flux limit does not select on sSFR), the measured
sSFR shift must contain the injected value in its interval.

Why the dilution (measured on this mock, seed 7): a void-minus-wall shift measures the
injected one times P(IN_VOID | void) - P(IN_VOID | wall). Our voids fill 48 % (NGC) and
41 % (SGC) of the survey volume, the IN_VOID regions 25 % and 39 % of it; in the NGC 81 %
of the IN_VOID volume is inside our voids but only 42 % of our void volume is IN_VOID.
95 % of the void galaxies are fainter than the volume limit; in the NGC 39 % lie within
2 Mpc/h of their void's surface (13 % IN_VOID there, 64 % deeper than 7 Mpc/h). In the
mass-complete star-forming subset P(IN_VOID | void) = 0.19 and P(IN_VOID | wall) = 0.02,
so a shift of ~0.02 is expected. The footprint is a 90 deg^2 pencil beam (46 % of the
NGC volume and 70 % of the SGC one within 10 Mpc/h of an edge) and the volume-limited
density is 2.5-2.8e-3 (h/Mpc)^3, under half SDSS DR7's. Even on a 7 500 deg^2
SDSS-density lognormal survey with a truth matched to VoidFinder (union of 10 Mpc/h
spheres, 62 % of the volume) the difference is 0.65, not 1: a binary VoidFinder
classification cannot return the full shift of a density-defined injection, so that
criterion is recorded as a strict xfail below.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.table import vstack
from desilab.desi import DR1Layout, generate_mock, read_truth
from desilab.projects.voids import (
    VFLAG_VOID,
    VFLAG_WALL,
    VoidCatalog,
    VoidStudy,
    classify_galaxies,
    compare_environments,
    load_galaxies,
)

pytestmark = pytest.mark.slow

EXPECTED_SIGN = {"G_R": -1, "LOGMSTAR": -1, "LOG_SSFR": +1, "DN4000": -1, "HALPHA_EW": +1}


@pytest.fixture(scope="module")
def mock():
    root = Path(tempfile.mkdtemp(prefix="desilab-voids-mock-", dir="/tmp"))
    try:
        summary = generate_mock(
            root,
            n_qso=0,
            n_galaxy=60_000,
            n_star=0,
            seed=7,
            progress=False,
            galaxy_spectra_fraction=0.0,
            qso_spectra_fraction=0.0,
            star_spectra_fraction=0.0,
            duplicate_fraction=0.0,
            workers=2,
        )
        yield summary, DR1Layout(summary.data_root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def studies(mock):
    summary, layout = mock
    galaxies = load_galaxies(layout)
    out = {cap: VoidStudy.run(layout, cap=cap, galaxies=galaxies) for cap in ("NGC", "SGC")}
    truth = read_truth(summary.outdir, "galaxy")
    order = np.argsort(truth["TARGETID"])
    table = vstack([s.sample.table for s in out.values()])
    pos = np.searchsorted(np.asarray(truth["TARGETID"])[order], table["TARGETID"])
    in_void = np.asarray(truth["IN_VOID"])[order][pos]
    vflag = np.concatenate([s.membership.vflag for s in out.values()])
    return out, table, vflag, in_void, truth.meta


def test_void_galaxies_are_bluer_lighter_and_more_star_forming(studies):
    out, table, vflag, in_void, _ = studies
    assert sum(len(s.catalog) for s in out.values()) > 30
    # VoidFinder voids are where the injected low-density regions are.
    assert in_void[vflag == VFLAG_VOID].mean() > 4 * in_void[vflag == VFLAG_WALL].mean()
    for c in compare_environments(table, vflag, n_boot=300, seed=1):
        sign = EXPECTED_SIGN[c.property]
        assert sign * c.ci[0] > 0 and sign * c.ci[1] > 0, c.row()
        assert c.mann_whitney[1] < 0.01, c.row()


def test_injected_ssfr_shift_is_recovered_within_its_interval(studies):
    _, table, _, in_void, meta = studies
    injected = float(meta["VDLSSFR"])
    z, logm = np.asarray(table["Z"]), np.asarray(table["LOGMSTAR"])
    complete_sf = (z < 0.15) & (logm > 10.3) & (np.asarray(table["LOG_SSFR"]) > -11.0)
    (c,) = compare_environments(
        table, np.where(in_void, 1, 0), {"LOG_SSFR": "sSFR"}, select=complete_sf, n_boot=1000
    )
    assert c.n_void > 100
    assert c.ci[0] <= injected <= c.ci[1], c.row()
    assert c.ci[0] > 0


def test_classified_ssfr_shift_matches_the_injection_diluted_by_purity(studies):
    """With VoidFinder environments only part of the void galaxies sit in the injected
    low-density regions (and a few wall galaxies do): the expected shift is the injected
    one times that purity difference, measured from the truth with the same matching.
    The measured shift must contain it in its interval."""
    _, table, vflag, in_void, meta = studies
    injected = float(meta["VDLSSFR"])
    z, logm = np.asarray(table["Z"]), np.asarray(table["LOGMSTAR"])
    lssfr = np.asarray(table["LOG_SSFR"])
    complete_sf = (z < 0.15) & (logm > 10.3) & (lssfr > -11.0)
    table = table.copy(copy_data=False)
    table["INJECTED"] = np.where(np.isfinite(lssfr), injected * in_void, np.nan)
    props = {"LOG_SSFR": "sSFR", "INJECTED": "injected shift"}
    measured, expected = compare_environments(table, vflag, props, select=complete_sf, n_boot=1000)
    assert measured.n_void == expected.n_void > 100
    assert 0 < expected.delta < injected / 2  # diluted, not gone
    assert measured.ci[0] <= expected.delta <= measured.ci[1], (measured.row(), expected.delta)


@pytest.mark.xfail(
    strict=True,
    reason="issue 7 item 4: VoidFinder environments dilute the injected shift by "
    "P(IN_VOID|void) - P(IN_VOID|wall), ~0.2 here (see the module docstring)",
)
def test_classified_ssfr_shift_contains_the_injected_value(studies):
    """The criterion as issue 7 states it, with our classification instead of the truth."""
    _, table, vflag, _, meta = studies
    injected = float(meta["VDLSSFR"])
    z, logm = np.asarray(table["Z"]), np.asarray(table["LOGMSTAR"])
    complete_sf = (z < 0.15) & (logm > 10.3) & (np.asarray(table["LOG_SSFR"]) > -11.0)
    (c,) = compare_environments(table, vflag, {"LOG_SSFR": "sSFR"}, select=complete_sf, n_boot=1000)
    assert c.ci[0] > 0, c.row()
    assert c.ci[0] <= injected <= c.ci[1], c.row()


def test_the_mock_desivast_catalog_loads_and_classifies(mock, studies):
    _, layout = mock
    out, *_ = studies
    study = out["NGC"]
    desivast = VoidCatalog.read(layout.desivast_voidfinder("NGC"))
    assert len(desivast) > 0
    m = classify_galaxies(study.sample.xyz, desivast, study.sample.mask)
    ours = study.membership.vflag == VFLAG_VOID
    theirs = m.vflag == VFLAG_VOID
    assert theirs.any()
    # Two void finders on the same galaxies agree far beyond chance.
    assert ours[theirs].mean() > 1.5 * ours.mean()

"""OutflowExplorer wiring, headless: real widgets, real PostgreSQL, the shared demo DR1.

The automatic fits are stored as the lab's batch would (admin DSN, owner role) under
assumptions of this file's own (n_e = 900 cm^-3), so other tests sharing the demo
catalog see none of them; the reviewer connects with a per-user role.
"""

from __future__ import annotations

import shutil

import astropy.units as u
import numpy as np
import psycopg
import pytest
from astropy.io import fits
from astropy.table import vstack
from desilab.desi import DR1Layout, read_truth
from desilab.projects.outflows import (
    Assumptions,
    OutflowExplorer,
    ReviewSession,
    bal_panel,
    create_tables,
    decisions,
    read_results,
    run_batch,
    select_from_catalog,
)

ASSUMPTIONS = Assumptions(n_e=900 * u.cm**-3)
GOOD_QSO = "SELECT targetid FROM dr1.zpix WHERE spectype = 'QSO' AND zwarn = 0 AND deltachi2 > 25"


@pytest.fixture(scope="module")
def fits_db(demo_catalog):
    """Two BALs, two non-BALs, two [O III] QSOs and one between the ranges, fitted and stored."""
    admin = demo_catalog.admin_dsn
    create_tables(admin)
    truth = read_truth(demo_catalog.truth, "qso")
    bals = [int(t) for t in truth["TARGETID"][(truth["BI_CIV"] > 1000) & (truth["Z"] < 3.5)]]
    parts = [
        select_from_catalog(admin, GOOD_QSO + " AND targetid = ANY(%s)", (bals,), limit=2),
        select_from_catalog(
            admin,
            GOOD_QSO + " AND z BETWEEN 1.8 AND 3 AND NOT targetid = ANY(%s)",
            (bals,),
            limit=2,
        ),
        select_from_catalog(admin, GOOD_QSO + " AND z < 0.8", limit=2),
        select_from_catalog(admin, GOOD_QSO + " AND z BETWEEN 1.0 AND 1.5", limit=1),
    ]
    assert [len(p) for p in parts] == [2, 2, 2, 1]
    layout = DR1Layout(demo_catalog.data_root)
    sample = vstack(parts)
    out = run_batch(
        sample,
        layout,
        dsn=admin,
        assumptions=ASSUMPTIONS,
        workers=1,
        use_ray=False,
        progress=False,
        run_id="explorer-test",
    )
    assert not out["errors"]
    return admin, layout, sample


@pytest.fixture(scope="module")
def reviewer_dsn(demo_catalog):
    return demo_catalog.user_dsn("olga")


def explorer_for(dsn, layout, **kwargs) -> OutflowExplorer:
    session = ReviewSession(
        dsn,
        layout,
        mode="all",
        include_reviewed=True,
        assumptions_hash=ASSUMPTIONS.digest(),
        **kwargs,
    )
    ex = OutflowExplorer(session)
    ex.wait(120)
    return ex


def go_to(ex: OutflowExplorer, targetid: int) -> None:
    index = [ex.session._item(i).targetid for i in ex.session.queue].index(int(targetid))
    ex.position.value = index + 1
    ex.wait(120)
    assert ex.shown is not None and ex.shown.targetid == int(targetid)


def test_accept_stores_the_decision_as_the_connected_user(fits_db, reviewer_dsn):
    _, layout, _ = fits_db
    ex = explorer_for(reviewer_dsn, layout)
    assert len(ex.session) == 7
    assert "fit 1 of 7" in ex.header.value
    first = ex.shown
    assert ex.src["bal_data"].data["x"] or ex.src["oiii_data"].data["x"], "the data are drawn"
    ex.comment.value = "continuum looks right"
    ex.accept_button.click()
    ex.wait(120)
    with psycopg.connect(reviewer_dsn) as conn:
        role = conn.execute("SELECT session_user").fetchone()[0]
    last = decisions(reviewer_dsn, result_id=first.id)[-1]
    assert (last["decision"], last["reviewer"], last["db_user"]) == ("accepted", role, role)
    assert last["note"] == "continuum looks right" and last["decided_at"] is not None
    stored = read_results(reviewer_dsn, ids=[first.id]).iloc[0]
    assert stored["review_status"] == "accepted" and stored["reviewed_by"] == role
    assert f"accepted fit {first.id}" in ex.status.value and role in ex.status.value
    assert f"reviewing as {role}" in ex.header.value
    assert ex.comment.value == ""
    # The explorer moved on to the next fit.
    assert ex.session.position == 1 and ex.shown.id != first.id

    ex.reject_button.click()
    ex.wait(120)
    assert (
        decisions(reviewer_dsn, targetid=ex.session._item(ex.session.queue[1]).targetid)[-1][
            "decision"
        ]
        == "rejected"
    )

    # Another session, another day: the decisions are there.
    later = explorer_for(reviewer_dsn, layout)
    assert "accepted by " + role in later.info.value


def test_bal_troughs_are_shaded(fits_db, reviewer_dsn):
    _, layout, sample = fits_db
    ex = explorer_for(reviewer_dsn, layout)
    go_to(ex, sample["TARGETID"][0])
    troughs = ex.src["troughs"].data
    assert "BI" in troughs["kind"]
    # Shaded C IV troughs lie blueward of C IV, within the BI velocity range.
    civ = [
        (lo, hi)
        for lo, hi, ion in zip(troughs["left"], troughs["right"], troughs["ion"], strict=True)
        if ion == "CIV"
    ]
    assert civ and all(1549 * (1 - 25000 / 3e5) - 1 < lo < hi < 1549 for lo, hi in civ)
    assert len(ex.src["continuum"].data["y"]) == len(ex.src["bal_data"].data["y"]) > 100
    assert "BI trough" in ex.bal_fig.title.text


def test_refit_with_a_changed_window_updates_the_fit(fits_db, reviewer_dsn):
    admin, layout, sample = fits_db
    ex = explorer_for(reviewer_dsn, layout)
    target = int(sample["TARGETID"][4])
    go_to(ex, target)
    parent = ex.shown
    assert ex.oiii_lo.value == 4750.0 and ex.oiii_hi.value == 5120.0
    before = ex.src["oiii_data"].data["x"]
    assert min(before) < 4800

    # An inverted window is refused in plain words, and nothing is stored.
    n_rows = len(read_results(admin))
    ex.oiii_lo.value, ex.oiii_hi.value = 5100.0, 4900.0
    ex.refit_button.click()
    ex.wait(120)
    assert "window must run from a lower to a higher wavelength" in ex.status.value
    assert len(read_results(admin)) == n_rows

    ex.oiii_lo.value, ex.oiii_hi.value, ex.oiii_wing.value = 4850.0, 5060.0, "on"
    ex.comment.value = "Fe II bump: narrower window"
    ex.refit_button.click()
    ex.wait(300)
    assert "refit stored as fit" in ex.status.value, ex.status.value
    new = ex.shown
    assert new.row["kind"] == "refit" and new.row["parent_id"] == parent.id
    assert new.row["config"]["oiii_window"] == [4850.0, 5060.0]
    assert new.row["config"]["oiii_wing"] == "on" and new.row["OIII_WING"] is True
    x = ex.src["oiii_data"].data["x"]
    assert min(x) >= 4850 and max(x) <= 5060, "the plot shows the refitted window"
    assert ex.src["oiii_wing"].data["y"], "the forced wing is drawn"
    stored = read_results(admin, ids=[parent.id, new.id])
    assert list(stored["review_status"]) == ["refit", "accepted"]
    with psycopg.connect(reviewer_dsn) as conn:
        role = conn.execute("SELECT session_user").fetchone()[0]
    assert set(stored["reviewed_by"]) == {role} and stored["created_by"].iloc[1] == role


def test_no_coverage_shows_the_flag_not_a_crash(fits_db, reviewer_dsn, tmp_path):
    _, layout, sample = fits_db
    ex = explorer_for(reviewer_dsn, layout)
    # Between the BAL and [O III] redshift ranges: nothing to measure.
    go_to(ex, sample["TARGETID"][6])
    assert "NO_COVERAGE" in ex.info.value and "does not cover" in ex.info.value
    assert "not measured" in ex.bal_fig.title.text and "not measured" in ex.oiii_fig.title.text
    assert ex.src["bal_data"].data["x"] == [] and "#a94442" not in ex.status.value

    # A BAL whose spectrum lost every pixel (ivar = 0) and has NaNs.
    row = read_results(reviewer_dsn, assumptions_hash=ASSUMPTIONS.digest())
    row = row[row["TARGETID"] == int(sample["TARGETID"][0])].iloc[0]
    src = layout.coadd(row["SURVEY"], row["PROGRAM"], int(row["HEALPIX"]))
    broken = DR1Layout(tmp_path / "dr1")
    dst = broken.coadd(row["SURVEY"], row["PROGRAM"], int(row["HEALPIX"]))
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    with fits.open(dst, mode="update") as hdul:
        k = int(np.flatnonzero(hdul["FIBERMAP"].data["TARGETID"] == row["TARGETID"])[0])
        for arm in "BRZ":
            hdul[f"{arm}_IVAR"].data[k] = 0.0
            hdul[f"{arm}_FLUX"].data[k, ::50] = np.nan
    ex = explorer_for(reviewer_dsn, broken)
    go_to(ex, row["TARGETID"])
    assert "NO_COVERAGE" in ex.bal_fig.title.text and "does not cover" in ex.bal_fig.title.text
    assert ex.src["troughs"].data["left"] == []
    assert "#a94442" not in ex.status.value and "NO_COVERAGE" in ex.status.value
    # The panel function itself says the same.
    assert "NO_COVERAGE" in bal_panel(ex.session.view(ex.shown))["note"]

    # The DR1 tree is not there at all: an inline message, and the explorer still works.
    gone = explorer_for(reviewer_dsn, DR1Layout(tmp_path / "nowhere"))
    assert "#a94442" in gone.status.value and "missing" in gone.status.value
    assert "TARGETID" in gone.status.value and gone.info.value
    gone.next_button.click()
    gone.wait(60)
    assert gone.session.position == 1

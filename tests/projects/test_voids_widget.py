"""VoidExplorer, headless: selecting a void, moving the slice, the comparison panel, errors."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from desilab.desi.errors import DR1FormatError
from desilab.projects.voids import (
    SampleCuts,
    SlicePlane,
    VoidExplorer,
    VoidStudy,
    cap_mask,
    comoving_mpch,
    plant_voids,
    poisson_catalog,
    radec_to_xyz,
    xyz_to_radec,
)
from desilab.projects.voids.widget_views import SELECTED

CUTS = SampleCuts(zmax=0.1)
CENTRE = radec_to_xyz(np.array([185.0]), np.array([30.0]), np.array([200.0]))[0]


def _galaxies(rng: np.random.Generator) -> Table:
    """FastSpecFit-like rows: uniform galaxies in a 300 deg^2 cap with one planted void."""
    rmax = comoving_mpch(np.array([0.11]))[0]
    xyz = poisson_catalog(cap_mask(185.0, 30.0, 300.0, 5.0, rmax), 0.01, rng)
    xyz = plant_voids(xyz, CENTRE[None], [17.0])
    ra, dec, dist = xyz_to_radec(xyz)
    zgrid = np.linspace(0, 0.2, 2001)
    n = len(xyz)
    logm = rng.normal(10.4, 0.4, n)
    return Table(
        {
            "TARGETID": 39627000000000 + np.arange(n),
            "RA": ra,
            "DEC": dec,
            "Z": np.interp(dist, comoving_mpch(zgrid), zgrid),
            "ZWARN": np.zeros(n, int),
            "DELTACHI2": np.full(n, 400.0),
            "ABSMAG01_SDSS_R": rng.uniform(-22.5, -20.5, n),
            "G_R": rng.normal(0.7, 0.1, n),
            "LOGMSTAR": logm,
            "LOG_SSFR": rng.normal(-10.2, 0.4, n),
            "DN4000": rng.normal(1.5, 0.2, n),
            "HALPHA_EW": rng.normal(20.0, 5.0, n),
        }
    )


@pytest.fixture(scope="module")
def study():
    galaxies = _galaxies(np.random.default_rng(8))
    return VoidStudy.run(None, cap="NGC", cuts=CUTS, galaxies=galaxies)


@pytest.fixture
def explorer(study):
    view = VoidExplorer(study, n_boot=100, compare_on_load=False)
    yield view
    view.close()


def test_tapping_a_void_lists_exactly_its_members(study, explorer):
    voids = study.void_table()
    vid = int(voids["VOID"][np.argmax(voids["N_GAL"])])
    assert explorer.members is None and "Tap a void" in explorer.void_info.value
    # A tap on the sky selects the void's ellipse (as the browser reports it).
    row = list(explorer.figures.sky_voids.data["void"]).index(vid)
    explorer.figures.sky_voids.selected.indices = [row]
    assert explorer.selected_void == vid and explorer.void_picker.value == vid
    expected = np.sort(study.sample.targetid[study.membership.void == vid])
    assert len(expected) > 0
    np.testing.assert_array_equal(np.sort(explorer.members["TARGETID"]), expected)
    assert f"{len(expected)} member galaxies" in explorer.void_info.value
    shown = [int(t) for t in expected if str(t) in explorer.member_table.value]
    assert len(shown) == min(len(expected), 200)
    # The members are highlighted on the sky, and in the slice once it passes through the void.
    assert len(explorer.figures.sky_members.data["ra"]) == len(expected)
    explorer.slice_through()
    data = explorer.figures.slice_galaxies.data
    red = np.asarray(data["colour"]) == SELECTED
    assert red.any()
    assert set(np.asarray(data["void"])[red].tolist()) == {vid}
    assert set(np.asarray(data["index"])[red]) <= set(np.flatnonzero(study.membership.void == vid))
    # Picking "no void" from the list clears the selection.
    explorer.void_picker.value = -1
    assert explorer.selected_void is None and explorer.members is None


def test_tapping_a_hole_section_selects_its_void(study, explorer):
    info = study.void_info(0)
    explorer.ra.value, explorer.dec.value = info["RA"], info["DEC"]
    holes = explorer.figures.slice_holes.data
    assert len(holes["void"]) > 0
    explorer.figures.slice_holes.selected.indices = [0]
    assert explorer.selected_void == int(holes["void"][0])
    colours = np.asarray(explorer.figures.slice_holes.data["colour"])
    chosen = np.asarray(explorer.figures.slice_holes.data["void"]) == explorer.selected_void
    assert np.all(colours[chosen] == SELECTED) and not np.any(colours[~chosen] == SELECTED)


def test_moving_the_slice_redraws_galaxies_and_holes(study, explorer):
    def drawn():
        g, h = explorer.figures.slice_galaxies.data, explorer.figures.slice_holes.data
        return np.sort(np.asarray(g["index"])), np.asarray(h["r"])

    explorer.slice_through(0)
    first_gal, first_holes = drawn()
    for offset in (12.0, -25.0):
        explorer.offset.value = offset
        plane = SlicePlane.through_observer(
            explorer.ra.value, explorer.dec.value, offset=offset, thickness=10.0
        )
        view = study.slice(plane)
        gal, radii = drawn()
        np.testing.assert_array_equal(gal, np.sort(view.galaxies["INDEX"]))
        np.testing.assert_allclose(np.sort(radii), np.sort(view.circles["RADIUS"]))
        assert f"offset {offset:.0f}" in explorer.figures.slice_fig.title.text
    assert not np.array_equal(gal, first_gal)
    explorer.thickness.value = 30.0
    thick, _ = drawn()
    assert len(thick) > len(gal)


def test_comparison_panel_shows_the_test_results(study, explorer):
    results = explorer.compare().result()
    assert list(results) == ["G_R", "LOGMSTAR", "LOG_SSFR", "DN4000", "HALPHA_EW"]
    table = explorer.test_table.value
    for name, c in results.items():
        (again,) = study.compare({name: c.label}, n_boot=100, seed=0)
        assert again.ks == c.ks and again.ci == c.ci
        for number in (c.ks[1], c.mann_whitney[1], c.anderson_darling[1], c.cohens_d, c.ci[0]):
            assert f"{number:.3g}" in table, (name, number)
        assert f"<td>{c.n_void}</td>" in table
    # The overlay shows void and matched wall distributions of the chosen property.
    explorer.property.value = "LOGMSTAR"
    c = results["LOGMSTAR"]
    _, hv, hc = c.histogram(30)
    np.testing.assert_allclose(explorer.figures.hist_data.data["void"], hv)
    np.testing.assert_allclose(explorer.figures.hist_data.data["control"], hc)
    assert len(explorer.figures.wall_line.data["wall"]) == 30
    assert "KS p" in explorer.figures.hist_fig.title.text
    assert "compared 5 of 5" in explorer.status.value


def test_summary_and_void_list(study, explorer):
    assert len(explorer.void_picker.options) == len(study.catalog) + 1
    assert f"{len(study.catalog)} voids" in explorer.summary_html.value
    assert len(explorer.figures.size_data.data["r"]) > 0


def test_errors_are_shown_in_plain_words(study, explorer, tmp_path):
    explorer.select_void(10_000)
    assert "there is no void 10000" in explorer.status.value
    failing = VoidExplorer.find(str(tmp_path / "no-such-tree"), cap="NGC", cuts=CUTS)
    with pytest.raises(DR1FormatError):
        failing.last_job.result()
    assert "finding voids failed" in failing.status.value
    assert "FastSpecFit" in failing.status.value
    assert failing.progress.layout.visibility == "hidden"
    failing.close()
    nothing = VoidExplorer()
    assert nothing.compare().result() == {}
    assert "load or find voids first" in nothing.status.value
    nothing.close()


def test_finding_voids_off_the_main_thread(study):
    galaxies = study.sample.table
    view = VoidExplorer.find(None, cap="NGC", cuts=CUTS, galaxies=galaxies, n_boot=50)
    view.last_job.result()  # the study is shown once the job is done; comparisons follow
    assert view.study is not None and len(view.study.catalog) == len(study.catalog)
    compared = view.last_job.result()
    assert set(compared) == {"G_R", "LOGMSTAR", "LOG_SSFR", "DN4000", "HALPHA_EW"}
    assert view.progress.layout.visibility == "hidden"
    view.close()


def test_unknown_run_in_the_catalog_is_named(catalog_db):
    from desilab.desi.roles import ensure_user_role
    from desilab.projects.voids import ensure_tables

    ensure_tables(catalog_db)
    user = ensure_user_role(catalog_db, "voidwidget")
    view = VoidExplorer.from_database(user, "no-such-run", cap="NGC")
    with pytest.raises(KeyError):
        view.last_job.result()
    assert "loading voids failed: no void run &#x27;no-such-run&#x27;" in view.status.value
    assert view.study is None and view.progress.layout.visibility == "hidden"
    view.close()

"""Preparation of spectra: arms combined, rest frame, log grid, masks, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from desilab.desi import ArmSpectra, wavelength
from desilab.projects.anomalies import (
    RestGrid,
    combine_arms,
    normalise,
    prepare_spectra,
    rebin_rest,
)

ARMS = "BRZ"


def make_arms(flux_fn, n: int, ivar: float = 100.0) -> dict[str, ArmSpectra]:
    """Arms whose flux is ``flux_fn(wave) -> (n, nwave)``, constant ivar, no mask."""
    arms = {}
    for a in ARMS:
        wave = wavelength(a)
        flux = np.asarray(flux_fn(wave), dtype=np.float32).reshape(n, len(wave))
        arms[a] = ArmSpectra(
            wave=wave,
            flux=flux,
            ivar=np.full(flux.shape, ivar, np.float32),
            mask=np.zeros(flux.shape, np.uint32),
        )
    return arms


@pytest.mark.parametrize(
    ("z", "line"),
    [(0.35, 4862.68), (0.9, 2798.75), (1.7, 1908.73), (2.4, 1549.06), (3.3, 1215.67)],
)
@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_a_line_at_a_known_rest_wavelength_lands_in_its_bin(z, line, offset):
    grid = RestGrid()
    k = int(grid.bin_of(line))
    edges = grid.edges.to_value(u.AA)
    # The line (sigma 1 A observed) is put at the centre of the bin holding the real
    # line, or 30 % of a bin off it: bins are 5-13 A wide in the observed frame.
    line = grid.centers.to_value(u.AA)[k] + offset * (edges[k + 1] - edges[k])
    assert min(line - edges[k], edges[k + 1] - line) * (1 + z) > 1.0
    observed = line * (1 + z)
    n = 3
    amplitude = np.array([5.0, 20.0, 50.0])[:, None]

    def flux(wave):
        return 1.0 + amplitude * np.exp(-0.5 * ((wave - observed) / 1.0) ** 2)

    prep = prepare_spectra(make_arms(flux, n), np.full(n, z), grid)
    assert np.all(np.argmax(prep.flux, axis=1) == k)
    # ... and nowhere else: the neighbouring bins hold the flat continuum.
    assert np.allclose(prep.flux[:, k - 3 : k - 1], prep.flux[:, k - 5 : k - 3], rtol=1e-4)


def test_coverage_follows_the_redshift():
    grid = RestGrid()
    for z in (0.5, 2.0, 3.5):
        prep = prepare_spectra(make_arms(lambda w: np.ones((1, len(w))), 1), np.array([z]), grid)
        covered = grid.centers.to_value(u.AA)[prep.weight[0] > 0]
        # DR1 covers 3600-9824 A observed; inside the grid nothing else has data.
        assert covered.min() == pytest.approx(max(3600.0 / (1 + z), grid.lam_min), rel=2e-3)
        assert covered.max() == pytest.approx(min(9824.0 / (1 + z), grid.lam_max), rel=2e-3)
        assert np.all(prep.weight[0][(prep.weight[0] > 0).argmax() :][: len(covered)] > 0)


def test_arms_are_combined_with_inverse_variance_weights_in_the_overlap():
    rng = np.random.default_rng(1)
    arms = make_arms(lambda w: rng.normal(10, 1, (2, len(w))), 2)
    arms["R"].flux[:] += 5.0
    arms["B"].ivar[:] = 1.0
    arms["R"].ivar[:] = 3.0
    obs = combine_arms(arms)
    overlap = (obs.wave >= 5760.0 - 0.01) & (obs.wave <= 5800.0 + 0.01)
    b_in = arms["B"].wave >= 5760.0 - 0.01
    r_in = arms["R"].wave <= 5800.0 + 0.01
    assert overlap.sum() == b_in.sum() == r_in.sum() == 51
    expected = (arms["B"].flux[:, b_in] * 1 + arms["R"].flux[:, r_in] * 3) / 4
    assert np.allclose(obs.flux[:, overlap], expected, rtol=1e-6)
    assert np.allclose(obs.ivar[:, overlap], 4.0)
    only_b = obs.wave < 5760.0 - 0.01
    assert np.allclose(obs.flux[:, only_b], arms["B"].flux[:, : only_b.sum()])


def test_masked_pixels_carry_no_weight_and_no_flux():
    arms = make_arms(lambda w: np.ones((1, len(w))), 1)
    arms["R"].mask[0, 500:900] = 1  # e.g. a bad column
    arms["R"].flux[0, 500:900] = np.nan  # whatever is there must not leak
    arms["Z"].ivar[0, :] = 0.0  # a dead arm
    obs = combine_arms(arms)
    r0 = np.searchsorted(obs.wave, arms["R"].wave[500])
    assert np.all(obs.ivar[0, r0 : r0 + 400] == 0)
    assert np.all(np.isfinite(obs.flux))
    grid = RestGrid()
    prep = prepare_spectra(arms, np.array([1.0]), grid)
    assert np.all(np.isfinite(prep.flux)) and np.all(np.isfinite(prep.weight))
    centers = grid.centers.to_value(u.AA) * 2.0
    dead = (centers > 7650.0) & (centers < 9800.0)  # only the z arm saw these
    assert np.all(prep.weight[0, dead] == 0) and np.all(prep.flux[0, dead] == 0)
    assert np.allclose(prep.flux[0][prep.weight[0] > 0], 1.0)


def test_rebinning_equals_a_per_pixel_reference():
    rng = np.random.default_rng(7)
    n, grid = 6, RestGrid(1000.0, 6000.0, 400)
    wave = 3600.0 + 0.8 * np.arange(7781)
    flux = rng.normal(1, 0.3, (n, len(wave)))
    ivar = rng.uniform(0, 5, (n, len(wave)))
    ivar[rng.random(ivar.shape) < 0.1] = 0
    z = rng.uniform(0.3, 3.5, n)
    got_f, got_w = rebin_rest(wave, flux, ivar, z, grid)
    ref_fw = np.zeros((n, grid.n_bins))
    ref_w = np.zeros((n, grid.n_bins))
    for i in range(n):
        k = grid.bin_of(wave / (1 + z[i]))
        ok = (k >= 0) & (ivar[i] > 0)
        np.add.at(ref_fw[i], k[ok], flux[i, ok] * ivar[i, ok])
        np.add.at(ref_w[i], k[ok], ivar[i, ok])
    ref_f = np.divide(ref_fw, ref_w, out=np.zeros_like(ref_fw), where=ref_w > 0)
    assert np.allclose(got_w, ref_w, rtol=1e-5, atol=1e-6)
    assert np.allclose(got_f, ref_f, rtol=1e-5, atol=1e-5)


def test_normalisation_keeps_the_weights_consistent():
    flux = np.array([[2.0, 4.0, 0.0, 6.0], [1.0, 1.0, 1.0, 1.0], [-1.0, -2.0, 0.0, 0.0]])
    weight = np.array([[1.0, 1.0, 0.0, 1.0], [4.0, 4.0, 4.0, 4.0], [1.0, 1.0, 0.0, 0.0]])
    prep = normalise(flux.astype(np.float32), weight.astype(np.float32), min_bins=2)
    assert prep.norm[0] == pytest.approx(4.0)
    assert np.allclose(prep.flux[0], [0.5, 1.0, 0.0, 1.5])
    # Inverse variance of flux / norm is ivar * norm^2: the S/N is unchanged.
    assert np.allclose(prep.weight[0], [16.0, 16.0, 0.0, 16.0])
    assert prep.n_good[1] == 4
    # A spectrum whose mean flux is not positive cannot be normalised: it is flagged.
    assert prep.n_good[2] == 0 and np.all(prep.weight[2] == 0)


def test_grid_takes_quantities_and_refuses_nonsense():
    grid = RestGrid(0.1 * u.um, 7000 * u.AA, 100)
    assert grid.lam_min == pytest.approx(1000.0)
    assert grid.centers.unit == u.AA and len(grid.centers) == 100
    assert grid.bin_of(500 * u.AA) == -1
    with pytest.raises(ValueError, match="lam_min < lam_max"):
        RestGrid(5000, 1000, 10)
    bad = make_arms(lambda w: np.ones((1, len(w))), 1)
    bad["B"] = ArmSpectra(bad["B"].wave + 0.3, bad["B"].flux, bad["B"].ivar, bad["B"].mask)
    with pytest.raises(ValueError, match="not on the DR1 grid"):
        combine_arms(bad)

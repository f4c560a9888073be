"""VoidFinder: hole growing, planted voids, invariance, mask edges, combine rules, parallel runs."""

from __future__ import annotations

import numpy as np
import pytest
from desilab.projects.voids import (
    VFLAG_EDGE,
    VFLAG_OUTSIDE,
    VFLAG_VOID,
    VFLAG_WALL,
    BoxMask,
    TransformedMask,
    VoidFinderConfig,
    cap_mask,
    classify_galaxies,
    find_voids,
    grow_holes,
    plant_voids,
    poisson_catalog,
    sphere_overlap,
)
from desilab.projects.voids.combine import find_maximals, join_holes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from support.local_ray import local_ray

BOX = 160.0
PLANTED_CENTRES = np.array([[45.0, 50.0, 55.0], [112.0, 48.0, 100.0], [60.0, 115.0, 110.0]])
PLANTED_RADII = np.array([20.0, 16.0, 13.0])


@pytest.fixture(scope="module")
def planted():
    """Uniform galaxies (0.01 per (Mpc/h)^3) in a box with three empty spheres cut out."""
    rng = np.random.default_rng(11)
    mask = BoxMask((0.0, 0.0, 0.0), (BOX, BOX, BOX))
    gal = plant_voids(poisson_catalog(mask, 0.01, rng), PLANTED_CENTRES, PLANTED_RADII)
    return gal, mask, find_voids(gal, mask, workers=1)


def _maximal_xyzr(catalog):
    m = catalog.maximals
    return np.column_stack([m["X"], m["Y"], m["Z"]]), np.asarray(m["RADIUS"])


def test_holes_are_bounded_by_four_galaxies_and_empty():
    rng = np.random.default_rng(3)
    gal = rng.random((6000, 3)) * 80.0
    seeds = rng.random((1500, 3)) * 80.0
    centres, radii, bounds, ok = grow_holes(seeds, gal, BoxMask((0, 0, 0), (80, 80, 80)))
    assert ok.mean() > 0.8
    c, r, b = centres[ok], radii[ok], bounds[ok]
    for j in range(4):
        np.testing.assert_allclose(np.linalg.norm(c - gal[b[:, j]], axis=1), r, rtol=1e-9)
    assert np.all(np.sort(b, axis=1)[:, 1:] != np.sort(b, axis=1)[:, :-1])
    # No galaxy strictly inside any hole: the four nearest sit on the surface.
    dist, _ = cKDTree(gal).query(c, k=5)
    np.testing.assert_allclose(dist[:, :4], np.repeat(r[:, None], 4, axis=1), rtol=1e-9)
    assert np.all(dist[:, 4] > r * (1 - 1e-9))
    # Dropped holes are those whose centre would leave the box.
    assert np.all((c >= 0) & (c <= 80))


def test_planted_voids_are_recovered(planted):
    _, _, catalog = planted
    centres, radii = _maximal_xyzr(catalog)
    for c0, r0 in zip(PLANTED_CENTRES, PLANTED_RADII, strict=True):
        d = np.linalg.norm(centres - c0, axis=1)
        j = int(np.argmin(d))
        assert d[j] < 2.0, f"void at {c0} missed: nearest maximal {d[j]:.2f} Mpc/h away"
        assert abs(radii[j] / r0 - 1) < 0.10, f"radius {radii[j]:.2f} for planted {r0}"
        # Its holes cover the planted sphere's volume (union radius close to the planted one).
        assert catalog.maximals["R_EFF"][j] == pytest.approx(r0, rel=0.10)
    assert np.all(radii >= 10.0)
    assert catalog.header["VOID"][0] == len(catalog)


def test_maximals_respect_the_overlap_rule(planted):
    _, _, catalog = planted
    c, r = _maximal_xyzr(catalog)
    d = np.linalg.norm(c[:, None] - c[None], axis=2)
    small = np.minimum(r[:, None], r[None])
    frac = sphere_overlap(r[:, None], r[None], d) / (4 / 3 * np.pi * small**3)
    np.fill_diagonal(frac, 0)
    assert frac.max() <= 0.10 + 1e-12
    # Every hole of a void overlaps its maximal by at least half of its volume.
    hc, hr, hv = catalog.hole_arrays()
    dm = np.linalg.norm(hc - c[hv], axis=1)
    assert np.all(sphere_overlap(hr, r[hv], dm) >= 0.5 * 4 / 3 * np.pi * hr**3 - 1e-9)


def test_isolated_galaxies_do_not_fill_voids(planted):
    gal, mask, catalog = planted
    # A few lone galaxies inside the biggest void: field galaxies, ignored by the finder.
    lone = PLANTED_CENTRES[0] + np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, -9.0, 3.0]])
    again = find_voids(np.vstack([gal, lone]), mask, workers=1)
    field = again.info["field"]
    assert field[-3:].all()
    c, r = _maximal_xyzr(again)
    d = np.linalg.norm(c - PLANTED_CENTRES[0], axis=1)
    assert d.min() < 2.0 and r[np.argmin(d)] == pytest.approx(PLANTED_RADII[0], rel=0.1)
    # Without the separation the lone galaxies break the void up.
    kept = find_voids(np.vstack([gal, lone]), mask, VoidFinderConfig(remove_isolated=False))
    ck, rk = _maximal_xyzr(kept)
    near = np.linalg.norm(ck - PLANTED_CENTRES[0], axis=1) < PLANTED_RADII[0]
    assert rk[near].max() < 0.9 * PLANTED_RADII[0]


def _same_voids(a, b, rotation=None, shift=None):
    rotation = np.eye(3) if rotation is None else rotation
    shift = np.zeros(3) if shift is None else shift
    ca, ra = _maximal_xyzr(a)
    cb, rb = _maximal_xyzr(b)
    assert len(ra) == len(rb)
    np.testing.assert_allclose(rb, ra, rtol=1e-9)
    np.testing.assert_allclose(cb, ca @ rotation.T + shift, atol=1e-7)
    np.testing.assert_array_equal(a.maximals["EDGE"], b.maximals["EDGE"])
    np.testing.assert_allclose(b.maximals["R_EFF"], a.maximals["R_EFF"], rtol=1e-9)
    assert len(a.holes) == len(b.holes)
    np.testing.assert_array_equal(a.holes["VOID"], b.holes["VOID"])
    np.testing.assert_allclose(b.holes["RADIUS"], a.holes["RADIUS"], rtol=1e-9)


def test_rotation_and_translation_do_not_change_the_voids(planted):
    gal, mask, catalog = planted
    rot = Rotation.random(random_state=5).as_matrix()
    shift = np.array([1000.0, -250.0, 33.3])
    moved = find_voids(gal @ rot.T + shift, TransformedMask(mask, rot, shift), workers=1)
    _same_voids(catalog, moved, rot, shift)
    # The classification moves along too.
    probe = np.random.default_rng(1).random((3000, 3)) * BOX
    m0 = classify_galaxies(probe, catalog, mask)
    m1 = classify_galaxies(probe @ rot.T + shift, moved, TransformedMask(mask, rot, shift))
    np.testing.assert_array_equal(m0.vflag, m1.vflag)
    np.testing.assert_array_equal(m0.void, m1.void)


def test_vast_frame_is_translation_invariant_and_finds_the_planted_voids(planted):
    gal, mask, _ = planted
    cfg = VoidFinderConfig(frame="vast")
    a = find_voids(gal, mask, cfg, workers=1)
    shift = np.array([-40.0, 700.0, 12.5])
    b = find_voids(gal + shift, TransformedMask(mask, np.eye(3), shift), cfg, workers=1)
    _same_voids(a, b, shift=shift)
    c, r = _maximal_xyzr(a)
    for c0, r0 in zip(PLANTED_CENTRES, PLANTED_RADII, strict=True):
        j = np.argmin(np.linalg.norm(c - c0, axis=1))
        assert np.linalg.norm(c[j] - c0) < 2.0 and abs(r[j] / r0 - 1) < 0.1


def test_process_workers_give_the_same_voids(planted):
    gal, mask, catalog = planted
    parallel = find_voids(gal, mask, workers=2, use_ray=False, chunk_size=4000)
    _same_voids(catalog, parallel)


def test_mask_edges_on_a_healpix_survey():
    rng = np.random.default_rng(21)
    mask = cap_mask(150.0, 20.0, 1500.0, 60.0, 240.0, nside=32)
    centres = np.array([[-130.0, 75.0, 52.0], [0, 0, 0]])
    # An interior void, and one cut by the far distance limit (centre 6 Mpc/h inside).
    unit = centres[0] / np.linalg.norm(centres[0])
    centres[1] = unit * 234.0
    gal = plant_voids(poisson_catalog(mask, 0.01, rng), centres, np.array([16.0, 15.0]))
    catalog = find_voids(gal, mask, workers=1)
    hc, hr, hv = catalog.hole_arrays()
    assert mask.contains(hc).all()
    # At most 10 % of any hole lies outside the survey (Monte Carlo, independent points).
    pts = rng.normal(size=(4000, 3))
    pts *= (rng.random(4000) ** (1 / 3) / np.linalg.norm(pts, axis=1))[:, None]
    outside = np.array([1 - mask.contains(c + r * pts).mean() for c, r in zip(hc, hr, strict=True)])
    assert outside.max() <= 0.13
    edge_voids = set(hv[outside > 0.005].tolist())
    assert all(catalog.maximals["EDGE"][v] == 1 for v in edge_voids)
    c, r = _maximal_xyzr(catalog)
    d = np.linalg.norm(c - centres[0], axis=1)
    j = int(np.argmin(d))
    assert d[j] < 2.0 and abs(r[j] / 16.0 - 1) < 0.1 and catalog.maximals["EDGE"][j] == 0
    # The cut void cannot keep its full size: its holes would stick out of the survey.
    d1 = np.linalg.norm(c - centres[1], axis=1)
    assert not np.any((d1 < 2.0) & (r > 0.95 * 15.0))
    # Galaxies: outside the survey -> 9; near its edge -> 2 unless in a void; deep -> 0/1.
    far = unit * 300.0
    near_edge = unit * 236.0 + np.cross(unit, [0, 0, 1.0]) * 20.0
    m = classify_galaxies(np.vstack([gal, far, near_edge]), catalog, mask)
    assert m.vflag[-2] == VFLAG_OUTSIDE
    assert m.vflag[-1] in (VFLAG_EDGE, VFLAG_VOID)
    deep = mask.distance_to_edge(gal) > 10.0
    assert set(np.unique(m.vflag[:-2][deep]).tolist()) <= {VFLAG_WALL, VFLAG_VOID}
    assert np.all(m.vflag[:-2][~deep & (m.vflag[:-2] != VFLAG_VOID)] != VFLAG_OUTSIDE)


def test_combine_rules_on_hand_made_holes():
    cfg = VoidFinderConfig()
    # Sorted by radius: two maximals 5 % overlapping, a third overlapping the first by 20 %.
    centres = np.array(
        [
            [0.0, 0.0, 0.0],  # 0: maximal (largest)
            [22.5, 0.0, 0.0],  # 1: R 12, small overlap with 0: maximal
            [-18.0, 0.0, 0.0],  # 2: R 11.5, overlaps 0 by 20 %: neither maximal nor member
            [0.0, 12.0, 0.0],  # 3: R 6, mostly inside 0: joins void 0
            [14.0, 0.0, 0.0],  # 4: R 5, over both maximals by >= 50 %: joins none
            [0.0, 0.0, 40.0],  # 5: R 5, far from all: joins none
            [1.0, 1.0, 1.0],  # 6: R 3, inside 0: dropped
        ]
    )
    radii = np.array([15.0, 12.0, 11.5, 6.0, 5.0, 5.0, 3.0])
    ov01 = sphere_overlap(15.0, 12.0, 22.5) / (4 / 3 * np.pi * 12.0**3)
    ov02 = sphere_overlap(15.0, 11.5, 18.0) / (4 / 3 * np.pi * 11.5**3)
    assert ov01 < 0.1 < ov02
    max_idx = find_maximals(centres, radii, cfg.min_maximal_radius, cfg.maximal_overlap)
    np.testing.assert_array_equal(max_idx, [0, 1])
    void = join_holes(centres, radii, max_idx, cfg.join_overlap)
    assert void[0] == 0 and void[1] == 1 and void[3] == 0
    assert void[2] == -1
    assert void[4] == -1 and void[5] == -1 and void[6] == -1


def test_maximal_selection_equals_the_sequential_greedy_loop():
    rng = np.random.default_rng(2)
    radii = np.sort(rng.uniform(6.0, 25.0, 1500))[::-1]
    centres = rng.random((1500, 3)) * 250.0
    cfg = VoidFinderConfig()
    chosen: list[int] = []
    for k in np.flatnonzero(radii >= cfg.min_maximal_radius):
        d = np.linalg.norm(centres[chosen] - centres[k], axis=1)
        vol = 4 / 3 * np.pi * radii[k] ** 3
        over = sphere_overlap(radii[chosen], radii[k], d) > cfg.maximal_overlap * vol
        if not np.any(over | (radii[chosen] - radii[k] >= d)):
            chosen.append(int(k))
    np.testing.assert_array_equal(
        find_maximals(centres, radii, cfg.min_maximal_radius, cfg.maximal_overlap), chosen
    )
    void = join_holes(centres, radii, np.array(chosen), cfg.join_overlap)
    for h in np.flatnonzero(void >= 0):
        if h in chosen:
            continue
        d = np.linalg.norm(centres[chosen] - centres[h], axis=1)
        frac = sphere_overlap(radii[chosen], radii[h], d) / (4 / 3 * np.pi * radii[h] ** 3)
        assert np.sum(frac >= 0.5) == 1 and chosen[int(np.argmax(frac))] == chosen[void[h]]


@pytest.mark.slow
def test_ray_gives_the_same_voids(planted):
    gal, mask, catalog = planted
    with local_ray(num_cpus=2, object_store_mib=100):
        on_ray = find_voids(gal, mask, use_ray=True, chunk_size=5000)
    _same_voids(catalog, on_ray)

"""Cone searches and cross-matches equal a brute-force astropy SkyCoord computation,
poles and the RA = 0/360 wrap included."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import psycopg
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from desilab.desi import Catalog, CatalogError
from desilab.desi.pgcopy import COPY_HEADER, COPY_TRAILER, CopyColumn, encode_rows
from desilab.desi.sky import HPX_ORDER, cone_ranges, hpx_index, match_ranges

#: Dense spots where the sky pixelisation is hardest: poles, RA wrap, a base-pixel corner.
SPOTS = [(0.0, 90.0), (123.0, -90.0), (0.0, 0.0), (359.999, 41.8), (45.0, 41.8103), (180.0, -30.0)]


def _offset(ra, dec, sep_deg, pa):
    c = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(pa * u.rad, sep_deg * u.deg)
    return c.ra.deg, c.dec.deg


@pytest.fixture(scope="module")
def sky(new_database):
    """A synthetic sky table: uniform positions plus dense spots at the poles and the wrap."""
    rng = np.random.default_rng(7)
    n_uniform, n_spot = 100_000, 8_000
    ra = [rng.uniform(0, 360, n_uniform)]
    dec = [np.degrees(np.arcsin(rng.uniform(-1, 1, n_uniform)))]
    for ra0, dec0 in SPOTS:
        sep = 0.5 * np.sqrt(rng.uniform(0, 1, n_spot))
        r, d = _offset(
            np.full(n_spot, ra0), np.full(n_spot, dec0), sep, rng.uniform(0, 6.3, n_spot)
        )
        ra.append(r)
        dec.append(d)
    ra, dec = np.concatenate(ra) % 360.0, np.concatenate(dec)
    targetid = np.arange(len(ra), dtype=np.int64) + 1000
    dsn = new_database("sky")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.sky (targetid bigint PRIMARY KEY, ra double precision, "
            "dec double precision, mag real, hpx bigint NOT NULL)"
        )
        cols = [
            CopyColumn(targetid, "bigint"),
            CopyColumn(ra, "double precision"),
            CopyColumn(dec, "double precision"),
            CopyColumn(rng.uniform(15, 25, len(ra)).astype(np.float32), "real"),
            CopyColumn(hpx_index(ra, dec), "bigint"),
        ]
        with conn.cursor().copy("COPY public.sky FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(COPY_HEADER)
            cp.write(encode_rows(cols))
            cp.write(COPY_TRAILER)
        conn.execute("CREATE INDEX sky_hpx ON public.sky (hpx)")
        conn.execute("ANALYZE public.sky")
    with Catalog(dsn) as cat:
        yield cat, targetid, SkyCoord(ra * u.deg, dec * u.deg), dsn


def _fields(rng, coords, n):
    """Cone centres: on the spots (poles exactly), near them, and anywhere."""
    centres = [(ra, dec) for ra, dec in SPOTS]
    centres += [(0.0005, 89.9995), (359.9995, -89.9999), (0.0, 45.0), (359.99999, -0.2)]
    pick = rng.choice(len(coords), n, replace=False)
    centres += list(zip(coords.ra.deg[pick], coords.dec.deg[pick], strict=True))
    anywhere = (rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n))))
    centres += list(zip(*anywhere, strict=True))
    return centres


def test_cone_ranges_cover_every_point_of_the_cone():
    rng = np.random.default_rng(3)
    for radius in (1 / 3600, 1 / 60, 0.5, 2.0, 20.0):
        for ra0, dec0 in [*SPOTS, (10.0, 89.9), (300.0, -89.99)]:
            n = 3000
            r, d = _offset(
                np.full(n, ra0), np.full(n, dec0), radius * np.sqrt(rng.uniform(0, 1, n)),
                rng.uniform(0, 6.3, n),
            )  # fmt: skip
            pix = hpx_index(r % 360, d)
            ranges = cone_ranges(ra0, dec0, radius)
            inside = ((pix[:, None] >= ranges[:, 0]) & (pix[:, None] < ranges[:, 1])).any(axis=1)
            assert inside.all(), (radius, ra0, dec0)
            assert (ranges[:, 1] <= 12 << (2 * HPX_ORDER)).all()


@pytest.mark.parametrize("radius_arcsec", [1.0, 60.0, 1800.0, 7200.0])
def test_cone_equals_brute_force(sky, radius_arcsec):
    cat, targetid, coords, _ = sky
    rng = np.random.default_rng(int(radius_arcsec))
    radius = radius_arcsec * u.arcsec
    for ra0, dec0 in _fields(rng, coords, 6):
        got = cat.cone(ra0, dec0, radius, table="public.sky", limit=10**6)
        sep = coords.separation(SkyCoord(ra0 * u.deg, dec0 * u.deg))
        want = sep <= radius
        edge = np.abs((sep - radius).to_value(u.arcsec)) < 1e-6  # float ties at the rim
        got_ids = set(np.asarray(got["targetid"]).tolist())
        assert got_ids - set(targetid[want | edge]) == set(), (ra0, dec0)
        assert set(targetid[want & ~edge]) - got_ids == set(), (ra0, dec0)
        if len(got):
            assert np.all(np.diff(got["dist"]) >= 0) and got["dist"].unit == u.arcsec
            expect = sep[np.searchsorted(targetid, got["targetid"])].to_value(u.arcsec)
            np.testing.assert_allclose(got["dist"], expect, atol=1e-6)
    assert set(got.colnames) == {"targetid", "ra", "dec", "mag", "dist"}


def test_cone_on_the_catalog_uses_the_index_and_literal_ranges(sky):
    cat, _, _, dsn = sky
    t = cat.cone(0.0, 90.0, 2 * u.arcmin, table="public.sky", columns=["targetid"])
    assert len(t) > 0 and t.meta["ranges"] >= 1 and "hpx" in t.meta["sql"]
    with psycopg.connect(dsn) as conn:
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + t.meta["sql"]))
    assert "sky_hpx" in plan and "Seq Scan" not in plan


@pytest.mark.parametrize("radius_arcsec", [1.0, 30.0, 900.0])
def test_xmatch_equals_brute_force_nearest(sky, radius_arcsec):
    cat, targetid, coords, _ = sky
    rng = np.random.default_rng(11 + int(radius_arcsec))
    n = 4000 if radius_arcsec < 100 else 600  # large radii: thousands of candidates each
    pick = rng.choice(len(coords), n, replace=False)
    r, d = _offset(
        coords.ra.deg[pick], coords.dec.deg[pick],
        radius_arcsec / 3600 * rng.uniform(0, 1.3, n), rng.uniform(0, 6.3, n),
    )  # fmt: skip
    ra_in = np.concatenate([r % 360, rng.uniform(0, 360, n), [0.0, 10.0, 359.99999]])
    dec_in = np.concatenate([d, np.degrees(np.arcsin(rng.uniform(-1, 1, n))), [90.0, -90.0, 41.81]])
    inputs = Table({"RA": ra_in, "DEC": dec_in, "name": np.arange(len(ra_in))})
    got = cat.xmatch(inputs, radius_arcsec * u.arcsec, table="public.sky")
    idx, sep, _ = SkyCoord(ra_in * u.deg, dec_in * u.deg).match_to_catalog_sky(coords)
    sep = sep.to_value(u.arcsec)
    matched = sep <= radius_arcsec
    edge = np.abs(sep - radius_arcsec) < 1e-6
    got_rows = np.asarray(got["input_index"])
    assert len(np.unique(got_rows)) == len(got_rows)
    assert set(got_rows) - set(np.flatnonzero(matched | edge)) == set()
    assert set(np.flatnonzero(matched & ~edge)) - set(got_rows) == set()
    np.testing.assert_array_equal(got["targetid"], targetid[idx[got_rows]])
    np.testing.assert_allclose(got["dist"], sep[got_rows], atol=1e-6)
    assert matched.sum() > n // 2
    assert len(got) == matched.sum() or edge.any()


def test_xmatch_accepts_skycoord_and_arrays_and_refuses_huge_radii(sky):
    cat, targetid, coords, _ = sky
    few = coords[:5]
    a = cat.xmatch(few, 1 * u.arcsec, table="public.sky")
    b = cat.xmatch((few.ra.deg, few.dec.deg), 1 / 3600, table="public.sky")
    assert list(a["targetid"]) == list(b["targetid"]) == list(targetid[:5])
    assert list(a["input_index"]) == [0, 1, 2, 3, 4] and np.all(a["dist"] < 1e-6)
    with pytest.raises(ValueError, match="too large"):
        cat.xmatch(few, 5 * u.deg, table="public.sky")
    with pytest.raises(CatalogError, match="not a sky table"):
        cat.xmatch(few, 1 * u.arcsec, table="pg_catalog.pg_class")


def test_match_ranges_are_few_per_position():
    rng = np.random.default_rng(5)
    ra, dec = rng.uniform(0, 360, 10_000), np.degrees(np.arcsin(rng.uniform(-1, 1, 10_000)))
    rows, lo, hi = match_ranges(ra, dec, 1 / 3600, coarsen=4)
    assert (lo < hi).all() and set(rows) == set(range(10_000))
    assert len(rows) < 1.5 * 10_000
    own = hpx_index(ra, dec)
    assert np.all(np.bincount(rows[(own[rows] >= lo) & (own[rows] < hi)]) == 1)


def test_cone_with_ra_in_either_convention_nulls_text_and_no_rows(sky):
    """RA stored in [-180, 180) finds the same rows; NULLs come back masked, text as str."""
    cat, _, _, dsn = sky
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.sky_pm AS SELECT targetid, CASE WHEN ra >= 180 THEN ra - 360 "
            "ELSE ra END AS ra, dec, CASE WHEN targetid % 7 = 0 THEN NULL ELSE mag END AS mag, "
            "'T' || (targetid % 3)::text AS label, hpx FROM public.sky"
        )
        conn.execute("CREATE INDEX sky_pm_hpx ON public.sky_pm (hpx)")
        conn.execute("ANALYZE public.sky_pm")
    for ra0, dec0 in [(0.0, 0.0), (359.999, 41.8), (180.0, -30.0), (0.0, 90.0)]:
        want = cat.cone(ra0, dec0, 0.2, table="public.sky", columns=["targetid"], limit=10**6)
        got = cat.cone(ra0 - 360, dec0, 0.2, table="public.sky_pm", limit=10**6)
        assert len(want) > 100
        assert sorted(got["targetid"]) == sorted(want["targetid"]), (ra0, dec0)
        assert np.all(np.diff(got["dist"]) >= 0)
        ids = np.asarray(got["targetid"])
        assert list(got["mag"].mask) == list(ids % 7 == 0)
        assert list(got["label"]) == [f"T{i % 3}" for i in ids]
        near = cat.cone(ra0, dec0, 0.2, table="public.sky_pm", limit=5)  # the 5 nearest
        assert near.meta["truncated"] and list(near["targetid"]) == list(ids[:5])
    empty = cat.cone(10.0, 10.0, 1e-7, table="public.sky_pm")
    assert len(empty) == 0 and empty["dist"].unit == u.arcsec
    assert empty.colnames == ["targetid", "ra", "dec", "mag", "label", "dist"]


def test_cone_client_test_and_sql_test_agree(sky, monkeypatch):
    """The exact test in the client (one scan per range, or ORed ranges with ``where``) and
    the SQL test used past the candidate cap give the same rows, nearest first."""
    from desilab.desi import catalog as catalog_module

    cat, _, _, _ = sky
    for ra0, dec0, r in [(0.0, 90.0, 0.3), (359.999, 41.8, 0.3), (45.0, 41.8103, 2 / 60)]:
        a = cat.cone(ra0, dec0, r, table="public.sky", limit=10**6)
        assert " UNION ALL " in a.meta["sql"] or a.meta["ranges"] == 1
        b = cat.cone(ra0, dec0, r, table="public.sky", where="mag > %s", params=(0,), limit=10**6)
        assert " OR " in b.meta["sql"] or b.meta["ranges"] == 1
        assert len(a) > 20 and list(a["targetid"]) == list(b["targetid"])
        np.testing.assert_allclose(a["dist"], b["dist"])
        monkeypatch.setattr(catalog_module, "_MIN_CAP", 5)  # 5 candidates at most
        c = cat.cone(ra0, dec0, r, table="public.sky", limit=1)
        monkeypatch.undo()
        assert "ORDER BY h" in c.meta["sql"] and c.meta["truncated"]
        assert list(c["targetid"]) == list(a["targetid"][:1])
        np.testing.assert_allclose(c["dist"], a["dist"][:1])

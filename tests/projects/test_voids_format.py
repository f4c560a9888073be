"""DESIVAST VoidFinder format: our catalogs round-trip, DESIVAST-layout files load and classify."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from desilab.desi import read_voidfinder
from desilab.desi.datamodel import HOLES, MAXIMALS, dtype_of
from desilab.projects.voids import (
    VFLAG_VOID,
    VFLAG_WALL,
    BoxMask,
    VoidCatalog,
    classify_galaxies,
    find_voids,
    plant_voids,
    poisson_catalog,
)


@pytest.fixture(scope="module")
def found():
    rng = np.random.default_rng(4)
    mask = BoxMask((0.0, 0.0, 0.0), (120.0, 120.0, 120.0))
    gal = plant_voids(poisson_catalog(mask, 0.01, rng), np.array([[60.0, 60.0, 60.0]]), [18.0])
    return gal, mask, find_voids(gal, mask, workers=1, header={"DLIMU": (300.0, "test")})


def test_round_trip_keeps_every_column_header_and_frame(found, tmp_path):
    _, _, catalog = found
    path = catalog.write(tmp_path / "VoidFinder_NGC.fits")
    back = VoidCatalog.read(path)
    for name in catalog.maximals.dtype.names:
        np.testing.assert_array_equal(back.maximals[name], catalog.maximals[name])
    for name in catalog.holes.dtype.names:
        np.testing.assert_array_equal(back.holes[name], catalog.holes[name])
    np.testing.assert_allclose(back.axes, catalog.axes, rtol=0, atol=0)
    assert back.header["VOID"] == len(catalog)
    assert back.header["DLIMU"] == 300.0
    assert back.header["VFVERS"] == catalog.header["VFVERS"][0]
    # The DR1 reader (as for the DESIVAST VAC) sees the same file.
    maximals, holes = read_voidfinder(path)
    assert len(maximals) == len(catalog) and len(holes) == len(catalog.holes)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MAXIMALS", "HOLES"]
        assert hdul["HOLES"].header["HOLE"] == len(catalog.holes)


def _desivast_like(path, catalog, lower: bool) -> None:
    """A file laid out as the DESIVAST DR1 VoidFinder VAC, written without our writer."""
    names = str.lower if lower else str.upper
    maximals = Table({names(k): catalog.maximals[k] for k in catalog.maximals.dtype.names})
    holes = Table({names(k): catalog.holes[k] for k in catalog.holes.dtype.names})
    for table in (maximals, holes):
        for col in ("x", "y", "z", "radius", "r", "r_eff", "r_eff_uncert"):
            if names(col) in table.colnames:
                table[names(col)].unit = "Mpc h-1"
    primary = fits.PrimaryHDU()
    primary.header["DLIML"], primary.header["DLIMU"] = 0.0, 300.0
    primary.header["MAGLIM"] = -20.0
    m_hdu = fits.table_to_hdu(maximals)
    m_hdu.name = "MAXIMALS"
    h_hdu = fits.table_to_hdu(holes)
    h_hdu.name = "HOLES"
    fits.HDUList([primary, m_hdu, h_hdu]).writeto(path)


@pytest.mark.parametrize("lower", [False, True], ids=["DESIVAST upper-case", "VAST lower-case"])
def test_desivast_layout_files_load_and_classify(found, tmp_path, lower):
    gal, mask, catalog = found
    path = tmp_path / "DESIVAST_BGS_VOLLIM_VoidFinder_NGC.fits"
    _desivast_like(path, catalog, lower)
    loaded = VoidCatalog.read(path)
    np.testing.assert_allclose(loaded.maximals["RADIUS"], catalog.maximals["RADIUS"])
    np.testing.assert_array_equal(loaded.holes["VOID"], catalog.holes["VOID"])
    # DESIVAST files have no frame keywords: VAST's survey axes are used.
    np.testing.assert_array_equal(loaded.axes, np.eye(3))
    assert loaded.header["DLIMU"] == 300.0
    m = classify_galaxies(gal, loaded, mask)
    ours = classify_galaxies(gal, catalog, mask)
    np.testing.assert_array_equal(m.void, ours.void)
    inside = np.linalg.norm(gal - 60.0, axis=1) < 10.0
    assert not inside.any() or set(m.vflag[inside].tolist()) == {VFLAG_VOID}


def test_vast_output_with_its_extra_hdus_loads(found, tmp_path):
    """VAST's own VoidFinder output: lower-case columns, 'Mpc/h' units, VAST's primary
    keywords, and MASK (image), WALL and FIELD HDUs around MAXIMALS and HOLES."""
    gal, mask, catalog = found
    path = tmp_path / "SDSS_dr7_VoidFinder_Output.fits"
    _desivast_like(path, catalog, lower=True)
    with fits.open(path, mode="update") as hdul:
        head = hdul["PRIMARY"].header
        for key, value in {
            "METRIC": "comoving", "DLIML": 0.0, "HP": 1.0, "RMISO": True, "MAGCUT": True,
            "NNS": 3, "NNSA": 4.21, "NNSS": 1.87, "MSKRES": 1, "COVSTR": 2.1, "VOLUME": 1.7e6,
            "GALAXY": len(gal), "VOID": len(catalog), "HGEL": 5.0, "GOX": -1.0, "NCPU": 2,
        }.items():  # fmt: skip
            head[key] = value
        hdul.insert(1, fits.ImageHDU(np.ones((180, 360), dtype=np.int64), name="MASK"))
        for name in ("WALL", "FIELD"):
            xyz = Table({"x": gal[:10, 0], "y": gal[:10, 1], "z": gal[:10, 2]})
            hdul.append(fits.BinTableHDU(xyz, name=name))
    loaded = VoidCatalog.read(path)
    for name in ("X", "RADIUS", "VOID", "EDGE", "R_EFF"):
        np.testing.assert_array_equal(loaded.maximals[name], catalog.maximals[name])
    np.testing.assert_array_equal(loaded.holes["RADIUS"], catalog.holes["RADIUS"])
    assert loaded.header["VOLUME"] == 1.7e6 and loaded.header["METRIC"] == "comoving"
    m = classify_galaxies(gal, loaded, mask)
    np.testing.assert_array_equal(m.void, classify_galaxies(gal, catalog, mask).void)


def test_missing_columns_are_named(found, tmp_path):
    _, _, catalog = found
    path = tmp_path / "broken.fits"
    _desivast_like(path, catalog, lower=False)
    with fits.open(path, mode="update") as hdul:
        hdul["HOLES"] = fits.BinTableHDU(
            Table({"X": [1.0], "Y": [1.0], "Z": [1.0], "VOID": [0]}), name="HOLES"
        )
    with pytest.raises(Exception, match="RADIUS"):
        VoidCatalog.read(path)


def test_classification_flags_by_hand():
    maximals = np.zeros(1, dtype=dtype_of(MAXIMALS))
    holes = np.zeros(2, dtype=dtype_of(HOLES))
    holes["X"], holes["Y"], holes["Z"] = [50.0, 62.0], [50.0, 50.0], [50.0, 50.0]
    holes["RADIUS"], holes["VOID"] = [10.0, 6.0], [0, 0]
    maximals["X"], maximals["Y"], maximals["Z"], maximals["RADIUS"] = 50.0, 50.0, 50.0, 10.0
    catalog = VoidCatalog(maximals, holes)
    mask = BoxMask((0.0, 0.0, 0.0), (100.0, 100.0, 100.0))
    pts = np.array(
        [
            [50.0, 50.0, 55.0],  # in the big hole
            [66.0, 50.0, 50.0],  # only in the small hole
            [60.0, 50.0, 50.0],  # exactly on the big hole's surface, inside the small one
            [50.0, 50.0, 60.0],  # on the surface only: not a void galaxy
            [30.0, 30.0, 30.0],  # wall
            [5.0, 50.0, 50.0],  # 5 Mpc/h from the x = 0 face: edge
            [50.0, 50.0, 150.0],  # outside
            [-1.0, 95.0, 95.0],  # outside too (edge test not even reached)
        ]
    )
    m = classify_galaxies(pts, catalog, mask, targetid=np.arange(8) + 100)
    np.testing.assert_array_equal(m.vflag, [1, 1, 1, 0, 0, 2, 9, 9])
    np.testing.assert_array_equal(m.void, [0, 0, 0, -1, -1, -1, -1, -1])
    assert m.counts() == {"wall": 2, "void": 3, "edge": 1, "outside": 2}
    np.testing.assert_array_equal(m.members(0), [0, 1, 2])
    assert m.vflag.dtype == np.int8 and VFLAG_WALL == 0

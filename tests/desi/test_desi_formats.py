"""Round trips of every DR1 format, lazy reads, layout paths and selection helpers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from desilab.desi import (
    ArmSpectra,
    CoaddFile,
    CoaddSpectra,
    DR1Layout,
    FastspecWriter,
    ZpixWriter,
    find_primary,
    good_redshift,
    iter_zpix,
    read_coadd,
    read_fastspec,
    read_redrock,
    read_voidfinder,
    read_zpix,
    wavelength,
    write_coadd,
    write_redrock,
    write_voidfinder,
    zcat_primary,
)
from desilab.desi.datamodel import (
    EXP_FIBERMAP,
    HOLES,
    MAXIMALS,
    NDIAG,
    REDSHIFTS,
    SCORES,
    dtype_of,
    fibermap_columns,
    zcatalog_columns,
)


def _random_rows(dtype: np.dtype, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        base, shape = dtype[name].base, (n, *dtype[name].shape)
        if base.kind == "f":
            rows[name] = rng.normal(size=shape)
        elif base.kind in "iu":
            rows[name] = rng.integers(-100 if base.kind == "i" else 0, 100, size=shape)
        elif base.kind == "b":
            rows[name] = rng.random(shape) < 0.5
        else:
            rows[name] = np.array([f"x{i}"[: base.itemsize] for i in range(n)], dtype=base)
    return rows


def _spectra(n: int, rng: np.random.Generator) -> CoaddSpectra:
    fm = _random_rows(dtype_of(fibermap_columns("main")), n, rng)
    fm["TARGETID"] = rng.permutation(np.arange(1000, 1000 + n))
    arms = {}
    for arm in "BRZ":
        w = wavelength(arm)
        mask = (rng.random((n, len(w))) < 0.01).astype(np.uint32) * np.uint32(2**31 + 4)
        arms[arm] = ArmSpectra(
            w,
            rng.normal(size=(n, len(w))).astype(np.float32),
            rng.random((n, len(w))).astype(np.float32),
            mask,
            rng.random((n, NDIAG, len(w))).astype(np.float32),
        )
    ef = _random_rows(dtype_of(EXP_FIBERMAP), 2 * n, rng)
    ef["TARGETID"] = np.repeat(fm["TARGETID"], 2)
    sc = _random_rows(dtype_of(SCORES), n, rng)
    sc["TARGETID"] = fm["TARGETID"]
    return CoaddSpectra(fibermap=fm, arms=arms, exp_fibermap=ef, scores=sc)


@pytest.mark.parametrize("compress_mask", [False, True])
def test_coadd_round_trip(tmp_path, compress_mask):
    rng = np.random.default_rng(1)
    spec = _spectra(7, rng)
    path = write_coadd(
        tmp_path / "coadd-main-dark-123.fits",
        spec,
        survey="main",
        program="dark",
        healpix=123,
        compress_mask=compress_mask,
    )
    back = read_coadd(path)
    assert np.array_equal(back.targetid, spec.fibermap["TARGETID"])
    for arm in "BRZ":
        a, b = spec.arms[arm], back.arms[arm]
        assert np.array_equal(a.wave, b.wave)
        assert b.flux.dtype == np.float32 and np.array_equal(a.flux, b.flux)
        assert np.array_equal(a.ivar, b.ivar)
        assert b.mask.dtype == np.uint32 and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.resolution, b.resolution)
    for name in spec.fibermap.dtype.names:
        got = np.asarray(back.fibermap[name])
        want = spec.fibermap[name]
        if want.dtype.kind == "S":
            want = np.char.decode(want)
        assert np.array_equal(got, want), name
    assert len(back.exp_fibermap) == 14
    assert np.allclose(back.scores["MEDIAN_COADD_SNR_R"], spec.scores["MEDIAN_COADD_SNR_R"])
    hdr = fits.getheader(path, 0)
    assert (hdr["HPXPIXEL"], hdr["HPXNSIDE"], hdr["HPXNEST"]) == (123, 64, True)
    assert fits.getheader(path, "B_FLUX")["BUNIT"] == "10**-17 erg/(s cm2 Angstrom)"
    names = [h.name for h in fits.open(path)]
    assert names[1:3] == ["FIBERMAP", "EXP_FIBERMAP"] and names[-1] == "SCORES"
    assert names[3:8] == ["B_WAVELENGTH", "B_FLUX", "B_IVAR", "B_MASK", "B_RESOLUTION"]


def test_wavelength_grids():
    for arm, (lo, hi, n) in {
        "B": (3600.0, 5800.0, 2751),
        "R": (5760.0, 7620.0, 2326),
        "Z": (7520.0, 9824.0, 2881),
    }.items():
        w = wavelength(arm)
        assert (len(w), w[0], w[-1]) == (n, lo, hi)
        assert np.allclose(np.diff(w), 0.8)


def test_lazy_rows_equal_full_read(tmp_path):
    spec = _spectra(9, np.random.default_rng(2))
    path = write_coadd(tmp_path / "c.fits", spec, survey="main", program="dark", healpix=5)
    full = read_coadd(path)
    want = [int(full.targetid[6]), int(full.targetid[2])]
    with CoaddFile(path) as f:
        part = f.read(want)
    assert part.targetid.tolist() == want
    rows = [6, 2]
    for arm in "BRZ":
        for attr in ("flux", "ivar", "mask", "resolution"):
            assert np.array_equal(
                getattr(part.arms[arm], attr), getattr(full.arms[arm], attr)[rows]
            )
    assert set(part.exp_fibermap["TARGETID"]) == set(want)
    with CoaddFile(path) as f, pytest.raises(KeyError):
        f.read([999_999])


def test_redrock_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    rr = _random_rows(dtype_of(REDSHIFTS), 5, rng)
    rr["TARGETID"] = np.arange(5) + 10
    rr["SPECTYPE"] = [b"QSO", b"GALAXY", b"STAR", b"QSO", b"GALAXY"]
    fm = _random_rows(dtype_of(fibermap_columns("main")), 5, rng)
    fm["TARGETID"] = rr["TARGETID"]
    path = write_redrock(
        tmp_path / "redrock-main-dark-5.fits", rr, fm, survey="main", program="dark", healpix=5
    )
    back = read_redrock(path)
    assert back["COEFF"].shape == (5, 10)
    assert np.array_equal(back["COEFF"], rr["COEFF"]) and np.array_equal(back["Z"], rr["Z"])
    assert list(back["SPECTYPE"]) == ["QSO", "GALAXY", "STAR", "QSO", "GALAXY"]
    assert read_redrock(path, targetids=[11, 13])["TARGETID"].tolist() == [11, 13]
    assert read_redrock(path, hdu="FIBERMAP")["TARGETID"].tolist() == list(range(10, 15))
    assert fits.getheader(path, 0)["TEMNAM00"] == "GALAXY"


@pytest.mark.parametrize("survey", ["main", "sv3"])
def test_zpix_round_trip_in_chunks(tmp_path, survey):
    rng = np.random.default_rng(4)
    dtype = dtype_of(zcatalog_columns(survey))
    assert ("SV3_DESI_TARGET" in dtype.names) == (survey == "sv3")
    rows = _random_rows(dtype, 25, rng)
    w = ZpixWriter(tmp_path / f"zpix-{survey}-dark.fits", survey, "dark")
    w.append(rows[:10])
    w.append(rows[10:])
    path = w.close()
    full = read_zpix(path)
    assert len(full) == 25 and full.meta["SURVEY"] == survey
    assert np.array_equal(full["ZCAT_PRIMARY"], rows["ZCAT_PRIMARY"])
    assert np.array_equal(full["COEFF"], rows["COEFF"])
    assert full["TARGET_RA"].unit == "deg" and str(full["FLUX_G"].unit) == "nmgy"
    chunks = list(iter_zpix(path, chunk_rows=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    assert np.array_equal(np.concatenate([c["TARGETID"] for c in chunks]), full["TARGETID"])
    some = read_zpix(path, columns=["TARGETID", "Z"], rows=np.array([3, 20]))
    assert some.colnames == ["TARGETID", "Z"] and some["TARGETID"].tolist() == [
        rows["TARGETID"][3],
        rows["TARGETID"][20],
    ]


def test_fastspec_round_trip_and_version_glob(tmp_path):
    rng = np.random.default_rng(5)
    layout = DR1Layout(tmp_path)
    for version in ("v1.0", "v2.1"):
        fs = _random_rows(FastspecWriter.fastspec_dtype, 6, rng)
        md = _random_rows(FastspecWriter.metadata_dtype, 6, rng)
        fs["TARGETID"] = md["TARGETID"] = np.arange(6) + (1 if version == "v2.1" else 100)
        w = FastspecWriter(layout.fastspec_path(version))
        w.append(fs[:4], md[:4])
        w.append(fs[4:], md[4:])
        w.close()
    assert layout.fastspec_version() == "v2.1"
    t = read_fastspec(layout)
    assert t["TARGETID"].tolist() == list(range(1, 7))
    assert {
        "LOGMSTAR",
        "SFR",
        "ABSMAG01_SDSS_G",
        "ABSMAG01_SDSS_R",
        "DN4000",
        "HALPHA_EW",
        "EBV",
        "RA",
    } <= set(t.colnames)
    assert np.allclose(t["HALPHA_EW"], fs["HALPHA_EW"])
    assert t["ZWARN"].dtype == np.int8
    assert np.array_equal(t["ZWARN"], md["ZWARN"])
    assert read_fastspec(layout, columns=["TARGETID", "Z", "LOGMSTAR"]).colnames == [
        "TARGETID",
        "Z",
        "LOGMSTAR",
    ]


def test_voidfinder_round_trip_and_lowercase(tmp_path):
    rng = np.random.default_rng(6)
    maximals = _random_rows(dtype_of(MAXIMALS), 3, rng)
    holes = _random_rows(dtype_of(HOLES), 8, rng)
    path = write_voidfinder(
        tmp_path / "DESIVAST_BGS_VOLLIM_VoidFinder_NGC.fits", maximals, holes, {"DLIMU": 600.0}
    )
    m, h = read_voidfinder(path)
    assert np.allclose(m["RADIUS"], maximals["RADIUS"]) and len(h) == 8
    assert str(m["X"].unit) == "Mpc / h" or m["X"].unit is not None
    # VAST can write lower-case names (capitalize_colnames=False): read them the same.
    lower = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.BinTableHDU(
                maximals.astype([(n.lower(), maximals.dtype[n]) for n in maximals.dtype.names]),
                name="MAXIMALS",
            ),
            fits.BinTableHDU(
                holes.astype([(n.lower(), holes.dtype[n]) for n in holes.dtype.names]), name="HOLES"
            ),
        ]
    )
    lower.writeto(tmp_path / "lower.fits")
    m2, _ = read_voidfinder(tmp_path / "lower.fits")
    assert np.allclose(m2["EDGE"], maximals["EDGE"])


def test_layout_paths(tmp_path):
    layout = DR1Layout(tmp_path)
    assert layout.coadd("main", "bright", 12345) == tmp_path / (
        "spectro/redux/iron/healpix/main/bright/123/12345/coadd-main-bright-12345.fits"
    )
    assert layout.redrock("sv3", "dark", 7).name == "redrock-sv3-dark-7.fits"
    assert layout.redrock("sv3", "dark", 7).parent == layout.healpix_dir("sv3", "dark", 7)
    assert layout.zpix("main", "dark") == tmp_path / (
        "spectro/redux/iron/zcatalog/v1/zpix-main-dark.fits"
    )
    assert layout.desivast_voidfinder("sgc") == tmp_path / (
        "vac/dr1/desivast/v1.0/DESIVAST_BGS_VOLLIM_VoidFinder_SGC.fits"
    )
    assert layout.fastspec_path("v3.0") == tmp_path / (
        "vac/dr1/fastspecfit/iron/v3.0/catalogs/fastspec-iron-main-bright.fits"
    )


def test_good_redshift_and_primary_helpers():
    t = {"ZWARN": np.array([0, 4, 0, 0]), "DELTACHI2": np.array([30.0, 100.0, 25.0, 9.0])}
    assert good_redshift(t).tolist() == [True, False, False, False]
    assert good_redshift(zwarn=t["ZWARN"], deltachi2=t["DELTACHI2"], min_deltachi2=5).tolist() == [
        True,
        False,
        True,
        True,
    ]
    tid = np.array([7, 7, 7, 8, 9, 9])
    zwarn = np.array([4, 0, 0, 4, 4, 4])
    score = np.array([99.0, 10.0, 20.0, 1.0, 5.0, 6.0])
    nspec, primary = find_primary(tid, zwarn, score)
    assert nspec.tolist() == [3, 3, 3, 1, 2, 2]
    # ZWARN == 0 beats a higher score; among good rows the highest score wins.
    assert primary.tolist() == [False, False, True, True, False, True]
    assert zcat_primary({"ZCAT_PRIMARY": primary}).tolist() == primary.tolist()

"""A mock DR1: ``generate_mock(outdir, ...)`` writes ``outdir/dr1`` (the DR1 tree) and
``outdir/truth`` (what was injected), deterministically for a seed.

Spectra policy
--------------
A healpix coadd stores ~414 kB per target (flux, ivar, mask and an 11-diagonal
resolution matrix in three arms), so coadds are written for:

* every labelled QSO (BAL, [O III] outflow or anomaly) and ``qso_spectra_fraction``
  of the others;
* ``star_spectra_fraction`` of the stars and ``galaxy_spectra_fraction`` of the
  galaxies.

Every target still has its redrock result (``redrock-*.fits`` holds all targets of
the pixel), its zpix row and, for BGS galaxies, its FastSpecFit row. Readers
must match coadd and redrock rows by TARGETID, as they should for DR1 anyway.

Duplicates: ``duplicate_fraction`` of targets are re-observed in SV3 (``sv3``
coadds, redrock and zpix files). ZCAT_NSPEC / ZCAT_PRIMARY are computed over all
the zpix files of the mock (as DR1 does in zall-pix), so keeping ZCAT_PRIMARY
rows gives one row per TARGETID across the whole tree.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.cosmology import Planck18
from astropy.table import Table
from tqdm.auto import tqdm

from .datamodel import NSIDE
from .fitsutil import open_fits, read_table
from .fitswrite import FitsTableWriter
from .layout import DR1Layout
from .mock_galaxy import (
    _MGRID,
    GALAXY_TRUTH_DTYPE,
    R_LIMIT,
    VOID_EFFECT,
    _draw,
    continuum_maggies,
    line_fluxes_10pc,
    line_maggies,
    mass_function,
)
from .mock_lss import CAPS, HPX, Footprint, make_footprint, sample_galaxies, uniform_positions
from .mock_observe import process_pixel
from .mock_physics import comoving_distance
from .mock_pixel import PixelConfig
from .mock_qso import QSO_TRUTH_DTYPE
from .mock_star import STAR_TRUTH_DTYPE
from .mock_voids import find_voids
from .vac import FASTSPEC_VERSION, FastspecWriter, write_voidfinder
from .zcatalog import ZpixWriter, good_redshift

__all__ = ["MockSummary", "generate_mock", "read_truth", "vollim_mask"]

ZMAX_GALAXY = 0.40
QSO_DENSITY_DEG2 = 200.0
STAR_DENSITY_DEG2 = 300.0
VOLLIM_MR = -20.0
VOLLIM_Z = (0.01, 0.24)


@dataclass
class MockSummary:
    """What :func:`generate_mock` wrote, with timings (seconds) and sizes (bytes)."""

    outdir: str
    data_root: str
    truth_dir: str
    seed: int
    n_qso: int
    n_galaxy: int
    n_star: int
    area_deg2: float
    n_pixels: int
    n_spectra: int = 0
    n_coadd_files: int = 0
    zpix_rows: dict = field(default_factory=dict)
    n_voids: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    bytes_dr1: int = 0
    bytes_truth: int = 0


def _selection_density(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean comoving density (Mpc^-3) of galaxies passing r < 20.175, on a z grid."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 991]))
    zs = np.linspace(0.005, ZMAX_GALAXY, 48)
    ntot = np.trapezoid(mass_function(_MGRID), _MGRID)
    frac = np.zeros(len(zs))
    m = 2500
    for i, z in enumerate(zs):
        d = _draw(rng, np.full(m, 8.0), np.zeros(m, dtype=bool))
        zz = np.full(m, z)
        r = continuum_maggies(d, zz)[:, 1] + line_maggies(line_fluxes_10pc(d), zz)[:, 1]
        frac[i] = np.mean(r > 10 ** (-0.4 * R_LIMIT))
    return zs, ntot * frac


def _area_for(n_galaxy: int, n_qso: int, n_star: int, zs: np.ndarray, nbar: np.ndarray) -> float:
    dvdz = Planck18.differential_comoving_volume(zs).to_value(u.Mpc**3 / u.deg**2)
    per_deg2 = np.trapezoid(nbar * dvdz, zs)
    return max(n_galaxy / per_deg2, n_qso / QSO_DENSITY_DEG2, n_star / STAR_DENSITY_DEG2, 3.0)


def _plan(rng, footprint: Footprint, n_qso, n_galaxy, n_star, dup, nbar_fn) -> tuple[dict, dict]:
    """Positions and identities of every object, grouped into per-pixel tasks."""
    objs: dict[str, dict] = {}
    lss_meta = {}
    gal = {"ra": [], "dec": [], "zcos": [], "delta8": [], "void": []}
    for cap, (_, _, share) in CAPS.items():
        n_cap = (
            int(round(n_galaxy * share))
            if cap == "NGC"
            else n_galaxy - int(round(n_galaxy * CAPS["NGC"][2]))
        )
        if n_cap <= 0:
            continue
        f = sample_galaxies(rng, footprint, cap, n_cap, ZMAX_GALAXY, nbar_fn)
        for key, value in zip(gal, (f.ra, f.dec, f.z_cosmo, f.delta8, f.in_void), strict=True):
            gal[key].append(value)
        lss_meta[cap] = {
            "void_threshold_delta": f.void_threshold,
            "cell_mpc": f.cell,
            "void_volume_fraction": f.void_volume_fraction,
            "galaxy_void_fraction": float(np.mean(f.in_void)),
        }
    gal = {k: np.concatenate(v) if v else np.zeros(0) for k, v in gal.items()}
    dist = comoving_distance(gal["zcos"]) * Planck18.h
    ra_r, dec_r = np.radians(gal["ra"]), np.radians(gal["dec"])
    gal["xyz"] = np.stack(
        [
            dist * np.cos(dec_r) * np.cos(ra_r),
            dist * np.cos(dec_r) * np.sin(ra_r),
            dist * np.sin(dec_r),
        ],
        axis=-1,
    ).reshape(-1, 3)
    objs["gal"] = gal
    for name, n in (("qso", n_qso), ("star", n_star)):
        ra, dec = uniform_positions(rng, footprint, n) if n else (np.zeros(0), np.zeros(0))
        objs[name] = {"ra": ra, "dec": dec}
    objs["star"]["bright"] = rng.random(n_star) < 0.7
    start = 0
    for name in ("gal", "qso", "star"):
        o = objs[name]
        n = len(o["ra"])
        o["objid"] = np.arange(start, start + n)
        start += n
        o["u"] = rng.random(n)
        o["dup"] = rng.random(n) < dup
        o["pix"] = HPX.lonlat_to_healpix(o["ra"] * u.deg, o["dec"] * u.deg) if n else np.zeros(0)
    tasks = {}
    for name, o in objs.items():
        order = np.argsort(o["pix"], kind="stable")
        pix_sorted = o["pix"][order]
        bounds = np.searchsorted(pix_sorted, footprint.pixels, side="left")
        ends = np.searchsorted(pix_sorted, footprint.pixels, side="right")
        for pix, a, b in zip(footprint.pixels.tolist(), bounds, ends, strict=True):
            t = tasks.setdefault(pix, {"pixel": pix})
            idx = order[a:b]
            for key, value in o.items():
                if key != "pix":
                    t[f"{name}_{key}"] = value[idx]
    return dict(sorted(tasks.items())), lss_meta


def _writers(layout: DR1Layout) -> dict:
    return {
        (s, p): ZpixWriter(layout.zpix(s, p), s, p)
        for s in ("main", "sv3")
        for p in ("bright", "dark")
    }


def _truth_writer(path: Path, dtype: np.dtype, header: dict) -> FitsTableWriter:
    w = FitsTableWriter(path, header)
    w.add_table("TRUTH", dtype)
    return w


def generate_mock(
    outdir: str | Path,
    n_qso: int,
    n_galaxy: int,
    n_star: int,
    seed: int,
    progress: bool = True,
    *,
    qso_spectra_fraction: float = 0.4,
    galaxy_spectra_fraction: float = 0.02,
    star_spectra_fraction: float = 0.1,
    duplicate_fraction: float = 0.03,
    area_deg2: float | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> MockSummary:
    """Generate a mock DR1 under ``outdir/dr1`` with its truth under ``outdir/truth``.

    Parameters
    ----------
    outdir : str or Path
        Output folder; ``outdir/dr1`` is DATA_ROOT.
    n_qso, n_galaxy, n_star : int
        Numbers of objects.
    seed : int
        Random seed; the same seed gives byte-identical data arrays.
    progress : bool
        Show a tqdm progress bar over healpix pixels.
    qso_spectra_fraction, galaxy_spectra_fraction, star_spectra_fraction : float
        Fractions of (unlabelled) objects whose coadd spectra are written
        (see the module docstring); labelled QSOs always get spectra.
    duplicate_fraction : float
        Fraction of targets also observed in SV3.
    area_deg2 : float, optional
        Footprint area; by default what the BGS selection needs for ``n_galaxy``
        galaxies (and at least ``n_qso/200`` and ``n_star/300`` deg2).
    workers : int, optional
        Processes (default: 1 for small mocks, else up to the CPU count).
    overwrite : bool
        Replace an existing ``outdir/dr1`` and ``outdir/truth``.

    Returns
    -------
    MockSummary
    """
    t0 = time.perf_counter()
    outdir = Path(outdir)
    root, truth_dir = outdir / "dr1", outdir / "truth"
    for folder in (root, truth_dir):
        if folder.exists():
            if not overwrite:
                raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
            shutil.rmtree(folder)
    truth_dir.mkdir(parents=True)
    layout = DR1Layout(root)
    timings = {}
    zs, nbar = _selection_density(seed)
    area = area_deg2 or _area_for(n_galaxy, n_qso, n_star, zs, nbar)
    footprint = make_footprint(area)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    # With a given area the density is rescaled so exactly n_galaxy galaxies are drawn.
    tasks, lss_meta = _plan(
        rng,
        footprint,
        n_qso,
        n_galaxy,
        n_star,
        duplicate_fraction,
        lambda z: np.interp(z, zs, nbar, right=0.0),
    )
    timings["plan"] = time.perf_counter() - t0
    cfg = PixelConfig(
        str(root), seed, qso_spectra_fraction, galaxy_spectra_fraction, star_spectra_fraction
    )
    summary = MockSummary(
        str(outdir),
        str(root),
        str(truth_dir),
        seed,
        n_qso,
        n_galaxy,
        n_star,
        footprint.area_deg2,
        len(footprint.pixels),
    )
    header = {"SEED": seed, "NSIDE": NSIDE, "AREA": footprint.area_deg2}
    gal_header = dict(header)
    gal_header["VDLOGM"] = (VOID_EFFECT["DLOGMSTAR_CHAR"], "void shift of log M* (char.)")
    gal_header["VDLSSFR"] = (VOID_EFFECT["DLOGSSFR_SF"], "void shift of log sSFR (SF seq.)")
    gal_header["VDLOGMQ"] = (VOID_EFFECT["DLOGM_QUENCH"], "void shift of quenching mass")
    for cap, meta in lss_meta.items():
        gal_header[f"VTHR{cap}"] = (meta["void_threshold_delta"], "void: smoothed delta below")
        gal_header[f"VVOL{cap}"] = (meta["void_volume_fraction"], "void volume fraction")
    zpix = _writers(layout)
    fast = FastspecWriter(layout.fastspec_path(FASTSPEC_VERSION))
    truths = {
        "QSO": _truth_writer(truth_dir / "truth-qso.fits", QSO_TRUTH_DTYPE, header),
        "GALAXY": _truth_writer(truth_dir / "truth-galaxy.fits", GALAXY_TRUTH_DTYPE, gal_header),
        "STAR": _truth_writer(truth_dir / "truth-star.fits", STAR_TRUTH_DTYPE, header),
    }
    vollim = {"ra": [], "dec": [], "z": []}
    n_total = n_qso + n_galaxy + n_star
    if workers is None:
        workers = 1 if n_total < 20_000 else max(1, min(os.cpu_count() or 1, 8))
    t1 = time.perf_counter()
    bar = tqdm(total=len(tasks), desc="mock DR1 healpix", unit="pix", disable=not progress)
    try:
        if workers > 1:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(process_pixel, [cfg] * len(tasks), tasks.values(), chunksize=1)
        else:
            pool = None
            results = (process_pixel(cfg, t) for t in tasks.values())
        for res in results:
            for key, rows in res["zpix"].items():
                zpix[key].append(rows)
            if res["fastspec"] is not None:
                fs, md = res["fastspec"]
                fast.append(fs, md)
                ok = (md["ZWARN"] == 0) & (md["DELTACHI2"] > 25)
                ok &= (fs["ABSMAG01_SDSS_R"] < VOLLIM_MR) & (md["Z"] > VOLLIM_Z[0])
                ok &= md["Z"] < VOLLIM_Z[1]
                for key, col in (("ra", md["RA"]), ("dec", md["DEC"]), ("z", md["Z"])):
                    vollim[key].append(col[ok])
            for cls, rows in res["truth"].items():
                truths[cls].append("TRUTH", rows)
                if cls in ("QSO", "STAR", "GALAXY"):
                    summary.n_spectra += int(np.sum(rows["HAS_SPECTRUM"]))
            bar.update(1)
        if pool is not None:
            pool.shutdown()
    except BaseException:
        for w in (*zpix.values(), fast, *truths.values()):
            w.abort()
        raise
    finally:
        bar.close()
    timings["pixels"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    for key, w in zpix.items():
        if w.nrows:
            summary.zpix_rows[f"{key[0]}-{key[1]}"] = w.nrows
            w.close()
        else:
            w.abort()
    fast.close()
    for w in truths.values():
        w.close()
    timings["catalogs"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    summary.n_voids = _write_voids(layout, footprint, vollim, seed)
    timings["voids"] = time.perf_counter() - t3
    timings["total"] = time.perf_counter() - t0
    summary.timings = {k: round(v, 2) for k, v in timings.items()}
    summary.n_coadd_files = sum(1 for _ in layout.iter_healpix())
    summary.bytes_dr1 = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    summary.bytes_truth = sum(p.stat().st_size for p in truth_dir.rglob("*") if p.is_file())
    meta = asdict(summary) | {
        "lss": lss_meta,
        "void_effect": VOID_EFFECT,
        "parameters": {
            "qso_spectra_fraction": qso_spectra_fraction,
            "galaxy_spectra_fraction": galaxy_spectra_fraction,
            "star_spectra_fraction": star_spectra_fraction,
            "duplicate_fraction": duplicate_fraction,
        },
    }
    (truth_dir / "mock.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return summary


def _write_voids(layout: DR1Layout, footprint: Footprint, vollim: dict, seed: int) -> dict:
    ra, dec, z = (
        np.concatenate(vollim[k]) if vollim[k] else np.zeros(0) for k in ("ra", "dec", "z")
    )
    h = Planck18.h
    dist = comoving_distance(z) * h
    dmin, dmax = (Planck18.comoving_distance(VOLLIM_Z).to_value(u.Mpc) * h).tolist()
    cap = footprint.cap_of(ra, dec)
    counts = {}
    for name in CAPS:
        sel = cap == name
        r, d = np.radians(ra[sel]), np.radians(dec[sel])
        xyz = np.stack(
            [
                dist[sel] * np.cos(d) * np.cos(r),
                dist[sel] * np.cos(d) * np.sin(r),
                dist[sel] * np.sin(d),
            ],
            axis=-1,
        ).reshape(-1, 3)
        pix_in_cap = footprint.pixels[footprint.cap == name]

        def in_survey(p, pix_in_cap=pix_in_cap):
            p = np.atleast_2d(p)
            rr = np.linalg.norm(p, axis=1)
            lon = np.arctan2(p[:, 1], p[:, 0]) * u.rad
            lat = np.arcsin(np.clip(p[:, 2] / np.maximum(rr, 1e-9), -1, 1)) * u.rad
            inside = np.isin(HPX.lonlat_to_healpix(lon, lat), pix_in_cap)
            return inside & (rr >= dmin) & (rr <= dmax)

        rng = np.random.default_rng(np.random.SeedSequence([seed, 77, len(name)]))
        maximals, holes = find_voids(xyz, in_survey, rng)
        header = {
            "DLIML": (round(dmin, 2), "Lower Distance Limit (Mpc/h)"),
            "DLIMU": (round(dmax, 2), "Upper Distance Limit (Mpc/h)"),
            "ZLIML": VOLLIM_Z[0],
            "ZLIMU": VOLLIM_Z[1],
            "MAGLIM": VOLLIM_MR,
            "OMEGAM": round(Planck18.Om0, 4),
            "HP": 1.0,
            "GALAXY": len(xyz),
            "VOID": len(maximals),
            "METRIC": "comoving",
        }
        write_voidfinder(layout.desivast_voidfinder(name), maximals, holes, header)
        counts[name] = len(maximals)
    return counts


def vollim_mask(table) -> np.ndarray:
    """The DESIVAST-like volume-limited selection used for the mock voids."""
    return (
        good_redshift(table)
        & (np.asarray(table["ABSMAG01_SDSS_R"]) < VOLLIM_MR)
        & (np.asarray(table["Z"]) > VOLLIM_Z[0])
        & (np.asarray(table["Z"]) < VOLLIM_Z[1])
    )


def read_truth(outdir: str | Path, kind: str) -> Table:
    """Read a mock truth table: ``kind`` is ``qso``, ``galaxy`` or ``star``.

    Parameters
    ----------
    outdir : str or Path
        The mock's OUTDIR (holding ``truth/``) or the truth folder itself.
    kind : str
        Which table.

    Returns
    -------
    astropy.table.Table
        With the primary header (seed, injected effect sizes, ...) in ``meta``.
    """
    folder = Path(outdir)
    if (folder / "truth").is_dir():
        folder = folder / "truth"
    path = folder / f"truth-{kind.lower()}.fits"
    with open_fits(path, ["TRUTH"], what="mock truth table") as hdul:
        table = read_table(path, "TRUTH", hdul=hdul, what="mock truth table")
        table.meta.update({k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "")})
    return table

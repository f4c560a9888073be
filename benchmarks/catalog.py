"""Catalog benchmark: ingest, cone searches and a cross-match on a synthetic DR1 zpix catalog.

Builds N rows (default 10 million, uniform over the whole sky, poles included) as
zpix files in the DR1 format (the ZCATALOG columns every DR1 reader relies on),
then measures, each against a baseline in the same run:

* ``desilab ingest`` (FITS reading, HEALPix, hpx-sorted binary COPY, primary key and
  secondary indexes, ANALYZE) against a plain binary COPY of the same rows into
  an unindexed table (rows pre-encoded in memory: the fastest load there is);
* ``Catalog.cone`` medians for 1 arcmin, 0.5 deg and 2 deg (end to end: pixel
  ranges, SQL, fetch, exact test, astropy table) against the same SQL with index scans off
  (a parallel sequential scan);
* ``Catalog.xmatch`` of 100k positions at 1 arcsec, end to end (ranges, upload,
  join, nearest per row, table), against a hash join on pixels that reads the
  catalog sequentially (the same candidates without the index).

Usage: python benchmarks/catalog.py [--rows 10000000] [--files 10] [--xmatch 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import psycopg
from astropy_healpix import HEALPix

sys.path.insert(0, str(Path(__file__).resolve().parent))

from desilab.desi import Catalog, DR1Layout, ingest  # noqa: E402
from desilab.desi.datamodel import ZCATALOG, ZCATALOG_REQUIRED, dtype_of, units_of  # noqa: E402
from desilab.desi.fitswrite import FitsTableWriter  # noqa: E402
from desilab.desi.pgcopy import COPY_HEADER, COPY_TRAILER, CopyColumn, encode_rows  # noqa: E402
from desilab.desi.roles import prepare_catalog  # noqa: E402
from desilab.desi.schema import ZPIX  # noqa: E402
from desilab.desi.sky import hpx_index, match_ranges  # noqa: E402
from desilab.desi.skyquery import ConePlan  # noqa: E402
from desilab.desi.sources import make_batch  # noqa: E402
from desilab.hub.database import EmbeddedPostgres  # noqa: E402
from report import machine, update_section  # noqa: E402

COLUMNS = [c for c in ZCATALOG if c[0] in ZCATALOG_REQUIRED]
TARGETS = {"cone_1arcmin_ms": 2.0, "cone_2deg_ms": 10.0, "xmatch_s": 2.0, "ingest_ratio": 0.7}
SPECTYPES = np.array([b"GALAXY", b"QSO", b"STAR"])


def rows_of(part: int, n: int, seed: int = 1) -> np.ndarray:
    """Synthetic zpix rows of one file: uniform sky, DESI-like TARGETIDs (brick-encoded)."""
    rng = np.random.default_rng([seed, part])
    out = np.zeros(n, dtype=dtype_of(COLUMNS))
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    brick = np.floor((dec + 90) / 0.25).astype(np.int64) * 1440 + np.floor(ra / 0.25).astype(int)
    # Object numbers unique within the file (random ones collide now and then).
    objid = rng.permutation(n).astype(np.int64) & (2**22 - 1)
    out["TARGETID"] = (np.int64(9010 + part) << 42) | (brick << 22) | objid
    out["SURVEY"], out["PROGRAM"] = b"main", b"dark"
    out["HEALPIX"] = HEALPix(64, order="nested").lonlat_to_healpix(ra * u.deg, dec * u.deg)
    out["TARGET_RA"], out["TARGET_DEC"] = ra, dec
    kind = rng.choice(3, n, p=[0.75, 0.15, 0.10])
    out["SPECTYPE"] = SPECTYPES[kind]
    out["Z"] = np.where(kind == 1, rng.uniform(0.5, 4, n), rng.uniform(0, 1.5, n)) * (kind != 2)
    out["ZERR"] = rng.uniform(1e-5, 1e-3, n)
    out["ZWARN"] = np.where(rng.random(n) < 0.05, 4, 0)
    out["DELTACHI2"] = rng.exponential(200, n)
    out["CHI2"] = rng.normal(8000, 300, n)
    out["COEFF"] = rng.normal(0, 1, (n, 10))
    for band in ("G", "R", "Z", "W1", "W2"):
        out[f"FLUX_{band}"] = rng.lognormal(1, 1, n)
        out[f"FLUX_IVAR_{band}"] = rng.lognormal(2, 0.5, n)
    out["EBV"] = rng.uniform(0, 0.1, n)
    out["DESI_TARGET"] = 1 << rng.integers(0, 3, n)
    out["ZCAT_PRIMARY"], out["ZCAT_NSPEC"] = True, 1
    return out


def write_tree(root: Path, n_rows: int, n_files: int) -> list[int]:
    """zpix-main-dark-partNN.fits files in the DR1 layout; returns rows per file."""
    folder = DR1Layout(root).zpix("main", "dark").parent
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_rows // n_files + (i < n_rows % n_files) for i in range(n_files)]
    for part, size in enumerate(sizes):
        w = FitsTableWriter(folder / f"zpix-main-dark-part{part:02d}.fits")
        w.add_table("ZCATALOG", dtype_of(COLUMNS), units_of(COLUMNS))
        for start in range(0, size, 500_000):
            w.append("ZCATALOG", rows_of(part, size)[start : start + 500_000])
        w.close()
    return sizes


def plain_copy(dsn: str, sizes: list[int]) -> dict:
    """Plain binary COPYs of the same rows into an unindexed table, one per file.

    ``seconds``: rows in memory, encoded chunk by chunk while they are sent (what a
    COPY client does); ``server_seconds``: the same bytes encoded beforehand, so only
    the server's work is timed (the strictest baseline).
    """
    cols = [c for c in ZPIX.columns if c.source in dict.fromkeys(ZCATALOG_REQUIRED)]
    out = {"seconds": 0.0, "server_seconds": 0.0}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for part, size in enumerate(sizes):
            rows = rows_of(part, size)
            data = {c.source: rows[c.source] for c in cols}
            extra = {"hpx": hpx_index(rows["TARGET_RA"], rows["TARGET_DEC"]), "file_id": 1}
            batch = make_batch(ZPIX, data, extra, size)
            stmt = f"COPY public.plain_copy ({', '.join(batch.names)}) FROM STDIN (FORMAT BINARY)"
            for key, encoded in (("seconds", None), ("server_seconds", encode_rows(batch.columns))):
                conn.execute("DROP TABLE IF EXISTS public.plain_copy")
                conn.execute("CREATE TABLE public.plain_copy (LIKE dr1.zpix)")
                t0 = time.perf_counter()
                with conn.transaction(), conn.cursor().copy(stmt) as cp:
                    cp.write(COPY_HEADER)
                    if encoded is None:  # encode while streaming, 100k rows at a time
                        for start in range(0, size, 100_000):
                            chunk = [CopyColumn(c.values[start : start + 100_000], c.pgtype)
                                     for c in batch.columns]  # fmt: skip
                            cp.write(encode_rows(chunk))
                    else:
                        cp.write(encoded)
                    cp.write(COPY_TRAILER)
                out[key] += time.perf_counter() - t0
        conn.execute("DROP TABLE public.plain_copy")
    return out


def cones(cat: Catalog, dsn: str, radius_deg: float, n: int, n_seq: int, rng) -> dict:
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    cols = ["targetid", "target_ra", "target_dec", "z"]
    for i in range(5):  # warm up
        cat.cone(ra[i], dec[i], radius_deg, columns=cols)
    times, rows, sqls = [], [], []
    # The baseline's SQL: the same candidates with the ranges ORed (one scan; one per
    # range, as Catalog.cone sends them, would be one sequential scan each).
    plan = ConePlan.of(cat._sky_table("dr1.zpix"), cols)
    for a, d in zip(ra, dec, strict=True):
        t0 = time.perf_counter()
        t = cat.cone(a, d, radius_deg, columns=cols)
        times.append(time.perf_counter() - t0)
        rows.append(len(t))
        sqls.append(plan.sql(a, d, radius_deg, None, 400_000, union=False)[0])
    seq = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SET enable_indexscan = off; SET enable_bitmapscan = off;")
        for text in sqls[:n_seq]:
            t0 = time.perf_counter()
            conn.cursor(binary=True).execute(text).fetchall()
            seq.append(time.perf_counter() - t0)
    return {
        "radius_deg": radius_deg,
        "n": n,
        "median_ms": 1e3 * statistics.median(times),
        "p90_ms": 1e3 * sorted(times)[int(0.9 * n)],
        "mean_rows": float(np.mean(rows)),
        "seqscan_median_ms": 1e3 * statistics.median(seq),
        "speedup": statistics.median(seq) / statistics.median(times),
    }


def xmatch(cat: Catalog, dsn: str, sizes: list[int], n: int, rng) -> dict:
    half = n // 2
    part = rows_of(0, sizes[0])
    pick = rng.choice(len(part), half, replace=False)
    jitter = rng.normal(0, 0.4 / 3600, (2, half))
    ra = np.concatenate(
        [part["TARGET_RA"][pick] + jitter[0] / np.cos(np.radians(part["TARGET_DEC"][pick])),
         rng.uniform(0, 360, n - half)]
    ) % 360  # fmt: skip
    dec = np.clip(
        np.concatenate([part["TARGET_DEC"][pick] + jitter[1],
                        np.degrees(np.arcsin(rng.uniform(-1, 1, n - half)))]), -90, 90
    )  # fmt: skip
    cat.xmatch((ra[:1000], dec[:1000]), 1 * u.arcsec, columns=["targetid", "z"])  # warm up
    times, matched = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        t = cat.xmatch((ra, dec), 1 * u.arcsec, columns=["targetid", "z"])
        times.append(time.perf_counter() - t0)
        matched = len(t)
    # Baseline: the same candidate pixels (parents of the 3x3 blocks), joined by hash on the
    # pixel with the catalog read sequentially.
    t0 = time.perf_counter()
    rows, lo, hi = match_ranges(ra, dec, 1 / 3600, coarsen=4)
    shift = int(np.log2((hi - lo).min()))  # ranges are runs of parent pixels: list them
    per = (hi - lo) >> shift
    pix = np.repeat(lo >> shift, per) + np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
    rows = np.repeat(rows, per)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn, conn.transaction():
        conn.execute(
            "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; "
            "SET LOCAL work_mem = '256MB'; CREATE TEMP TABLE xin (idx int, ra float8, "
            "dec float8, pix bigint) ON COMMIT DROP"
        )
        data = encode_rows(
            [
                CopyColumn(rows.astype(np.int32), "integer"),
                CopyColumn(ra[rows], "double precision"),
                CopyColumn(dec[rows], "double precision"),
                CopyColumn(pix, "bigint"),
            ],
            header=True,
        )
        with conn.cursor().copy("COPY xin FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(data)
            cp.write(COPY_TRAILER)
        conn.execute("ANALYZE xin")
        hav = (
            "power(sin(radians(x.dec - t.target_dec) / 2), 2) + cos(radians(x.dec)) * "
            "cos(radians(t.target_dec)) * power(sin(radians(x.ra - t.target_ra) / 2), 2)"
        )
        seq_rows = conn.execute(
            f"SELECT DISTINCT ON (x.idx) x.idx, t.targetid FROM xin x JOIN dr1.zpix t "
            f"ON (t.hpx >> {shift}) = x.pix WHERE {hav} <= %s ORDER BY x.idx, {hav}",
            (np.sin(np.radians(1 / 3600) / 2) ** 2,),
        ).fetchall()
    seq = time.perf_counter() - t0
    assert len(seq_rows) == matched, (len(seq_rows), matched)
    return {
        "n_input": n,
        "matched": matched,
        "median_s": statistics.median(times),
        "all_s": times,
        "seqscan_s": seq,
        "speedup": seq / statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="catalog rows")
    parser.add_argument("--files", type=int, default=10, help="zpix files they are split into")
    parser.add_argument("--xmatch", type=int, default=100_000, help="positions cross-matched")
    parser.add_argument("--cones", type=int, default=200, help="cones per radius")
    parser.add_argument("--workdir", help="folder for the data and the database (default /tmp)")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="desilab-bench-catalog-", dir=args.workdir or "/tmp"))
    os.chmod(work, 0o755)
    server = EmbeddedPostgres(work / "home")
    results: dict = {"rows": args.rows, "files": args.files, "machine": machine()}
    results["load_average_start"] = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        sizes = write_tree(work / "dr1", args.rows, args.files)
        results["write_fits_s"] = time.perf_counter() - t0
        dsn = server.start()
        prepare_catalog(dsn)
        print(f"{args.rows} rows written in {results['write_fits_s']:.0f} s", file=sys.stderr)
        report = ingest(work / "dr1", dsn, kinds=("zpix",), progress=True)
        assert not report.skipped, report.skipped
        results["ingest"] = {
            "seconds": report.seconds,
            "rows_per_s": args.rows / report.seconds,
            "timings": report.timings,
        }
        copy = plain_copy(dsn, sizes)
        results["plain_copy"] = {
            "seconds": copy["seconds"],
            "rows_per_s": args.rows / copy["seconds"],
            "server_only_seconds": copy["server_seconds"],
            "server_only_rows_per_s": args.rows / copy["server_seconds"],
        }
        results["ingest_ratio"] = copy["seconds"] / report.seconds
        results["ingest_ratio_server_only"] = copy["server_seconds"] / report.seconds
        print(json.dumps(results, indent=1), file=sys.stderr)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()  # the steady state autovacuum would reach anyway
            conn.execute("VACUUM (ANALYZE) dr1.zpix")
            results["vacuum_s"] = time.perf_counter() - t0
        rng = np.random.default_rng(42)
        with Catalog(dsn) as cat:
            results["cone"] = {
                name: cones(cat, dsn, radius, n, n_seq, rng)
                for name, radius, n, n_seq in (
                    ("1arcmin", 1 / 60, args.cones, 3),
                    ("0.5deg", 0.5, args.cones, 3),
                    ("2deg", 2.0, args.cones // 2, 3),
                )
            }
            results["xmatch"] = xmatch(cat, dsn, sizes, args.xmatch, rng)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    results["targets"] = TARGETS
    print(json.dumps(results, indent=1))
    if not args.no_doc:
        update_section("catalog", markdown(results), results)


def markdown(r: dict) -> str:
    c, x, i = r["cone"], r["xmatch"], r["ingest"]

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    lines = [
        "## Catalog (`benchmarks/catalog.py`)",
        "",
        f"{r['rows']:,} synthetic zpix rows (uniform over the sky, poles included) in "
        f"{r['files']} DR1-format zpix files; embedded PostgreSQL 16. The machine was shared "
        f"with other work: load average {r['load_average_start']:.1f} at the start, "
        f"{r['load_average_end']:.1f} at the end (2 cores).",
        "",
        "| measure | desilab | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
        f"| ingest (FITS -> indexed, analysed `dr1.zpix`) | {i['rows_per_s']:,.0f} rows/s | "
        f"{r['plain_copy']['rows_per_s']:,.0f} rows/s plain COPY, unindexed | "
        f"{r['ingest_ratio']:.2f} | >= 0.7 x COPY | {ok(r['ingest_ratio'] >= 0.7)} |",
        f"| same, against the server's time alone (COPY of pre-encoded rows) | "
        f"{i['rows_per_s']:,.0f} rows/s | {r['plain_copy']['server_only_rows_per_s']:,.0f} "
        f"rows/s | {r['ingest_ratio_server_only']:.2f} | - | - |",
    ]
    for name, target in (("1arcmin", 2.0), ("0.5deg", None), ("2deg", 10.0)):
        s = c[name]
        tgt = f"<= {target:g} ms" if target else "-"
        met = ok(s["median_ms"] <= target) if target else "-"
        lines.append(
            f"| cone {name}, median of {s['n']} ({s['mean_rows']:.1f} rows) | "
            f"{s['median_ms']:.2f} ms | {s['seqscan_median_ms']:.0f} ms seq scan | "
            f"{s['speedup']:.0f}x faster | {tgt} | {met} |"
        )
    lines.append(
        f'| cross-match {x["n_input"]:,} x {r["rows"]:,} at 1", end to end '
        f"({x['matched']:,} matched) | {x['median_s']:.2f} s | {x['seqscan_s']:.2f} s "
        f"hash join, seq scan | {x['speedup']:.1f}x faster | <= 2 s | {ok(x['median_s'] <= 2)} |"
    )
    t = i["timings"]
    lines += [
        "",
        f"Ingest {i['seconds']:.0f} s = load {t.get('load', 0):.0f} s (read, HEALPix, sorted "
        f"COPY) + indexes {t.get('indexes', 0):.0f} s (primary key, `hpx` covering "
        f"ra/dec/targetid/z, z, spectype) + ANALYZE {t.get('analyze', 0):.0f} s, two "
        "files and two indexes at a time. The plain COPY encodes the same in-memory rows "
        "while it sends them, one connection. Queries were timed after a VACUUM of the table "
        f"({r.get('vacuum_s', 0):.0f} s, what autovacuum does after a load; it sets the "
        "visibility map index-only scans need). Cone times "
        "are `Catalog.cone` end to end (pixel ranges, SQL: one index-only scan per range, "
        "fetch of targetid/ra/dec/z, exact distance test and sort in NumPy, astropy table); "
        "the baseline runs the same SQL, its ranges ORed in one scan, with index and bitmap "
        "scans disabled. The "
        "cross-match baseline joins the same candidate pixels by hash with the catalog read "
        "sequentially.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

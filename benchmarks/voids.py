"""VoidFinder runtime and void counts against the number of galaxies, and an SDSS DR7-like run.

Catalogs are clustered (lognormal field, Planck18 power spectrum) and volume-limited, in a
7 500 deg^2 cap at the density of SDSS DR7's Mr < -20.09 sample (6 x 10^-3 (h/Mpc)^3);
the largest, out to 300 Mpc/h, holds 120 000 galaxies in 2.0 x 10^7 (Mpc/h)^3. Smaller
ones cut it at smaller distances, so the density stays the same.

Baseline, in the same run: the mock DR1's simplified VoidFinder
(``desilab.desi.mock_voids``: holes bounded by two galaxies, a Python loop per seed) on
the same catalogs. Reference, not run here (VAST is not installed): VAST's VoidFinder
takes about 14 s on such a catalog on this kind of machine (quoted in issue 7).

Usage: python benchmarks/voids.py [--repeat 3] [--no-baseline] [--no-doc] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from desilab.desi.mock_voids import find_voids as simplified_voids  # noqa: E402
from desilab.projects.voids import cap_mask, find_voids, sdss_dr7_like  # noqa: E402
from report import machine, update_section  # noqa: E402

VAST_REFERENCE_S = 14.0
TARGET_S = 10.0
SIZES = (15_000, 30_000, 60_000, 120_000)
RMAX = 300.0


def _timed(func, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def subset(gal: np.ndarray, n: int):
    """The galaxies within the distance that holds about ``n`` of them, and that survey."""
    rmax = RMAX * (n / SIZES[-1]) ** (1 / 3)
    keep = np.linalg.norm(gal, axis=1) <= rmax
    return gal[keep], cap_mask(185.0, 32.0, 7500.0, 0.0, rmax)


def run(repeat: int, baseline: bool, workers2: bool) -> dict:
    rng = np.random.default_rng(2002)
    gal, mask = sdss_dr7_like(rng)
    results: dict = {
        "catalog": {
            "galaxies": len(gal),
            "volume_mpch3": mask.volume,
            "density_h3_mpc3": len(gal) / mask.volume,
            "area_deg2": float(mask.area.to_value("deg2")),
            "rmax_mpch": RMAX,
        },
        "scaling": [],
        "vast_reference_s": VAST_REFERENCE_S,
        "target_s": TARGET_S,
    }
    for n in SIZES:
        sub, m = subset(gal, n)
        times = repeat if n == SIZES[-1] else 1
        runs = [_timed(find_voids, sub, m, workers=1, use_ray=False) for _ in range(times)]
        catalog = runs[0][0]
        row = {
            "n_galaxies": len(sub),
            "volume_mpch3": m.volume,
            "wall_s": statistics.median(r[1] for r in runs),
            "cpu_s": statistics.median(r[2] for r in runs),
            "all_wall_s": [r[1] for r in runs],
            "voids": len(catalog),
            "edge_voids": int(np.sum(catalog.maximals["EDGE"] > 0)),
            "holes_in_voids": len(catalog.holes),
            "seeds": catalog.info["n_seeds"],
            "stages_s": catalog.info["times"],
            "stages_cpu_s": catalog.info["cpu_times"],
            "median_radius": float(np.median(catalog.maximals["RADIUS"])),
        }
        if baseline:
            (maximals, _), bwall, bcpu = _timed(
                simplified_voids, sub, m.contains, np.random.default_rng(0)
            )
            row.update(baseline_wall_s=bwall, baseline_cpu_s=bcpu, baseline_voids=len(maximals))
        results["scaling"].append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("stages")}), flush=True)
    main = results["scaling"][-1]
    if workers2:
        _, wall2, _ = _timed(find_voids, gal, mask, workers=2, use_ray=False)
        main["two_process_wall_s"] = wall2
    main["vs_vast_reference"] = main["wall_s"] / VAST_REFERENCE_S
    return results


def markdown(results: dict) -> str:
    cat = results["catalog"]
    rows = results["scaling"]
    main = rows[-1]
    ok_cpu = "yes" if main["cpu_s"] <= TARGET_S else "no"
    ok_wall = "yes" if main["wall_s"] <= TARGET_S else "no"
    lines = [
        "## Void finding (`benchmarks/voids.py`)",
        "",
        f"SDSS DR7-like volume-limited catalog: {cat['galaxies']:,} clustered galaxies in "
        f"{cat['volume_mpch3']:.2e} (Mpc/h)^3 ({cat['area_deg2']:.0f} deg^2 to "
        f"{cat['rmax_mpch']:.0f} Mpc/h), one process (`workers=1`).",
        "",
        "| measure | desilab VoidFinder | reference | ratio | target <= 10 s |",
        "|---|---|---|---|---|",
        f"| CPU time (one core), median of {len(main['all_wall_s'])} | {main['cpu_s']:.2f} s "
        f"| VAST ~{VAST_REFERENCE_S:.0f} s (quoted, not run here) "
        f"| {main['cpu_s'] / VAST_REFERENCE_S:.2f} | {ok_cpu} |",
        f"| wall time on this shared machine | {main['wall_s']:.2f} s | VAST ~"
        f"{VAST_REFERENCE_S:.0f} s (quoted) | {main['vs_vast_reference']:.2f} | {ok_wall} |",
    ]
    if "baseline_wall_s" in main:
        lines.append(
            f"| CPU time, same catalog, this run | {main['cpu_s']:.2f} s | simplified mock "
            f"VoidFinder {main['baseline_cpu_s']:.2f} s | "
            f"{main['cpu_s'] / main['baseline_cpu_s']:.2f} | |"
        )
    if "two_process_wall_s" in main:
        lines.append(
            f"| wall time, 2 processes (`run_units`) | {main['two_process_wall_s']:.2f} s | "
            f"1 process {main['wall_s']:.2f} s | "
            f"{main['two_process_wall_s'] / main['wall_s']:.2f} | |"
        )
    lines += [
        "",
        "Scaling at fixed density (the survey cut at smaller distances):",
        "",
        "| galaxies | volume (Mpc/h)^3 | wall | CPU | voids (edge) | holes in voids "
        "| simplified baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = (
            f"CPU {r['baseline_cpu_s']:.2f} s, {r['baseline_voids']} voids"
            if "baseline_wall_s" in r
            else "-"
        )
        lines.append(
            f"| {r['n_galaxies']:,} | {r['volume_mpch3']:.2e} | {r['wall_s']:.2f} s "
            f"| {r['cpu_s']:.2f} s | {r['voids']} ({r['edge_voids']}) | {r['holes_in_voids']:,} "
            f"| {base} |"
        )
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in main["stages_cpu_s"].items() if k != "total")
    load = ", ".join(f"{x:.1f}" for x in results["load_average"])
    lines += [
        "",
        f"CPU time by stage of the largest run: {stages}. Load average while measuring "
        f"(1, 5, 15 min): {load} on {os.cpu_count()} cores; wall times include waiting for the "
        "CPU on a shared machine, CPU times do not. The simplified baseline stops growing holes at "
        "two galaxies and loops over seeds in Python; VAST's time is the figure quoted in "
        "issue 7 for its Cython VoidFinder on an SDSS DR7 catalog, not a measurement here.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of the largest catalog")
    parser.add_argument("--no-baseline", action="store_true", help="skip the simplified finder")
    parser.add_argument("--no-parallel", action="store_true", help="skip the 2-process run")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = run(args.repeat, not args.no_baseline, not args.no_parallel)
    results["machine"] = machine()
    results["load_average"] = list(os.getloadavg())
    text = markdown(results)
    print(text)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_doc:
        update_section("voids", text, results)


if __name__ == "__main__":
    main()

"""Anomalous-quasar pipeline benchmark: preparation, training, Ray scoring, projections.

On a mock DR1 (generated, or reused with --mock), each measurement has a baseline
in the same run:

* preparation (arms -> rest frame -> log grid -> normalised), spectra per CPU
  second, vectorised against the same with the rest-frame binning done in a loop
  over spectra (one ``np.bincount`` each, the obvious way to write it; its arm
  combination is the vectorised one, so the ratio measures the binning and the fused
  arm sums only: with float64 cumulative sums the binning was no faster than the
  loop, 1.0x); and end to end with the coadd reading (fitsio, FLUX/IVAR rows only)
  and the shard writing;
* VAE training on CPU, spectra per second (per epoch, one and all threads),
  against fitting the PCA baseline on the same spectra;
* scoring on Ray with 1 and with 2 workers (scaling efficiency), and in local
  processes;
* projections for 1.6 million DR1 QSOs: on one GPU (training and scoring
  projected from the model's FLOPs, the store's bytes and a per-step overhead, with
  the assumptions in GPU_ASSUMPTIONS, unless --gpu-measured is given) and on 140
  cores (from the measured per-core rates).

It then trains a full model on the same mock and evaluates it against the truth (AUC
with its standard error, precision at k, VAE vs PCA vs Isolation Forest), in its own
section (--quality: only that; --no-quality: only the rates).

The default mock (--n-qso 22000, half of the unlabelled QSOs and every labelled one
observed) gives ~12,000 QSO spectra and ~130 of each injected anomaly class: with the
~12 per class of a 3,000-QSO mock, one object moved a class AUC by ~0.04. Only QSOs get
spectra (a few hundred galaxies and stars are drawn for the catalogue, none observed).

Usage: python benchmarks/anomalies.py [--mock DIR] [--n-qso 22000] [--epochs 3]
       python benchmarks/anomalies.py --quality --mock DIR --quality-epochs 40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Per-core measurements: one BLAS thread, as each Ray/process unit gets one core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from desilab.desi import CoaddFile, DR1Layout, generate_mock, read_truth  # noqa: E402
from desilab.projects.anomalies import (  # noqa: E402
    FeatureStore,
    RestGrid,
    TrainConfig,
    build_feature_store,
    evaluate,
    fit_baselines,
    prepare_spectra,
    score_store,
    select_qsos,
    train,
)
from desilab.projects.anomalies.model import VAE, VAEConfig, set_threads  # noqa: E402
from desilab.projects.anomalies.prepare import combine_arms  # noqa: E402
from report import machine, update_section  # noqa: E402

DR1_QSOS = 1_600_000
#: Assumptions of the GPU projection (no GPU was available to measure): a sustained FP32
#: rate well below a data-centre GPU's peak (small layers), the feature store read from
#: local NVMe, and a fixed cost per optimiser step (kernel launches, Adam, copies).
GPU_ASSUMPTIONS = {"tflops_sustained": 15.0, "store_read_gb_s": 2.0, "step_overhead_ms": 1.0}


def cpu_rate(func, n: int, repeat: int = 3) -> float:
    """Best of ``repeat``: items per CPU second of this process."""
    best = 0.0
    for _ in range(repeat):
        c0 = time.process_time()
        func()
        best = max(best, n / max(time.process_time() - c0, 1e-9))
    return best


def naive_prepare(arms, z, grid: RestGrid) -> np.ndarray:
    """The per-spectrum loop the vectorised code replaces (same result)."""
    obs = combine_arms(arms)
    out = np.zeros((len(z), grid.n_bins), np.float32)
    for i in range(len(z)):
        k = grid.bin_of(obs.wave / (1 + z[i]))
        ok = (k >= 0) & (obs.ivar[i] > 0)
        fw = np.bincount(k[ok], obs.flux[i, ok] * obs.ivar[i, ok], minlength=grid.n_bins)
        w = np.bincount(k[ok], obs.ivar[i, ok], minlength=grid.n_bins)
        f = np.divide(fw, w, out=np.zeros_like(fw), where=w > 0)
        good = w > 0
        out[i] = f / max(f[good].mean(), 1e-30) if good.any() else 0
    return out


def bench_prepare(layout: DR1Layout, selection, workdir: Path) -> dict:
    # One in-memory batch of real mock spectra for the transform-only rates.
    first = selection[selection["HEALPIX"] == selection["HEALPIX"][0]]
    with CoaddFile(layout.coadd(first["SURVEY"][0], first["PROGRAM"][0], first["HEALPIX"][0])) as c:
        tid = np.intersect1d(first["TARGETID"], c.targetids)
        spec = c.read(tid, resolution=False)
    z = np.asarray(first["Z"])[np.searchsorted(np.asarray(first["TARGETID"]), tid)]
    reps = max(1, 1024 // len(tid))
    arms = {
        k: type(a)(a.wave, np.tile(a.flux, (reps, 1)), np.tile(a.ivar, (reps, 1)),
                   np.tile(a.mask, (reps, 1)))
        for k, a in spec.arms.items()
    }  # fmt: skip
    zz = np.tile(z, reps)
    grid = RestGrid()
    set_threads(1)
    vec = cpu_rate(lambda: prepare_spectra(arms, zz, grid), len(zz))
    small = {k: type(a)(a.wave, a.flux[:200], a.ivar[:200], a.mask[:200]) for k, a in arms.items()}
    naive = cpu_rate(lambda: naive_prepare(small, zz[:200], grid), min(200, len(zz)), repeat=1)
    # End to end: selection -> coadds -> shards, one process.
    store_dir = workdir / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    t0 = time.perf_counter()
    store = build_feature_store(
        selection, layout, store_dir, shard_size=512, workers=1, use_ray=False, progress=False
    )
    wall = time.perf_counter() - t0
    n = len(store)
    return {
        "transform_spectra_per_cpu_s": round(vec),
        "naive_loop_spectra_per_cpu_s": round(naive),
        "speedup_vs_loop": round(vec / naive, 1),
        "end_to_end_spectra": n,
        "end_to_end_spectra_per_cpu_s": round(n / store.manifest["cpu_seconds"]),
        "end_to_end_spectra_per_wall_s": round(n / wall),
        "coadd_files": int(len(np.unique(selection["HEALPIX"]))),
        "store": str(store_dir),
    }


def flops_per_spectrum(config: VAEConfig) -> int:
    """Multiply-adds x 2 of one forward pass (the linear layers dominate)."""
    model = VAE(config)
    return 2 * sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def bench_train(store: FeatureStore, workdir: Path, epochs: int) -> dict:
    out = {}
    cores = len(os.sched_getaffinity(0))
    for threads in sorted({1, cores}):
        folder = workdir / f"vae-t{threads}"
        shutil.rmtree(folder, ignore_errors=True)
        config = TrainConfig(epochs=epochs, threads=threads, device="cpu", gmm_components=4)
        train(store, folder, config=config, progress=False)
        hist = json.loads((folder / "history.json").read_text())
        # The first epoch pays for page faults and allocator warm-up.
        rates = [h["spectra_per_s"] for h in hist[1:]] or [hist[0]["spectra_per_s"]]
        out[f"cpu_{threads}_threads_spectra_per_s"] = round(float(np.median(rates)))
    flux = np.concatenate([np.asarray(store.load_shard(i)[0]) for i in range(len(store.shards))])
    t0 = time.perf_counter()
    fit_baselines(store, workdir / "pca", n_components=10)
    pca_s = time.perf_counter() - t0
    out["pca_fit_spectra_per_s"] = round(len(flux) / pca_s)
    config = VAEConfig(n_bins=store.grid.n_bins)
    out["flops_per_spectrum_forward"] = flops_per_spectrum(config)
    out["n_bins"] = store.grid.n_bins
    out["model"] = str(workdir / f"vae-t{cores}")
    return out


def start_ray(ray, num_cpus: int, tries: int = 3) -> None:
    """A local Ray; retried, since its raylet must register within a fixed 30 s, which a
    loaded shared machine sometimes misses."""
    for attempt in range(tries):
        try:
            ray.init(
                num_cpus=num_cpus,
                object_store_memory=100 * 2**20,
                include_dashboard=False,
                log_to_driver=False,
            )
            return
        except Exception as exc:
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == tries - 1:
                raise


def bench_score(store: FeatureStore, model: str) -> dict:
    import ray

    out = {}
    n = len(store)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    for workers in (1, 2):
        start_ray(ray, workers)
        try:
            score_store(store, model, use_ray=True, progress=False)  # workers start, imports
            t0 = time.perf_counter()
            score_store(store, model, use_ray=True, progress=False)
            out[f"ray_{workers}_workers_spectra_per_s"] = round(n / (time.perf_counter() - t0))
        finally:
            ray.shutdown()
    t0 = time.perf_counter()
    score_store(store, model, workers=2, use_ray=False, progress=False)
    out["local_2_processes_spectra_per_s"] = round(n / (time.perf_counter() - t0))
    out["ray_scaling_efficiency_2_workers"] = round(
        out["ray_2_workers_spectra_per_s"] / (2 * out["ray_1_workers_spectra_per_s"]), 2
    )
    return out


def gpu_rate(flops_fwd: float, n_bins: int, batch: int, passes: float) -> float:
    """Projected spectra/s of one GPU: compute, feature-store reading and per-step overhead.

    ``passes`` = 3 for training (forward + backward), 1 for scoring. Each term is an
    assumption stated in :data:`GPU_ASSUMPTIONS`, not a measurement.
    """
    a = GPU_ASSUMPTIONS
    compute = passes * flops_fwd / (a["tflops_sustained"] * 1e12)
    io = 2 * n_bins * 4 / (a["store_read_gb_s"] * 1e9)  # flux + weight, float32
    overhead = a["step_overhead_ms"] * 1e-3 * passes / batch
    return 1.0 / (compute + io + overhead)


def projections(prep: dict, tr: dict, sc: dict, gpu_measured: float | None, epochs: int) -> dict:
    """Hours for 1.6M QSOs: prepare once, train ``epochs`` epochs, score once."""
    n = DR1_QSOS
    per_core_prep = prep["end_to_end_spectra_per_cpu_s"]
    per_core_score = sc["ray_1_workers_spectra_per_s"]
    eff = max(min(sc["ray_scaling_efficiency_2_workers"], 1.0), 0.1)
    flops, n_bins = tr["flops_per_spectrum_forward"], tr.get("n_bins", 1500)
    gpu_train = gpu_measured or gpu_rate(flops, n_bins, 128, 3)
    gpu_score = gpu_rate(flops, n_bins, 1024, 1)
    cpu1 = tr["cpu_1_threads_spectra_per_s"]
    hours = 3600.0
    gpu_node_cores = 16
    source = (
        "measured"
        if gpu_measured
        else "projected, not measured: "
        + ", ".join(f"{k} = {v:g}" for k, v in GPU_ASSUMPTIONS.items())
    )
    return {
        "epochs": epochs,
        "gpu_rates_source": source,
        "gpu_train_spectra_per_s": round(gpu_train),
        "gpu_score_spectra_per_s": round(gpu_score),
        "one_gpu": {
            "prepare_h_on_16_host_cores": n / (per_core_prep * gpu_node_cores * eff) / hours,
            "train_h": n * epochs / gpu_train / hours,
            "score_h": n / gpu_score / hours,
        },
        "cores_140": {
            "prepare_h": n / (per_core_prep * 140 * eff) / hours,
            "train_h_ideal_data_parallel": n * epochs / (cpu1 * 140 * eff) / hours,
            "score_h": n / (per_core_score * 140 * eff) / hours,
        },
    }


def quality(
    mock: Path,
    store: FeatureStore,
    workdir: Path,
    epochs: int,
    latent: int,
    threads: int,
    hidden: tuple[int, ...] = (256, 128),
) -> dict:
    model_dir, base_dir = workdir / "quality-vae", workdir / "quality-pca"
    config = TrainConfig(epochs=epochs, threads=threads)
    t0 = time.perf_counter()
    train(store, model_dir, vae={"latent": latent, "hidden": hidden}, config=config, progress=True)
    # Summed over epochs from the history, so a run resumed from a checkpoint counts all.
    history = json.loads((model_dir / "history.json").read_text())
    train_s = sum(h["seconds"] for h in history)
    fit_baselines(store, base_dir, n_components=10)
    scores = score_store(store, model_dir, baseline=base_dir, progress=False)
    wall = time.perf_counter() - t0
    result = evaluate(scores, read_truth(mock, "qso"))
    result.plot(workdir / "roc.html")
    rows = [dict(zip(result.table.colnames, r, strict=True)) for r in result.table.iterrows()]
    mock_info = json.loads((mock / "truth" / "mock.json").read_text())
    return {
        "spectra": len(store),
        "seed": mock_info.get("seed"),
        "n_qso": mock_info.get("n_qso"),
        "epochs": epochs,
        "latent": latent,
        "hidden": list(hidden),
        "train_seconds": round(train_s),
        "train_fit_score_wall_seconds": round(wall),
        "markdown": result.markdown(errors=True),
        "rows": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows],
        "vae_auc_all": result.auc("all", "VAE"),
        "vae_auc_all_err": float(
            result.table["AUC_ERR"][
                (result.table["TARGET"] == "all") & (result.table["DETECTOR"] == "VAE")
            ][0]
        ),
        "pca_auc_all": result.auc("all", "PCA"),
    }


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(r: dict) -> str:
    p, t, s, j = r["prepare"], r["train"], r["score"], r["projection"]
    g, c = j["one_gpu"], j["cores_140"]
    all_threads = max(k for k in t if k.startswith("cpu_"))
    steps = _table(
        ["step", "desilab", "baseline in the same run", "ratio"],
        [
            [
                "preparation, transform only",
                f"{p['transform_spectra_per_cpu_s']} spectra/CPU-s",
                f"per-spectrum loop {p['naive_loop_spectra_per_cpu_s']}",
                f"{p['speedup_vs_loop']}x",
            ],
            [
                "preparation, end to end (coadd I/O, shards)",
                f"{p['end_to_end_spectra_per_cpu_s']} spectra/CPU-s, "
                f"{p['end_to_end_spectra_per_wall_s']}/s wall",
                "",
                "",
            ],
            [
                "VAE training, CPU, 1 thread",
                f"{t['cpu_1_threads_spectra_per_s']} spectra/s",
                f"PCA baseline fit {t['pca_fit_spectra_per_s']} spectra/s",
                "",
            ],
            [
                f"VAE training, CPU, {all_threads.split('_')[1]} threads",
                f"{t[all_threads]} spectra/s",
                "",
                "",
            ],
            ["scoring, Ray 1 worker", f"{s['ray_1_workers_spectra_per_s']} spectra/s", "", ""],
            [
                "scoring, Ray 2 workers",
                f"{s['ray_2_workers_spectra_per_s']} spectra/s",
                f"local 2 processes {s['local_2_processes_spectra_per_s']}",
                f"efficiency {s['ray_scaling_efficiency_2_workers']}",
            ],
        ],
    )
    proj = _table(
        ["", "prepare", "train", "score"],
        [
            [
                "one GPU (+16 host cores)",
                f"{g['prepare_h_on_16_host_cores']:.2f} h",
                f"{g['train_h']:.2f} h",
                f"{g['score_h']:.3f} h",
            ],
            [
                "140 cores",
                f"{c['prepare_h']:.2f} h",
                f"{c['train_h_ideal_data_parallel']:.2f} h (ideal data-parallel)",
                f"{c['score_h']:.3f} h",
            ],
        ],
    )
    return f"""## Anomalous quasars (project 1)

Mock DR1 with {r["mock"]["n_qso"]} selected QSOs; {p["end_to_end_spectra"]} spectra pass
the cuts and have a coadd. Rates per CPU second are process CPU time (the machine is
shared with other jobs, so wall-clock rates are lower and noisier).

{steps}

Projected time for {DR1_QSOS:,} DR1 QSOs, {j["epochs"]} epochs. GPU rates
({j["gpu_train_spectra_per_s"]} spectra/s training, {j["gpu_score_spectra_per_s"]} scoring):
{j["gpu_rates_source"]}. CPU rates: measured per core, scaled by the measured
2-worker Ray efficiency; training on 140 cores assumes ideal data parallelism,
which the trainer does not implement (it uses one process).

{proj}
"""


#: Why the VAE is below the 0.95 target: the investigation of 2026-11-29, on this mock.
QUALITY_DIAGNOSIS = """\
**Diagnosis.** (1) Fixed earlier: the reconstruction term is standardised within S/N bins
of the training spectra (a VAE's systematic residuals grow with S/N, so with one global
scale bright ordinary quasars filled the top of the ranking), and the combined score is
the larger of the two standardised terms: 0.79 -> 0.84. (2) Fixed now: the latent
density ignored redshift. The rest-frame window moves with z, so the latents of ordinary
quasars lie along a z-dependent manifold and a global Gaussian mixture spent its variance
on it. WEAK_LINE quasars are reconstructed *better* than ordinary ones (reconstruction
AUC < 0.5: no strong lines to miss), and their latents do carry the signal (a linear
discriminant on the latents, a diagnostic that uses the labels, reaches 0.98), but they
are unusual only against quasars at their own redshift. A density conditioned on z
(Gaussians of the latents of the 300 training spectra nearest in ln(1+z), trimmed of
their 5 % most outlying, score = ln Mahalanobis^2), with the same trained VAE each time:
the 12,000-QSO mock of seed 2024 (6,584 spectra), 25 epochs 0.842 -> 0.874,
40 epochs 0.882 -> 0.905 (WEAK_LINE
0.68 -> 0.82, EXTREME_RED 0.99 -> 1.00, STAR_QSO 0.72 -> 0.74, DOUBLE_Z 0.92 -> 0.92,
ARM_JUMP 0.98 -> 0.97); the same size with seed 2025 (not used to choose anything), 25
epochs 0.845 -> 0.868, 40 epochs 0.897 -> 0.911. (3) Training longer: 25 -> 40 epochs
(the trainer's default) adds ~0.03 on both mocks; 80 epochs (resumed from 40) gives
0.903 against 0.905, no further gain. A fresh 40-epoch training on a store built by
the new reader (features equal to the old ones within 4e-6) gave 0.903: trainings
differ by ~0.01. (4) Tried on the seed-2024 mock's 25-epoch model, no gain:
kNN latent densities, with or
without z (worse than the mixture: 0.63); the worst window instead of the mean over
windows, windows of 10-160 bins (0.70-0.83); a rank combination (min of the empirical
tail probabilities; 0.875, same as the max); calibrating the reconstruction in
(S/N, z) cells; a z = 0 stellar-absorption check in the residuals (Ca H&K, Mg b, Na D,
Ca triplet: 0.78 alone on STAR_QSO, but it lowers the AUC over all classes when
combined: 0.85). (5) What remains: STAR_QSO, a star of 3500-7500 K adds a smooth
continuum that the VAE absorbs as a redder quasar, and its narrow z = 0 lines are
smeared by the rest-frame rebinning (~0.75-0.82); WEAK_LINE (~0.78-0.82); DOUBLE_Z
(~0.88-0.92), faint second-redshift lines. (6) Capacity, chosen on the seed-2024 mock
(12,000 QSOs drawn, 6,584 spectra, 368 anomalies; standard error of the AUC over all
anomalies ~0.008), one training each, AUC over all anomalies: latent 8 0.898, 12 0.903 and
0.905 (two trainings), 16 0.895; hidden 128x64 0.888, 256x128 0.903, 512x256 0.867
(its reconstruction and density terms both drop); 60 epochs 0.904 (STAR_QSO
0.74 -> 0.81 but WEAK_LINE 0.82 -> 0.71, standard errors ~0.02). Nothing beats latent 12, 256x128,
40 epochs beyond the noise, so the defaults stay, and the table above uses them on a
larger mock of another seed (2025), which chose nothing. Latent sizes within the issue's
8-16 make no measurable difference here: the remaining misses are classes whose
spectra the VAE reconstructs as ordinary (WEAK_LINE, STAR_QSO), not a lack of capacity.
The 0.95 target is not met."""


def publish_quality(res: dict) -> None:
    """Write the detection-quality section of docs/benchmarks.md."""
    vae, pca = res["vae_auc_all"], res["pca_auc_all"]
    verdict = (
        f"VAE AUC over all injected anomalies {vae:.3f} ± {res.get('vae_auc_all_err', 0):.3f}: "
        "target 0.95 "
        f"{'met' if vae >= 0.95 else 'NOT met'}; {vae - pca:+.3f} against PCA: target +0.03 "
        f"{'met' if vae - pca >= 0.03 else 'NOT met'}."
    )
    hidden = "x".join(str(h) for h in res.get("hidden", (256, 128)))
    t = res.get("benchmark_timings_s", {})
    timings = (
        " Whole benchmark (2 shared cores): "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v} s" for k, v in t.items())
        + f", {sum(t.values())} s in all; load average (1, 5, 15 min) at the end "
        + ", ".join(str(v) for v in res.get("load_average", []))
        + "."
        if t
        else ""
    )
    text = f"""## Anomalous quasars: detection quality on a mock

{res["spectra"]} mock QSO spectra (mock seed {res.get("seed")}, {res.get("n_qso")} QSOs
drawn), VAE latent {res["latent"]}, hidden {hidden}, {res["epochs"]} epochs
({res["train_seconds"]} s on CPU; training, baselines and scoring
{res.get("train_fit_score_wall_seconds")} s wall). AUC ± its standard error (DeLong)
/ precision at k (k = number of positives, n) per target; BALs are part of the normal
population, and negatives for the anomaly rows.
"VAE" is the combined score; "reconstruction" is the coherent residual (windowed chi^2),
"chi2/bin" the plain reduced chi^2; "PCA" uses the same coherent residual.

{verdict}{timings}

{res["markdown"]}

{QUALITY_DIAGNOSIS}
"""
    update_section("anomalies-quality", text, {k: v for k, v in res.items() if k != "markdown"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mock", type=Path, help="mock OUTDIR to reuse (generated if absent)")
    parser.add_argument("--n-qso", type=int, default=22000, help="QSOs of a generated mock")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs measured")
    parser.add_argument("--project-epochs", type=int, default=40, help="epochs projected")
    parser.add_argument("--gpu-measured", type=float, help="measured GPU spectra/s (training)")
    parser.add_argument("--quality", action="store_true", help="only the quality section")
    parser.add_argument("--no-quality", action="store_true", help="only the rates")
    parser.add_argument("--quality-epochs", type=int, default=40, help="epochs of --quality")
    parser.add_argument("--latent", type=int, default=12)
    parser.add_argument(
        "--hidden", type=lambda v: tuple(int(h) for h in v.split(",")), default=(256, 128),
        help="encoder hidden sizes, comma-separated (quality model)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=2025,
        help="seed of a generated mock (2025: no setting was chosen on it; they were on 2024)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (--quality)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--from-json", type=Path, help="recompute the projections of a saved results JSON"
    )
    parser.add_argument("--quality-json", type=Path, help="republish a saved quality JSON")
    args = parser.parse_args()
    if args.quality_json:
        publish_quality(json.loads(args.quality_json.read_text()))
        return
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["projection"] = projections(
            results["prepare"], results["train"], results["score"], args.gpu_measured,
            args.project_epochs,
        )  # fmt: skip
        print(json.dumps(results, indent=1, default=float))
        update_section("anomalies", markdown(results), results)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="desilab-anomalies-bench-"))
    mock = args.mock or workdir / "mock"
    timings = {}
    t0 = time.perf_counter()
    if not (mock / "dr1").is_dir():
        # Processes: os.cpu_count() can see the host's cores in a container.
        generate_mock(mock, n_qso=args.n_qso, n_galaxy=300, n_star=50, seed=args.seed,
                      progress=True, qso_spectra_fraction=0.5, galaxy_spectra_fraction=0.0,
                      star_spectra_fraction=0.0,
                      workers=min(8, len(os.sched_getaffinity(0))))  # fmt: skip
        timings["generate_mock_s"] = round(time.perf_counter() - t0)
    layout = DR1Layout(mock / "dr1")
    selection = select_qsos(layout)
    if not args.quality:
        results = rates(args, mock, layout, selection, workdir)
        timings["rates_s"] = round(time.perf_counter() - t0 - sum(timings.values()))
        print(json.dumps(results, indent=1, default=float))
    if args.no_quality:
        return
    store_dir = workdir / "store"
    store = (
        FeatureStore(store_dir)
        if (store_dir / "store.json").exists()
        else build_feature_store(selection, layout, store_dir, shard_size=1024)
    )
    res = quality(mock, store, workdir, args.quality_epochs, args.latent, args.threads, args.hidden)
    timings["quality_s"] = round(time.perf_counter() - t0 - sum(timings.values()))
    res["benchmark_timings_s"] = timings
    res["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(res, indent=1, default=float))
    (workdir / "quality.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    publish_quality(res)


def rates(args, mock: Path, layout: DR1Layout, selection, workdir: Path) -> dict:
    """The rates section: preparation, training, scoring, projections."""
    results = {"machine": machine(), "mock": {"path": str(mock), "n_qso": len(selection)}}
    results["prepare"] = bench_prepare(layout, selection, workdir)
    store = FeatureStore(results["prepare"]["store"])
    results["train"] = bench_train(store, workdir, args.epochs)
    results["score"] = bench_score(store, results["train"]["model"])
    results["projection"] = projections(
        results["prepare"], results["train"], results["score"], args.gpu_measured,
        args.project_epochs,
    )  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    update_section("anomalies", markdown(results), results)
    return results


if __name__ == "__main__":
    main()

"""``desilab anomalies prepare|train|score|evaluate``: the project's batch pipeline.

Every option is a configurable trait (``desilab_config.py`` or the command line);
``desilab anomalies SUBCOMMAND --help-all`` lists them with their help text.
A typical run on a mock::

    desilab anomalies prepare --data-root=mock/dr1 --store=work/store
    desilab anomalies train --store=work/store --model=work/vae --epochs=30
    desilab anomalies score --store=work/store --model=work/vae --baseline=work/pca \\
        --output=work/scores.parquet --db-url=$ADMIN_DSN
    desilab anomalies evaluate --scores=work/scores.parquet --truth=mock/truth --output=work/eval
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from desilab.hub.cli import DesilabCommand
from traitlets import Bool, Enum, Float, Int, Unicode

__all__ = ["AnomaliesApp", "EvaluateApp", "PrepareApp", "ScoreApp", "TrainApp"]


class AnomaliesCommand(DesilabCommand):
    """Options shared by the subcommands."""

    store = Unicode("anomalies/store", help="Folder of the sharded feature store.").tag(config=True)
    workers = Int(
        0, help="Local worker processes when Ray is not used; 0 = the profile's CPU limit."
    ).tag(config=True)
    ray = Enum(
        ["auto", "yes", "no"],
        "auto",
        help="""Distribute over a Ray cluster: auto = when one is reachable (RAY_ADDRESS or
        an initialised ray), yes = require it, no = local processes only.""",
    ).tag(config=True)
    progress = Bool(True, help="Show progress bars.").tag(config=True)

    aliases = {
        **DesilabCommand.aliases,
        "store": "AnomaliesCommand.store",
        "workers": "AnomaliesCommand.workers",
        "ray": "AnomaliesCommand.ray",
    }
    flags = {
        "no-progress": ({"AnomaliesCommand": {"progress": False}}, "Do not show progress bars.")
    }

    @property
    def use_ray(self) -> bool | None:
        return {"auto": None, "yes": True, "no": False}[self.ray]

    def done(self, summary: dict) -> None:
        print(json.dumps(summary, indent=2, default=str))


class PrepareApp(AnomaliesCommand):
    """Select QSO spectra and write the feature store."""

    name = "desilab-anomalies-prepare"
    description = """Select good-redshift primary QSO spectra (SPECTYPE QSO, ZWARN 0,
    DELTACHI2 > 25) from the catalog (--db-url) or the zpix files (--data-root), combine the
    arms, move them to the rest frame on a log-wavelength grid, normalise, and write a sharded
    feature store (--store). An interrupted run resumes."""

    data_root = Unicode(
        "", help="DATA_ROOT of the DR1 tree (the folder holding spectro/); holds the coadds."
    ).tag(config=True)
    db_url = Unicode(
        "",
        help="""PostgreSQL DSN of the catalog to select from (table dr1.zpix). Empty: select
        from the zpix files under data_root. Default from $DESILAB_DATABASE_URL is not used,
        so that file and catalog runs are explicit.""",
    ).tag(config=True)
    zmin = Float(0.0, help="Keep Z >= zmin.").tag(config=True)
    zmax = Float(10.0, help="Keep Z < zmax.").tag(config=True)
    limit = Int(0, help="Use only the first N selected spectra (0 = all).").tag(config=True)
    lam_min = Float(900.0, help="Rest-frame grid: lower edge, Angstrom.").tag(config=True)
    lam_max = Float(7200.0, help="Rest-frame grid: upper edge, Angstrom.").tag(config=True)
    n_bins = Int(1500, help="Rest-frame grid: number of log-uniform bins.").tag(config=True)
    shard_size = Int(4096, help="Spectra per shard (coadd files are not split).").tag(config=True)
    min_bins = Int(50, help="Drop spectra covering fewer rest bins.").tag(config=True)

    aliases = {
        **AnomaliesCommand.aliases,
        "data-root": "PrepareApp.data_root",
        "db-url": "PrepareApp.db_url",
        "zmin": "PrepareApp.zmin",
        "zmax": "PrepareApp.zmax",
        "limit": "PrepareApp.limit",
        "n-bins": "PrepareApp.n_bins",
        "shard-size": "PrepareApp.shard_size",
    }

    def start(self) -> None:
        from .build import build_feature_store
        from .prepare import RestGrid
        from .select import select_qsos_from_catalog, select_qsos_from_files

        if not self.data_root:
            self.log.critical("give --data-root (the DR1 tree with the coadd files)")
            self.exit(2)
        kw = {"zmin": self.zmin, "zmax": self.zmax, "limit": self.limit or None}
        if self.db_url:
            selection, source = select_qsos_from_catalog(self.db_url, **kw), "catalog dr1.zpix"
        else:
            selection, source = select_qsos_from_files(self.data_root, **kw), "zpix files"
        self.log.info("Selected %d QSO spectra from the %s", len(selection), source)
        store = build_feature_store(
            selection,
            self.data_root,
            self.store,
            grid=RestGrid(self.lam_min, self.lam_max, self.n_bins),
            shard_size=self.shard_size,
            min_bins=self.min_bins,
            workers=self.workers or None,
            use_ray=self.use_ray,
            progress=self.progress,
            source=source,
        )
        self.done({k: v for k, v in store.manifest.items() if k != "shards"})


class TrainApp(AnomaliesCommand):
    """Train the VAE (resuming from a checkpoint) and fit the baselines."""

    name = "desilab-anomalies-train"
    description = """Train the VAE on the feature store, checkpointing every epoch (rerun to
    resume or to extend with a larger --epochs), fit the latent density and the score
    calibration, and fit the PCA / Isolation Forest baselines on the same spectra."""

    model = Unicode("anomalies/vae", help="Output folder of the VAE model.").tag(config=True)
    baseline = Unicode(
        "anomalies/baseline", help="Output folder of the baselines; empty = skip them."
    ).tag(config=True)
    epochs = Int(40, help="Total epochs.").tag(config=True)
    batch_size = Int(128, help="Spectra per step.").tag(config=True)
    lr = Float(2e-3, help="Adam learning rate (constant).").tag(config=True)
    latent = Int(12, help="Latent dimensions (8-16 recommended).").tag(config=True)
    floor = Float(0.05, help="Model-error floor (fraction of the normalised flux).").tag(
        config=True
    )
    forest_floor = Float(0.3, help="Model-error floor in the Lyman-alpha forest.").tag(config=True)
    seed = Int(0, help="Random seed (initialisation, shuffling, sampling).").tag(config=True)
    device = Enum(
        ["auto", "cpu", "cuda"],
        "auto",
        help="Training device: auto = CUDA when the profile has a GPU, else CPU.",
    ).tag(config=True)
    threads = Int(0, help="Torch CPU threads; 0 = $DESILAB_CPU_LIMIT or all usable cores.").tag(
        config=True
    )
    pca_components = Int(10, help="Components of the PCA baseline.").tag(config=True)
    density = Enum(
        ["z-local", "gmm"],
        "z-local",
        help="Latent density: z-local = Gaussians of the latents of training spectra at "
        "similar redshift (the rest-frame window moves with z); gmm = one Gaussian "
        "mixture over all redshifts (models before 2026-11-29).",
    ).tag(config=True)

    aliases = {
        **AnomaliesCommand.aliases,
        "model": "TrainApp.model",
        "baseline": "TrainApp.baseline",
        "epochs": "TrainApp.epochs",
        "batch-size": "TrainApp.batch_size",
        "lr": "TrainApp.lr",
        "latent": "TrainApp.latent",
        "seed": "TrainApp.seed",
        "device": "TrainApp.device",
        "threads": "TrainApp.threads",
        "density": "TrainApp.density",
    }

    def start(self) -> None:
        from .baselines import fit_baselines
        from .train import TrainConfig, plot_history, train

        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            device=self.device,
            threads=self.threads,
            density=self.density,
        )
        vae = {"latent": self.latent, "floor": self.floor, "forest_floor": self.forest_floor}
        model = train(self.store, self.model, vae=vae, config=config, progress=self.progress)
        plot_history(self.model, Path(self.model) / "history.html")
        summary = {"model": self.model, "version": model.version}
        if self.baseline:
            base = fit_baselines(
                self.store,
                self.baseline,
                n_components=self.pca_components,
                floor=self.floor,
                forest_floor=self.forest_floor,
                seed=self.seed,
            )
            summary |= {"baseline": self.baseline, "baseline_version": base.version}
        self.done(summary)


class ScoreApp(AnomaliesCommand):
    """Score the store with the VAE (and baselines); write a file and/or the result table."""

    name = "desilab-anomalies-score"
    description = """Score every spectrum of the store, shard by shard, on Ray when a cluster
    is reachable, else in local processes (same numbers either way). Writes a parquet file
    (--output) and, with --db-url, upserts into results.qso_anomaly as the owner role."""

    model = Unicode("anomalies/vae", help="Folder of the trained VAE.").tag(config=True)
    baseline = Unicode("anomalies/baseline", help="Folder of the baselines; empty = skip.").tag(
        config=True
    )
    output = Unicode("anomalies/scores.parquet", help="Scores file (parquet).").tag(config=True)
    db_url = Unicode(
        "",
        help="""Admin DSN of the catalog (may SET ROLE desi_owner); when set, the scores are
        upserted into results.qso_anomaly.""",
    ).tag(config=True)
    device = Enum(["cpu", "auto", "cuda"], "cpu", help="Device of each scoring unit.").tag(
        config=True
    )
    threads = Int(1, help="Torch threads per scoring unit (keep fixed for reproducibility).").tag(
        config=True
    )

    aliases = {
        **AnomaliesCommand.aliases,
        "model": "ScoreApp.model",
        "baseline": "ScoreApp.baseline",
        "output": "ScoreApp.output",
        "db-url": "ScoreApp.db_url",
        "device": "ScoreApp.device",
    }

    def start(self) -> None:
        from .results import write_results
        from .score import score_store

        baseline = self.baseline if self.baseline and Path(self.baseline).exists() else None
        scores = score_store(
            self.store,
            self.model,
            baseline=baseline,
            use_ray=self.use_ray,
            workers=self.workers or None,
            device=self.device,
            threads=self.threads,
            progress=self.progress,
        )
        Path(self.output).parent.mkdir(parents=True, exist_ok=True)
        write_scores(scores, self.output)
        summary = {"scored": len(scores), "output": self.output}
        if self.db_url:
            summary["rows_written"] = write_results(self.db_url, scores)
        self.done(summary)


class EvaluateApp(AnomaliesCommand):
    """Compare the detectors against the mock's truth."""

    name = "desilab-anomalies-evaluate"
    description = """ROC AUC and precision at k for each injected anomaly class and for BALs,
    VAE against the baselines, from a scores file and the mock's truth folder; writes
    evaluation.md, evaluation.json and roc.html (bokeh) in --output."""

    scores = Unicode("anomalies/scores.parquet", help="Scores file from `score`.").tag(config=True)
    truth = Unicode("", help="The mock's truth folder (or its OUTDIR).").tag(config=True)
    output = Unicode("anomalies/evaluation", help="Output folder.").tag(config=True)

    aliases = {
        **AnomaliesCommand.aliases,
        "scores": "EvaluateApp.scores",
        "truth": "EvaluateApp.truth",
        "output": "EvaluateApp.output",
    }

    def start(self) -> None:
        from desilab.desi import read_truth

        from .evaluate import evaluate

        if not self.truth:
            self.log.critical("give --truth (the mock's truth folder)")
            self.exit(2)
        result = evaluate(read_scores(self.scores), read_truth(self.truth, "qso"))
        out = Path(self.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.md").write_text(result.markdown() + "\n")
        rows = [dict(zip(result.table.colnames, r, strict=True)) for r in result.table.iterrows()]
        (out / "evaluation.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
        result.plot(out / "roc.html")
        print(result.markdown())


def write_scores(scores, path: str | os.PathLike) -> None:
    """Write a scores table as parquet (LATENT as a list column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {}
    for name in scores.colnames:
        values = np.asarray(scores[name])
        if values.ndim == 2:
            cols[name] = pa.FixedSizeListArray.from_arrays(
                pa.array(values.ravel()), values.shape[1]
            )
        elif values.dtype.kind == "U":
            cols[name] = pa.array(values.tolist())
        else:
            cols[name] = pa.array(values)
    pq.write_table(pa.table(cols), path)


def read_scores(path: str | os.PathLike):
    """Read a scores file written by :func:`write_scores` into an astropy Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import Table

    table = pq.read_table(path)
    out = Table()
    for name in table.column_names:
        col = table[name].combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


class AnomaliesApp(DesilabCommand):
    """``desilab anomalies``: the anomalous-quasar project's batch pipeline."""

    name = "desilab-anomalies"
    description = """Anomalous quasar detection (project 1): prepare the feature store, train
    the VAE and baselines, score (Ray or local), and evaluate against a mock's truth."""
    subcommands = {
        "prepare": (PrepareApp, PrepareApp.__doc__),
        "train": (TrainApp, TrainApp.__doc__),
        "score": (ScoreApp, ScoreApp.__doc__),
        "evaluate": (EvaluateApp, EvaluateApp.__doc__),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.print_subcommands()
            self.exit(1)
        self.subapp.start()

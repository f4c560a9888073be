"""Training: streaming shards, checkpoints every epoch, exact resume, loss history.

Determinism. Everything random is derived from ``(seed, epoch)``: the order of
the shards and of the rows within a group of shards, and the VAE's
reparameterisation noise (a generator reseeded each epoch). A checkpoint holds
the model, the optimiser and the history, so training resumed from the
checkpoint of epoch k is the same computation as uninterrupted training; on
CPU with the same thread count it gives bit-identical weights.

Files in the output folder: ``train.json`` (the configuration), ``checkpoint.pt``
(latest epoch), ``history.json`` and ``history.csv`` (one row per epoch), then
the model itself (see :mod:`~desilab.projects.anomalies.detector`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .detector import AnomalyModel, ConditionalLatentDensity, LatentDensity, calibrate, spectrum_snr
from .model import VAE, VAEConfig, select_device, set_threads
from .store import FeatureStore

__all__ = ["TrainConfig", "iter_batches", "plot_history", "train", "validation_mask"]


@dataclass
class TrainConfig:
    """How to train.

    Attributes
    ----------
    epochs : int
        Total epochs (a resumed run continues up to this number).
    batch_size : int
        Spectra per optimiser step.
    lr : float
        Adam learning rate (constant, so that extending a run is well defined).
    seed : int
        Seed of initialisation, shuffling and sampling.
    val_fraction : float
        Fraction held out for the validation loss (chosen by TARGETID).
    shards_per_group : int
        Shards loaded and shuffled together (the shuffle buffer).
    grad_clip : float
        Gradient norm clip.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    threads : int
        Torch CPU threads; 0 = DESILAB_CPU_LIMIT or the usable cores.
    density : str
        Latent density model: ``z-local`` (Gaussians conditioned on redshift, see
        :class:`~desilab.projects.anomalies.detector.ConditionalLatentDensity`) or
        ``gmm`` (one Gaussian mixture over all redshifts, as earlier models).
    density_neighbours : int
        Training spectra behind each redshift node of the ``z-local`` density.
    gmm_components : int
        Components of the ``gmm`` latent density.
    density_sample : int
        At most this many latent points fit the density model.
    """

    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.1
    shards_per_group: int = 8
    grad_clip: float = 100.0
    device: str = "auto"
    threads: int = 0
    gmm_components: int = 8
    density_sample: int = 100_000
    density: str = "z-local"
    density_neighbours: int = 300


#: Rest wavelength (Angstrom) below which the Lyman-alpha forest absorbs.
LYA_FOREST_EDGE = 1210.0


def forest_bins(grid) -> int:
    """Number of leading bins of ``grid`` blueward of :data:`LYA_FOREST_EDGE`."""
    edges = grid.edges.to_value("Angstrom")
    return int(np.searchsorted(edges[1:], LYA_FOREST_EDGE, side="right"))


# Options that may change between a run and its resumption without changing the result
# (the latent density is fitted after training, so its settings do not change the weights).
_RESUMABLE = {"epochs", "device", "threads", "density", "density_neighbours"}


def validation_mask(targetid: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Deterministic hold-out by TARGETID (independent of the shard layout)."""
    x = np.asarray(targetid, dtype=np.uint64) ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    # splitmix64 finaliser: a well-mixed hash of the id.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(1_000_000)).astype(np.float64) < fraction * 1_000_000


def iter_batches(
    store: FeatureStore,
    batch_size: int,
    rng: np.random.Generator | None,
    *,
    rows: list[np.ndarray] | None = None,
    shards_per_group: int = 8,
):
    """Yield ``(flux, weight)`` float32 batches, shuffled by ``rng`` (in order if None).

    ``rows[i]`` selects the rows used from shard ``i`` (all when None).
    """
    order = np.arange(len(store.shards))
    if rng is not None:
        order = rng.permutation(order)
    for g in range(0, len(order), shards_per_group):
        fl, wl = [], []
        for i in order[g : g + shards_per_group]:
            f, w, _ = store.load_shard(int(i))
            sel = rows[int(i)] if rows is not None else slice(None)
            fl.append(np.asarray(f[sel]))
            wl.append(np.asarray(w[sel]))
        flux, weight = np.concatenate(fl), np.concatenate(wl)
        idx = rng.permutation(len(flux)) if rng is not None else np.arange(len(flux))
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            yield flux[b], weight[b]


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_history(folder: Path, history: list[dict]) -> None:
    (folder / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    if history:
        with open(folder / "history.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _run_epoch(model, opt, batches, device, generator, train: bool, clip: float) -> dict:
    model.train(train)
    tot = {"loss": 0.0, "chi2": 0.0, "kl": 0.0, "n_bins": 0, "n": 0}
    beta = model.config.beta
    with torch.set_grad_enabled(train):
        for f_np, w_np in batches:
            f = torch.as_tensor(f_np, device=device)
            w = torch.as_tensor(w_np, device=device)
            out = model(f, w, generator=generator)
            per = 0.5 * out["chi2"] + beta * out["kl"]
            loss = per.mean()
            if train:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
            tot["loss"] += float(per.detach().sum())
            tot["chi2"] += float(out["chi2"].detach().sum())
            tot["kl"] += float(out["kl"].detach().sum())
            tot["n_bins"] += int(out["n"].sum())
            tot["n"] += len(f_np)
    n = max(tot["n"], 1)
    return {
        "loss": tot["loss"] / n,
        "chi2_per_bin": tot["chi2"] / max(tot["n_bins"], 1),
        "kl": tot["kl"] / n,
        "n": tot["n"],
    }


def train(
    store: FeatureStore | str | Path,
    outdir: str | Path,
    *,
    vae: VAEConfig | dict | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> AnomalyModel:
    """Train (or resume training) the VAE on a feature store, then fit the latent density.

    Parameters
    ----------
    store : FeatureStore or path
    outdir : str or Path
        Model folder; a ``checkpoint.pt`` there with the same configuration is
        resumed (only ``epochs``, ``device`` and ``threads`` may differ).
    vae : VAEConfig or dict, optional
        Architecture; ``n_bins`` is taken from the store.
    config : TrainConfig, optional
    progress : bool
        Progress bar over epochs.

    Returns
    -------
    AnomalyModel
        The trained, calibrated model (also saved in ``outdir``).
    """
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    config = config or TrainConfig()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    vae_d = vae.to_dict() if isinstance(vae, VAEConfig) else dict(vae or {})
    grid_fixed = {"n_bins": store.grid.n_bins, "forest_bins": forest_bins(store.grid)}
    vae_cfg = VAEConfig.from_dict(
        VAEConfig(n_bins=store.grid.n_bins).to_dict() | vae_d | grid_fixed
    )
    threads = set_threads(config.threads or None)
    device = select_device(config.device)
    settings = {
        "vae": vae_cfg.to_dict(),
        "train": asdict(config),
        "grid": store.grid.to_dict(),
        "store": str(store.path),
        "store_digest": store.manifest["plan_digest"],
    }
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(config.seed)
    model = VAE(vae_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict] = []
    start = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        old = ckpt["settings"]
        fixed = {k: v for k, v in old["train"].items() if k not in _RESUMABLE}
        now = {k: v for k, v in settings["train"].items() if k not in _RESUMABLE}
        if (old["vae"], old["store_digest"], fixed) != (
            settings["vae"],
            settings["store_digest"],
            now,
        ):
            raise ValueError(
                f"{ckpt_path} was written with another configuration or feature store; "
                "use a new output folder (or delete the checkpoint to start over)"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        history, start = ckpt["history"], ckpt["epoch"]
    (out / "train.json").write_text(json.dumps(settings | {"threads": threads}, indent=1) + "\n")

    rows_train, rows_val = [], []
    for i in range(len(store.shards)):
        val = validation_mask(store.shard_meta(i)["TARGETID"], config.val_fraction, config.seed)
        rows_train.append(np.flatnonzero(~val))
        rows_val.append(np.flatnonzero(val))
    bar = tqdm(range(start, config.epochs), desc="train VAE", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        seed = _epoch_seed(config.seed, epoch)
        gen = torch.Generator(device=device).manual_seed(seed)
        batches = iter_batches(
            store,
            config.batch_size,
            np.random.default_rng(seed),
            rows=rows_train,
            shards_per_group=config.shards_per_group,
        )
        tr = _run_epoch(model, opt, batches, device, gen, True, config.grad_clip)
        seconds = time.perf_counter() - t0
        val_gen = torch.Generator(device=device).manual_seed(seed + 1)
        val_batches = iter_batches(store, 4 * config.batch_size, None, rows=rows_val)
        va = _run_epoch(model, opt, val_batches, device, val_gen, False, config.grad_clip)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": tr["loss"],
                "train_chi2_per_bin": tr["chi2_per_bin"],
                "train_kl": tr["kl"],
                "val_loss": va["loss"],
                "val_chi2_per_bin": va["chi2_per_bin"],
                "seconds": seconds,
                "spectra_per_s": tr["n"] / max(seconds, 1e-9),
                "device": device.type,
            }
        )
        bar.set_postfix(loss=f"{tr['loss']:.4g}", val=f"{va['loss']:.4g}")
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "settings": settings,
        }
        _atomic_torch_save(state, ckpt_path)
        _write_history(out, history)
    bar.close()
    # The density fit is NumPy/BLAS: keep it to the same cores as torch.
    with threadpool_limits(threads):
        return finalize(model, store, out, config, rows_train, history)


def finalize(
    model: VAE,
    store: FeatureStore,
    out: Path,
    config: TrainConfig,
    rows_train: list[np.ndarray],
    history: list[dict],
) -> AnomalyModel:
    """Fit the latent density and the score calibration on the training rows; save."""
    detector = AnomalyModel(model, store.grid, device=config.device)
    latents, recon, snr, zs = [], [], [], []
    for i in range(len(store.shards)):
        f, w, meta = store.load_shard(i)
        r = rows_train[i]
        s = detector.score_arrays(np.asarray(f[r]), np.asarray(w[r]))
        latents.append(s["latent"])
        recon.append(s["recon"])
        snr.append(spectrum_snr(f[r], w[r]))
        zs.append(np.asarray(meta["Z"], dtype=np.float64)[r])
    latents_all, z_all = np.concatenate(latents), np.concatenate(zs)
    rng = np.random.default_rng(config.seed)
    take = np.arange(len(latents_all))
    if len(take) > config.density_sample:
        take = np.sort(rng.choice(len(take), config.density_sample, replace=False))
    sample = latents_all[take]
    if config.density == "z-local":
        detector.density = ConditionalLatentDensity.fit(
            sample, z_all[take], neighbours=config.density_neighbours
        )
    elif config.density == "gmm":
        detector.density = LatentDensity.fit(sample, config.gmm_components, config.seed)
    else:
        raise ValueError(f"unknown latent density {config.density!r}: use 'z-local' or 'gmm'")
    density = detector.density_term(latents_all, z_all)
    detector.calibration = calibrate(np.concatenate(recon), density, np.concatenate(snr))
    detector.save(out, {"epochs": len(history), "train": asdict(config), "n_train": len(sample)})
    return detector


def plot_history(history: list[dict] | str | Path, path: str | Path | None = None):
    """Bokeh figure of the train/validation loss per epoch; saved as HTML when ``path``."""
    from bokeh.embed import file_html
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    if not isinstance(history, list):
        folder = Path(history)
        history = json.loads((folder / "history.json" if folder.is_dir() else folder).read_text())
    fig = figure(
        title="VAE loss", x_axis_label="epoch", y_axis_label="loss per spectrum", y_axis_type="log"
    )
    epochs = [h["epoch"] for h in history]
    fig.line(epochs, [h["train_loss"] for h in history], legend_label="train", line_width=2)
    fig.line(
        epochs,
        [h["val_loss"] for h in history],
        legend_label="validation",
        line_width=2,
        color="orange",
    )
    if path is not None:
        Path(path).write_text(file_html(fig, INLINE, "VAE loss"))
    return fig

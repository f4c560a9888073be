"""Building a feature store from DR1: plan shards by coadd file, prepare them in parallel.

Each shard is a unit of :func:`~desilab.projects.run_units` (Ray when a cluster
is reachable, else local processes): it opens its coadd files once, prepares the
selected spectra and writes the shard atomically, marking it done last, so an
interrupted build resumes with the shards it had not finished.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from desilab.desi import DR1FormatError, DR1Layout
from desilab.desi.coadd_rows import read_selected_arms
from desilab.projects.runner import run_units

from .prepare import PreparedSpectra, RestGrid, prepare_spectra
from .store import (
    META_COLUMNS,
    META_DTYPES,
    STORE_VERSION,
    FeatureStore,
    _save_json,
    _save_npy,
    _write_meta,
)

__all__ = ["build_feature_store", "plan_shards", "prepare_shard"]


def plan_shards(selection: Table, shard_size: int) -> list[list[dict]]:
    """Pack the selection's coadd files into shards of about ``shard_size`` spectra.

    Files are never split (each coadd is opened once); a shard closes as soon as
    it holds ``shard_size`` or more spectra.

    Returns
    -------
    list of list of dict
        Per shard, its files: ``{"survey", "program", "healpix", "targetid", "z"}``.
    """
    keys = np.char.add(
        np.char.add(np.asarray(selection["SURVEY"]).astype(str), "/"),
        np.char.add(np.asarray(selection["PROGRAM"]).astype(str), "/"),
    )
    keys = np.char.add(keys, np.asarray(selection["HEALPIX"]).astype(str))
    shards: list[list[dict]] = []
    current: list[dict] = []
    count = 0
    # The selection is sorted by file, so each file is one contiguous run.
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else []
    ends = list(starts[1:]) + [len(keys)] if len(keys) else []
    for a, b in zip(starts, ends, strict=True):
        current.append(
            {
                "survey": str(selection["SURVEY"][a]),
                "program": str(selection["PROGRAM"][a]),
                "healpix": int(selection["HEALPIX"][a]),
                "targetid": np.asarray(selection["TARGETID"][a:b], dtype=np.int64),
                "z": np.asarray(selection["Z"][a:b], dtype=np.float64),
            }
        )
        count += b - a
        if count >= shard_size:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    return shards


def _plan_digest(plan: list[list[dict]], grid: RestGrid) -> str:
    h = hashlib.sha256(json.dumps(grid.to_dict(), sort_keys=True).encode())
    for shard in plan:
        for f in shard:
            h.update(f"{f['survey']}/{f['program']}/{f['healpix']}".encode())
            h.update(f["targetid"].tobytes())
            h.update(f["z"].tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def _prepare_file(
    layout: DR1Layout, f: dict, rest: RestGrid, min_bins: int
) -> tuple[PreparedSpectra, np.ndarray, np.ndarray, int]:
    """Prepared spectra of one coadd file's selected targets; also the count not found."""
    path = layout.coadd(f["survey"], f["program"], f["healpix"])
    present, order, arms = read_selected_arms(path, f["targetid"])
    # Ascending rows read the file front to back; the spectra come in that order.
    tid, z = f["targetid"][present][order], f["z"][present][order]
    # DR1 has a coadd row for every zpix row; the mock writes spectra for a subset of
    # targets only (see desilab.desi.mock), so absent rows are counted, not fatal.
    return prepare_spectra(arms, z, rest, min_bins=min_bins), tid, z, int((~present).sum())


def prepare_shard(
    unit: tuple[int, list[dict]], *, root: str, outdir: str, grid: dict, min_bins: int = 50
) -> dict:
    """Prepare one shard (a unit for :func:`~desilab.projects.run_units`) and write it.

    Parameters
    ----------
    unit : (int, list of dict)
        Shard index and its files (see :func:`plan_shards`).
    root : str
        DATA_ROOT of the DR1 tree.
    outdir : str
        The store folder.
    grid : dict
        :meth:`RestGrid.to_dict` of the store's grid.
    min_bins : int
        Spectra covering fewer rest bins are rejected.

    Returns
    -------
    dict
        ``name``, ``n`` (spectra written), ``missing`` (selected but not in their
        coadd file), ``rejected`` (too little coverage), ``files_missing``,
        ``seconds`` (wall), ``cpu_seconds``, ``skipped`` (the shard was already done).
    """
    index, files = unit
    name = f"shard-{index:05d}"
    out = Path(outdir)
    done = out / f"{name}.done.json"
    if done.exists():
        return json.loads(done.read_text()) | {"skipped": True}
    t0, c0 = time.perf_counter(), time.process_time()
    layout, rest = DR1Layout(root), RestGrid(**grid)
    fluxes, weights = [], []
    meta: dict[str, list] = {k: [] for k in META_COLUMNS}
    missing = rejected = files_missing = 0
    for f in files:
        if not layout.coadd(f["survey"], f["program"], f["healpix"]).exists():
            # The mock writes no coadd for a pixel none of whose targets got spectra.
            missing += len(f["targetid"])
            files_missing += 1
            continue
        try:
            prep, tid, z, absent = _prepare_file(layout, f, rest, min_bins)
        except DR1FormatError as exc:
            # DR1FormatError does not survive pickling to the parent process: re-raise
            # as a plain error with the same message (file, HDU, what to do).
            raise RuntimeError(str(exc)) from None
        missing += absent
        ok = prep.n_good > 0
        rejected += int((~ok).sum())
        flux, weight = prep.flux[ok], prep.weight[ok]
        fluxes.append(flux)
        weights.append(weight)
        n = len(flux)
        # Mean S/N per covered bin: a quick handle on data quality for the explorer.
        snr = (flux * np.sqrt(weight)).sum(axis=1) / np.maximum((weight > 0).sum(axis=1), 1)
        for key, value in (
            ("TARGETID", tid[ok]), ("Z", z[ok]), ("NORM", prep.norm[ok]),
            ("N_GOOD", prep.n_good[ok]), ("SNR", snr), ("SURVEY", [f["survey"]] * n),
            ("PROGRAM", [f["program"]] * n), ("HEALPIX", [f["healpix"]] * n),
        ):  # fmt: skip
            meta[key].append(np.asarray(value, dtype=META_DTYPES[key]))
    nb = rest.n_bins
    _save_npy(out / f"{name}.flux.npy", np.concatenate(fluxes or [np.zeros((0, nb), "f4")]))
    _save_npy(out / f"{name}.weight.npy", np.concatenate(weights or [np.zeros((0, nb), "f4")]))
    cols = {k: np.concatenate(v or [np.zeros(0, META_DTYPES[k])]) for k, v in meta.items()}
    _write_meta(out / f"{name}.meta.parquet", cols)
    summary = {
        "name": name,
        "n": len(cols["TARGETID"]),
        "missing": missing,
        "rejected": rejected,
        "files_missing": files_missing,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    _save_json(done, summary)
    return summary | {"skipped": False}


def build_feature_store(
    selection: Table,
    layout: DR1Layout | str | Path,
    outdir: str | Path,
    *,
    grid: RestGrid | None = None,
    shard_size: int = 4096,
    min_bins: int = 50,
    workers: int | None = None,
    use_ray: bool | None = None,
    progress: bool = True,
    source: str = "",
) -> FeatureStore:
    """Prepare the selected spectra into a sharded feature store (resumable).

    Parameters
    ----------
    selection : Table
        From :func:`~desilab.projects.anomalies.select_qsos`.
    layout : DR1Layout or path
        The DR1 tree holding the coadds.
    outdir : str or Path
        Store folder. An unfinished build with the same selection and grid is
        resumed; a different one is refused.
    grid : RestGrid, optional
        Rest-frame grid (default :class:`RestGrid`'s defaults).
    shard_size : int
        Spectra per shard (approximately: coadd files are not split).
    min_bins : int
        Minimum number of covered rest bins for a spectrum to be kept.
    workers, use_ray
        Passed to :func:`~desilab.projects.run_units`.
    progress : bool
        Show a progress bar over shards.
    source : str
        Where the selection came from, recorded in ``store.json``.

    Returns
    -------
    FeatureStore
    """
    layout = layout if isinstance(layout, DR1Layout) else DR1Layout(layout)
    grid = grid or RestGrid()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(selection, shard_size)
    digest = _plan_digest(plan, grid)
    manifest_path = out / "store.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("plan_digest") != digest:
            raise FileExistsError(
                f"{out} holds a feature store of another selection or grid; "
                "choose another folder or delete it"
            )
    manifest = {
        "version": STORE_VERSION,
        "grid": grid.to_dict(),
        "plan_digest": digest,
        "data_root": str(layout.root),
        "source": source,
        "n_selected": len(selection),
        "shard_size": shard_size,
        "min_bins": min_bins,
        "complete": False,
    }
    _save_json(manifest_path, manifest)
    t0 = time.perf_counter()
    results = run_units(
        prepare_shard,
        list(enumerate(plan)),
        workers=workers,
        use_ray=use_ray,
        desc="prepare shards",
        progress=progress,
        root=str(layout.root),
        outdir=str(out),
        grid=grid.to_dict(),
        min_bins=min_bins,
    )
    manifest.update(
        complete=True,
        shards=[{"name": r["name"], "n": r["n"]} for r in results],
        n_spectra=sum(r["n"] for r in results),
        n_missing=sum(r["missing"] for r in results),
        n_rejected=sum(r["rejected"] for r in results),
        n_files_missing=sum(r["files_missing"] for r in results),
        cpu_seconds=sum(r["cpu_seconds"] for r in results if not r["skipped"]),
        wall_seconds=time.perf_counter() - t0,
        shards_resumed=sum(bool(r["skipped"]) for r in results),
    )
    _save_json(manifest_path, manifest)
    return FeatureStore(out)

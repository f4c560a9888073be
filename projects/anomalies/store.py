"""The sharded feature store: prepared spectra on disk, one shard per unit of work.

Layout of a store folder::

    store.json                  grid, shard plan, totals (written first and last)
    shard-00000.flux.npy        float32 (n, n_bins), normalised rest-frame flux
    shard-00000.weight.npy      float32 (n, n_bins), inverse variance (0 = no data)
    shard-00000.meta.parquet    TARGETID, Z, NORM, N_GOOD, SNR, SURVEY, PROGRAM, HEALPIX
    shard-00000.done.json       written last: the shard is complete

A shard is written atomically and marked done last (see
:mod:`~desilab.projects.anomalies.build`), so an interrupted build resumes where
it stopped and a reader never sees a half-written shard. The ``.npy``
files are memory-mapped on read: training and scoring stream shards without
loading the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.table import Table, vstack

from .prepare import RestGrid

__all__ = ["FeatureStore", "write_feature_store"]

STORE_VERSION = 1
META_DTYPES = {
    "TARGETID": np.int64, "Z": np.float64, "NORM": np.float64, "N_GOOD": np.int32,
    "SNR": np.float32, "SURVEY": str, "PROGRAM": str, "HEALPIX": np.int64,
}  # fmt: skip
META_COLUMNS = tuple(META_DTYPES)
META_TYPES = {
    "TARGETID": pa.int64(), "Z": pa.float64(), "NORM": pa.float64(), "N_GOOD": pa.int32(),
    "SNR": pa.float32(), "SURVEY": pa.string(), "PROGRAM": pa.string(), "HEALPIX": pa.int64(),
}  # fmt: skip


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    _atomic_write(path, write)


def _save_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def _write_meta(path: Path, cols: dict[str, np.ndarray]) -> None:
    # Lists for the text columns: pyarrow converts NumPy unicode arrays through pandas,
    # whose import alone costs seconds in every fresh worker.
    table = pa.table(
        {
            k: pa.array(v.tolist() if v.dtype.kind == "U" else v, type=META_TYPES[k])
            for k, v in cols.items()
        }
    )
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


@dataclass
class FeatureStore:
    """A prepared feature store on disk (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The store folder.
    """

    path: Path

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "store.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} not found: build the store first (`desilab anomalies prepare`)"
            )
        self.manifest = json.loads(manifest.read_text())
        if not self.manifest.get("complete"):
            raise RuntimeError(
                f"feature store {self.path} is incomplete (interrupted build); "
                "run the preparation again to finish it"
            )
        self.grid = RestGrid(**self.manifest["grid"])
        self.shards: list[str] = [s["name"] for s in self.manifest["shards"]]
        self._index: dict[int, tuple[int, int]] | None = None

    def __len__(self) -> int:
        return int(self.manifest["n_spectra"])

    def load_shard(self, i: int, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, Table]:
        """Flux, weight (memory-mapped when ``mmap``) and meta table of shard ``i``."""
        name = self.shards[i]
        mode = "r" if mmap else None
        flux = np.load(self.path / f"{name}.flux.npy", mmap_mode=mode)
        weight = np.load(self.path / f"{name}.weight.npy", mmap_mode=mode)
        return flux, weight, self.shard_meta(i)

    def shard_meta(self, i: int) -> Table:
        """Meta table of shard ``i``."""
        table = pq.read_table(self.path / f"{self.shards[i]}.meta.parquet")
        return Table({k: table[k].to_numpy(zero_copy_only=False) for k in table.column_names})

    def meta(self) -> Table:
        """Meta rows of every shard, in store order, with a SHARD and ROW column."""
        parts = []
        for i in range(len(self.shards)):
            m = self.shard_meta(i)
            m["SHARD"] = np.full(len(m), i, dtype=np.int32)
            m["ROW"] = np.arange(len(m), dtype=np.int64)
            parts.append(m)
        if not parts:
            return Table(names=(*META_COLUMNS, "SHARD", "ROW"))
        return vstack(parts)

    def get(self, targetids: Any) -> tuple[np.ndarray, np.ndarray, Table]:
        """Flux, weight and meta of some TARGETIDs, in the order given.

        Raises
        ------
        KeyError
            A TARGETID that is not in the store.
        """
        if self._index is None:
            meta = self.meta()
            self._index = {
                int(t): (int(s), int(r))
                for t, s, r in zip(meta["TARGETID"], meta["SHARD"], meta["ROW"], strict=True)
            }
        wanted = [int(t) for t in np.atleast_1d(targetids)]
        absent = [t for t in wanted if t not in self._index]
        if absent:
            raise KeyError(f"TARGETID(s) {absent[:10]} not in feature store {self.path}")
        nb = self.grid.n_bins
        flux = np.zeros((len(wanted), nb), np.float32)
        weight = np.zeros((len(wanted), nb), np.float32)
        rows = []
        for shard in sorted({self._index[t][0] for t in wanted}):
            f, w, m = self.load_shard(shard)
            for k, t in enumerate(wanted):
                s, r = self._index[t]
                if s == shard:
                    flux[k], weight[k] = f[r], w[r]
                    rows.append((k, m[r : r + 1]))
        meta = vstack([m for _, m in sorted(rows, key=lambda x: x[0])])
        return flux, weight, meta


def write_feature_store(
    outdir: str | Path,
    flux: np.ndarray,
    weight: np.ndarray,
    meta: Table | dict,
    grid: RestGrid,
    *,
    shard_size: int = 4096,
    source: str = "arrays",
) -> FeatureStore:
    """Write already prepared spectra as a feature store (e.g. simulations, other surveys).

    Parameters
    ----------
    outdir : str or Path
        New store folder.
    flux, weight : ndarray (n, grid.n_bins)
        Normalised flux and inverse variance (0 = no data).
    meta : Table or dict
        At least TARGETID and Z; NORM, N_GOOD, SNR, SURVEY, PROGRAM, HEALPIX are
        filled in when absent.
    grid : RestGrid
    shard_size : int
        Rows per shard.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(flux)
    if np.shape(flux) != (n, grid.n_bins) or np.shape(weight) != (n, grid.n_bins):
        raise ValueError(f"flux and weight must have shape ({n}, {grid.n_bins})")
    good = np.asarray(weight) > 0
    defaults = {
        "NORM": np.ones(n),
        "N_GOOD": good.sum(axis=1).astype(np.int32),
        "SNR": np.zeros(n, np.float32),
        "SURVEY": np.full(n, ""),
        "PROGRAM": np.full(n, ""),
        "HEALPIX": np.full(n, -1, dtype=np.int64),
    }
    cols = {k: np.asarray(meta[k]) if k in meta else defaults[k] for k in META_COLUMNS}
    shards = []
    for i, start in enumerate(range(0, n, shard_size)):
        name, sl = f"shard-{i:05d}", slice(start, start + shard_size)
        _save_npy(out / f"{name}.flux.npy", np.asarray(flux[sl], dtype=np.float32))
        _save_npy(out / f"{name}.weight.npy", np.asarray(weight[sl], dtype=np.float32))
        _write_meta(
            out / f"{name}.meta.parquet",
            {k: np.asarray(v[sl], dtype=META_DTYPES[k]) for k, v in cols.items()},
        )
        count = len(cols["TARGETID"][sl])
        _save_json(out / f"{name}.done.json", {"name": name, "n": count})
        shards.append({"name": name, "n": count})
    digest = hashlib.sha256(np.ascontiguousarray(cols["TARGETID"]).tobytes())
    digest.update(json.dumps(grid.to_dict(), sort_keys=True).encode())
    manifest = {
        "version": STORE_VERSION,
        "grid": grid.to_dict(),
        "plan_digest": digest.hexdigest()[:16],
        "source": source,
        "complete": True,
        "shards": shards,
        "n_spectra": n,
    }
    _save_json(out / "store.json", manifest)
    return FeatureStore(out)

"""AnomalyExplorer logic: what the anomaly explorer draws and does, tested without a browser.

The view (:mod:`desilab.projects.anomalies.explorer_view`) only copies what
:class:`AnomalyExplorerModel` computes into bokeh sources and ipywidgets:

* a 2-D projection of the latent space (:func:`~.score.project_latents`)
  coloured by the anomaly score;
* a histogram of the scores;
* the top-N table, most anomalous first;
* for a selected object, a :class:`~desilab.extensions.spectra.SpectrumExplorerModel`
  of its coadd (through the catalog) with the VAE reconstruction overlaid as the
  model, in observed wavelength and flux units;
* flags ``interesting`` / ``artifact`` stored in ``vi.inspections`` as the
  connected database user (the inspector is the session's role, see
  :mod:`desilab.desi.vi`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.table import Table
from desilab.extensions.spectra import Arm, Spectrum, SpectrumExplorerModel

from .detector import AnomalyModel
from .score import Explanation, explain, project_latents
from .store import FeatureStore

__all__ = ["EXPLORER_FLAGS", "AnomalyExplorerModel", "reconstruction_on_arms"]

#: The flags the explorer offers (a subset of :data:`desilab.desi.vi.FLAGS`).
EXPLORER_FLAGS = ("interesting", "artifact")
#: ``source`` of the inspections this explorer writes.
VI_SOURCE = "anomaly-explorer"
#: Score-table columns shown in the top-N table, when present.
TABLE_COLUMNS = ("TARGETID", "Z", "SCORE", "SCORE_RECON", "SCORE_DENSITY", "CHI2", "SCORE_PCA")


def reconstruction_on_arms(ex: Explanation, i: int, arms: dict[str, Arm]) -> dict[str, np.ndarray]:
    """The VAE reconstruction of object ``i`` resampled onto each arm's observed wavelengths.

    NaN outside the rest-frame grid, so the overlay stops where the model does.
    """
    obs = ex.observed(i)
    wave = obs["wave"].to_value("Angstrom")
    model = obs["model"].value
    return {
        name: np.interp(arm.wave, wave, model, left=np.nan, right=np.nan)
        for name, arm in arms.items()
    }


class AnomalyExplorerModel:
    """Scores, latent map, histogram, top-N, selection and VI flags of a scored store.

    Parameters
    ----------
    scores : Table
        One row per object: TARGETID, Z, SCORE, LATENT (and more), as
        :func:`~.score.score_store` returns or :func:`~.results.read_results` reads.
    store : FeatureStore or path
        The feature store the scores come from (spectra for the reconstruction).
    model : AnomalyModel or path
        The trained detector that produced the scores.
    loader : callable, optional
        ``loader(targetid) -> Spectrum``: the object's coadd (for example
        :func:`desilab.extensions.catalog_spectra.catalog_loader`). Without one,
        the store's prepared spectrum is shown in observed wavelengths.
    save_vi : callable, optional
        ``save_vi(targetid, flag, comment, z) -> id`` storing an inspection as the
        connected user.
    top_n : int
        Rows of the top-N table.
    """

    def __init__(
        self,
        scores: Table,
        store: FeatureStore | str | Path,
        model: AnomalyModel | str | Path,
        *,
        loader: Callable[[int], Spectrum] | None = None,
        save_vi: Callable[..., int] | None = None,
        top_n: int = 50,
    ) -> None:
        missing = [c for c in ("TARGETID", "SCORE", "LATENT") if c not in scores.colnames]
        if missing:
            raise ValueError(f"the score table lacks column(s) {missing}: score with a VAE first")
        if len(scores) == 0:
            raise ValueError("the score table is empty: nothing to explore")
        order = np.argsort(-np.asarray(scores["SCORE"], float), kind="stable")
        self.scores = scores[order]
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.model = model if isinstance(model, AnomalyModel) else AnomalyModel.load(model)
        self.loader = loader
        self.save_vi_fn = save_vi
        self.top_n = int(top_n)
        self._xy = project_latents(np.asarray(self.scores["LATENT"]))
        self._row = {int(t): i for i, t in enumerate(self.scores["TARGETID"])}
        self.selected: int | None = None
        self.spectrum: SpectrumExplorerModel | None = None
        self.explanation: Explanation | None = None

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        store: FeatureStore | str | Path,
        model: AnomalyModel | str | Path,
        *,
        dsn: str | None = None,
        scores: Table | None = None,
        data_root: str | Path | None = None,
        top_n: int = 50,
    ) -> AnomalyExplorerModel:
        """Explore with the catalog: coadds through ``dr1.spectra``, flags into ``vi``.

        Parameters
        ----------
        store, model, top_n
            As for the class.
        dsn : str, optional
            The user's DSN; default ``$DESILAB_DATABASE_URL``.
        scores : Table, optional
            Default: this model version's rows of ``results.qso_anomaly``.
        data_root : path, optional
            DATA_ROOT of the coadds; default: where the catalog ingested them from.
        """
        from desilab.desi import Catalog
        from desilab.desi.vi import save_inspection
        from desilab.extensions.catalog_spectra import catalog_loader

        from .results import read_results

        dsn = dsn or os.environ.get("DESILAB_DATABASE_URL")
        if not dsn:
            raise ValueError("no database: pass dsn= or set DESILAB_DATABASE_URL")
        model = model if isinstance(model, AnomalyModel) else AnomalyModel.load(model)
        if scores is None:
            scores = read_results(dsn, model_version=model.version)
            if len(scores) == 0:
                raise ValueError(
                    f"results.qso_anomaly has no rows of model version {model.version}: "
                    "score the store and write the results first (`desilab anomalies score "
                    "--db-url=...`), or pass scores="
                )

        def save(targetid: int, flag: str, comment: str, z: float | None) -> int:
            return save_inspection(dsn, targetid, flag, comment, z, source=VI_SOURCE)

        catalog = Catalog(dsn, data_root=data_root)
        return cls(scores, store, model, loader=catalog_loader(catalog), save_vi=save, top_n=top_n)

    # -- what to draw -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.scores)

    def points(self) -> dict[str, np.ndarray]:
        """The latent map: x, y (first two principal axes), score, TARGETID, Z; score order."""
        return {
            "x": self._xy[:, 0],
            "y": self._xy[:, 1],
            "score": np.asarray(self.scores["SCORE"], float),
            "targetid": np.asarray(self.scores["TARGETID"], np.int64),
            "z": np.asarray(self.scores["Z"], float)
            if "Z" in self.scores.colnames
            else np.full(len(self), np.nan),
        }

    def histogram(self, bins: int = 40) -> dict[str, np.ndarray]:
        """Score histogram: ``counts``, bin ``left`` and ``right`` edges (finite scores)."""
        s = np.asarray(self.scores["SCORE"], float)
        counts, edges = np.histogram(s[np.isfinite(s)], bins=bins)
        return {"counts": counts, "left": edges[:-1], "right": edges[1:]}

    def top(self, n: int | None = None) -> Table:
        """The ``n`` (default ``top_n``) highest-scoring objects, with a RANK column."""
        n = self.top_n if n is None else int(n)
        cols = [c for c in TABLE_COLUMNS if c in self.scores.colnames]
        table = self.scores[:n][cols]
        table.add_column(np.arange(1, len(table) + 1), name="RANK", index=0)
        return table

    def rank(self, targetid: int) -> int:
        """1-based rank of an object by score."""
        return self._row[int(targetid)] + 1

    # -- selection ------------------------------------------------------------------------
    def select(self, targetid: int) -> SpectrumExplorerModel:
        """Select an object: its spectrum with the VAE reconstruction as the model.

        Returns
        -------
        SpectrumExplorerModel
            For this one object (observed frame, catalog redshift), VI connected.

        Raises
        ------
        KeyError
            The TARGETID is not among the scored objects.
        """
        tid = int(targetid)
        if tid not in self._row:
            raise KeyError(f"TARGETID {tid} is not among the {len(self)} scored objects")
        ex = explain([tid], self.store, self.model)
        row = self.scores[self._row[tid]]
        extra = {
            "ANOMALY_RANK": self.rank(tid),
            "ANOMALY_SCORE": float(row["SCORE"]),
            "MODEL_VERSION": self.model.version,
        }
        spec = self.loader(tid) if self.loader is not None else self._store_spectrum(ex)
        spec.model = reconstruction_on_arms(ex, 0, spec.arms)
        spec.info = {**spec.info, **extra}
        self.selected, self.explanation = tid, ex
        self.spectrum = SpectrumExplorerModel([tid], lambda _: spec, save_vi=self.save_vi_fn)
        return self.spectrum

    def select_rank(self, rank: int) -> SpectrumExplorerModel:
        """Select the object of 1-based ``rank`` (1 = most anomalous)."""
        if not 1 <= rank <= len(self):
            raise IndexError(f"rank {rank} does not exist: there are {len(self)} objects")
        return self.select(int(self.scores["TARGETID"][rank - 1]))

    def _store_spectrum(self, ex: Explanation) -> Spectrum:
        """The prepared (rest-frame, normalised) spectrum, back in observed units."""
        obs = ex.observed(0)
        norm = float(ex.norm[0].value)
        weight = np.asarray(ex.weight[0], float)
        arm = Arm(
            wave=obs["wave"].to_value("Angstrom"),
            flux=np.nan_to_num(obs["flux"].value),
            ivar=weight / norm**2 if norm > 0 else np.zeros_like(weight),
        )
        info = {"TARGETID": int(ex.targetid[0]), "Z": float(ex.z[0])}
        return Spectrum(int(ex.targetid[0]), {"spectrum": arm}, info)

    # -- visual inspection ------------------------------------------------------------
    def flag(self, flag: str, comment: str = "") -> int:
        """Store ``interesting`` or ``artifact`` for the selected object; the inspection's id."""
        if flag not in EXPLORER_FLAGS:
            raise ValueError(f"flag must be one of {', '.join(EXPLORER_FLAGS)}, not {flag!r}")
        if self.selected is None:
            raise RuntimeError("select an object before flagging it")
        if self.save_vi_fn is None:
            raise RuntimeError("visual inspection is not connected to a database here")
        return self.save_vi_fn(self.selected, flag, comment.strip(), None)

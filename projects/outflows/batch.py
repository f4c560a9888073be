"""Batch fits of a QSO sample: one unit per coadd file, on Ray or local processes.

A sample (:mod:`.sample`) is grouped by coadd file; :func:`fit_unit` (picklable,
module level) reads one file's QSOs and returns one result row per QSO;
:func:`run_batch` maps it with :func:`desilab.projects.run_units` (Ray when a
cluster is reachable, else local processes, same ordered results) and, given a
DSN, stores each unit's rows in its own transaction, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table
from desilab.desi import DR1Layout

from ..runner import run_units
from .bal import BAL_COLUMNS, BAL_ZRANGE, BALResult, measure_bal_batch
from .continuum import RestGrid
from .energetics import (
    MODEL_VERSION,
    Assumptions,
    bal_energetics,
    bal_velocity,
    bolometric_luminosity,
    oiii_energetics,
    oiii_velocity,
)
from .flags import REVIEW_FLAGS, Flag
from .oiii import OIII_COLUMNS, OIIIFit, fit_oiii_batch, luminosity_distance_cm
from .sample import OIII_ZMAX, Unit, make_units
from .spectra import QSOSpectra, read_qso_spectra

__all__ = [
    "ENERGETICS_COLUMNS",
    "FitConfig",
    "FitOutcome",
    "fit_spectra",
    "fit_unit",
    "run_batch",
]
ENERGETICS_COLUMNS = [
    f"LOG_{n}{s}"
    for n in ("MOUT", "MDOT", "EDOT", "PDOT", "LBOL", "COUPLING")
    for s in ("", "_LO", "_HI")
] + ["OUTFLOW_V", "OUTFLOW_R"]


@dataclass(frozen=True)
class FitConfig:
    """What is fitted and how (stored with every result row as ``config``).

    Parameters
    ----------
    bal, oiii : bool
        Measure BALs (1.57 <= z <= 5) and [O III] (z < 0.95).
    bal_window : (float, float)
        Rest window of the BAL continuum, Angstrom.
    bal_dv : float
        Rest-grid bin of the BAL measurement, km/s.
    bal_smooth_kms : float
        Boxcar on the normalised flux before trough finding.
    error_scaling : float
        baltools' error term in the trough test.
    n_mc : int
        Monte Carlo draws for the BI/AI errors.
    oiii_window : (float, float)
        Rest window of the [O III] fit, Angstrom.
    oiii_wing : {'auto', 'on', 'off'}
        Wing chosen by BIC, always kept, or never fitted.
    bic_threshold : float
        BIC gain that justifies the wing.
    n_draws : int
        Parameter draws for [O III] derived-quantity errors.
    seed : int
        Seed of every random draw (results are reproducible).
    """

    bal: bool = True
    oiii: bool = True
    bal_window: tuple[float, float] = (1261.0, 2399.0)
    bal_dv: float = 150.0
    bal_smooth_kms: float = 450.0
    error_scaling: float = 0.5
    n_mc: int = 50
    oiii_window: tuple[float, float] = (4750.0, 5120.0)
    oiii_wing: str = "auto"
    bic_threshold: float = 10.0
    n_draws: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.oiii_wing not in ("auto", "on", "off"):
            raise ValueError("oiii_wing must be 'auto', 'on' or 'off'")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> FitConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)

    def replace(self, **changes) -> FitConfig:
        """A copy with some settings changed (for refits)."""
        return replace(self, **changes)


@dataclass
class FitOutcome:
    """Everything measured for one QSO (what the review widget shows)."""

    targetid: int
    z: float
    row: dict
    bal: BALResult | None = None
    oiii: OIIIFit | None = None
    spectrum: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)


# -- fitting --------------------------------------------------------------------------------


def _clean(v):
    """Python scalars/lists for JSON and psycopg: NaN -> None, arrays -> lists."""
    if isinstance(v, np.ndarray):
        return [None if (isinstance(x, float) and not np.isfinite(x)) else x for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def fit_spectra(
    spectra: QSOSpectra,
    config: FitConfig | None = None,
    assumptions: Assumptions | None = None,
    *,
    keep_models: bool = False,
) -> list[FitOutcome]:
    """BAL and [O III] measurements, flags and energetics of a set of spectra.

    Parameters
    ----------
    spectra : QSOSpectra
    config : FitConfig, optional
    assumptions : Assumptions, optional
        For the energetics (default assumptions when omitted).
    keep_models : bool
        Keep the BAL/[O III] fit objects and the spectrum in the outcomes (for
        display); batch runs drop them to keep results small.

    Returns
    -------
    list of FitOutcome
        ``row`` holds the result-table columns (DESI BAL names, OIII_*, LOG_*, FLAGS).
    """
    config = config or FitConfig()
    assumptions = assumptions or Assumptions()
    n = len(spectra)
    z = spectra.z
    bal: list[BALResult | None] = [None] * n
    oiii: list[OIIIFit | None] = [None] * n
    in_bal = config.bal & (z >= BAL_ZRANGE[0]) & (z <= BAL_ZRANGE[1])
    in_oiii = config.oiii & (z < OIII_ZMAX) & (z >= 0)
    idx = np.flatnonzero(in_bal)
    if len(idx):
        grid = RestGrid(*config.bal_window, config.bal_dv)
        res = measure_bal_batch(
            spectra.wave, spectra.flux[idx], spectra.ivar[idx], z[idx], grid=grid,
            n_mc=config.n_mc, smooth_kms=config.bal_smooth_kms,
            error_scaling=config.error_scaling, seed=config.seed,
        )  # fmt: skip
        for i, r in zip(idx, res, strict=True):
            bal[i] = r
    idx = np.flatnonzero(in_oiii)
    if len(idx):
        lsf = None if spectra.lsf is None else spectra.lsf[idx]
        res = fit_oiii_batch(
            spectra.wave, spectra.flux[idx], spectra.ivar[idx], z[idx], lsf_sigma_angstrom=lsf,
            bic_threshold=config.bic_threshold, n_draws=config.n_draws,
            window=tuple(config.oiii_window), seed=config.seed, wing=config.oiii_wing,
        )  # fmt: skip
        for i, r in zip(idx, res, strict=True):
            oiii[i] = r
    rows = [_row(spectra, i, bal[i], oiii[i]) for i in range(n)]
    _add_energetics(rows, bal, oiii, z, assumptions, config.seed)
    out = []
    for i in range(n):
        spec = (spectra.wave, spectra.flux[i], spectra.ivar[i]) if keep_models else None
        out.append(
            FitOutcome(int(spectra.targetid[i]), float(z[i]), rows[i],
                       bal[i] if keep_models else None, oiii[i] if keep_models else None, spec)
        )  # fmt: skip
    return out


def _row(spectra: QSOSpectra, i: int, bal: BALResult | None, oiii: OIIIFit | None) -> dict:
    row: dict = {"TARGETID": int(spectra.targetid[i]), "Z": float(spectra.z[i])}
    row["EBV"] = float(spectra.ebv[i]) if spectra.ebv is not None else None
    flags = Flag(0)
    if spectra.arm_mismatch is not None and spectra.arm_mismatch[i]:
        flags |= Flag.ARM_MISMATCH
    for name, _, _ in BAL_COLUMNS:
        row[name] = bal.values[name] if bal is not None else None
    for name, _ in OIII_COLUMNS:
        row[name] = oiii.values[name] if oiii is not None else None
    if bal is not None:
        flags |= bal.flags
        cont = bal.continuum
        row["CONT_RCHI2"] = cont.rchi2 if cont is not None else None
        row["LOG_L1350"] = _log_l1350(bal, spectra.z[i])
    if oiii is not None:
        flags |= oiii.flags
    if bal is None and oiii is None:
        flags |= Flag.NO_COVERAGE
    row["FLAGS"] = int(flags)
    row["NEEDS_REVIEW"] = bool(int(flags) & int(REVIEW_FLAGS))
    return {k: _clean(v) for k, v in row.items()}


def _log_l1350(bal: BALResult, z: float) -> float | None:
    """log lambda L_lambda(1350 A) from the power-law part of the BAL continuum."""
    cont = bal.continuum
    if cont is None or not cont.ok:
        return None
    from .continuum import NPOLY, _poly

    f1350 = float(_poly(np.array([1350.0]), cont.grid)[0] @ cont.coef[:NPOLY])
    if not f1350 > 0:
        return None
    lum = 4 * np.pi * luminosity_distance_cm(z) ** 2 * 1e-17 * f1350 * 1350.0 * (1 + z)
    return float(np.log10(lum))


def _add_energetics(rows, bal, oiii, z, assumptions: Assumptions, seed: int) -> None:
    """Fill ENERGETICS_COLUMNS and LBOL for the rows that have an outflow."""
    rng = np.random.default_rng(seed)
    for row in rows:
        row["ENERGETICS_TRACER"] = None
        row["LBOL_METHOD"] = None
        for c in ENERGETICS_COLUMNS:
            row[c] = None
    o_idx, o_l, o_lerr, o_v, o_verr, o_lbol = [], [], [], [], [], []
    b_idx, b_v, b_lbol = [], [], []
    for i, row in enumerate(rows):
        if oiii[i] is not None and row.get("LOG_L5100") is not None:
            lbol = bolometric_luminosity(10 ** row["LOG_L5100"] * u.erg / u.s, 5100 * u.AA)
            row["LBOL_METHOD"] = "L5100x9.26"
            if row.get("OIII_WING") and row.get("LOG_L_OIII_WING") is not None:
                v, verr = oiii_velocity(row, assumptions.velocity)
                if v is not None and np.isfinite(v):
                    o_idx.append(i)
                    o_l.append(10 ** row["LOG_L_OIII_WING"])
                    o_lerr.append(row.get("LOG_L_OIII_WING_ERR") or 0.0)
                    o_v.append(v)
                    o_verr.append(verr if verr is not None and np.isfinite(verr) else 0.0)
                    o_lbol.append(lbol.value)
        if bal[i] is not None and row.get("LOG_L1350") is not None:
            lbol = bolometric_luminosity(10 ** row["LOG_L1350"] * u.erg / u.s, 1350 * u.AA)
            row["LBOL_METHOD"] = "L1350x3.81"
            v = bal_velocity(bal[i].values, assumptions.bal_velocity)
            if bal[i].is_bal and np.isfinite(v):
                b_idx.append(i)
                b_v.append(v)
                b_lbol.append(lbol.value)
    if o_idx:
        en = oiii_energetics(
            np.array(o_l) * u.erg / u.s, np.array(o_v) * u.km / u.s,
            np.array(o_lbol) * u.erg / u.s, assumptions, l_oiii_err_dex=np.array(o_lerr),
            velocity_err=np.array(o_verr) * u.km / u.s, rng=rng,
        )  # fmt: skip
        _store(rows, o_idx, en.columns(), "OIII")
    if b_idx:
        en = bal_energetics(np.array(b_v) * u.km / u.s, np.array(b_lbol) * u.erg / u.s,
                            assumptions, rng=rng)  # fmt: skip
        _store(rows, b_idx, en.columns(), "BAL")


def _store(rows, idx, cols: dict, tracer: str) -> None:
    for k, i in enumerate(idx):
        rows[i]["ENERGETICS_TRACER"] = tracer
        for name, arr in cols.items():
            rows[i][name] = _clean(float(arr[k]))


def fit_unit(unit: Unit, config: dict | None = None, assumptions: dict | None = None) -> dict:
    """Fit the QSOs of one coadd file (module level, so Ray and processes can run it).

    Parameters
    ----------
    unit : Unit
    config, assumptions : dict, optional
        :meth:`FitConfig.to_dict` and :meth:`Assumptions.to_dict` forms.

    Returns
    -------
    dict
        ``rows`` (one per QSO found in the file), ``missing`` (TARGETIDs the file
        lacks), ``error`` (a message when the file could not be read), ``seconds``.
    """
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    cfg = FitConfig.from_dict(config) if config else FitConfig()
    ass = Assumptions.from_dict(assumptions) if assumptions else Assumptions()
    tids = np.asarray(unit.targetid, dtype=np.int64)
    # One BLAS thread per worker: the batch already uses every core.
    if not Path(unit.coadd).exists():
        # A mock writes coadds only where some target has a spectrum: nothing to fit.
        return {"rows": [], "missing": tids.tolist(), "error": None,
                "seconds": time.perf_counter() - t0}  # fmt: skip
    z = np.asarray(unit.z)
    ebv = np.asarray(unit.ebv)
    # Only [O III] fits need the LSF, i.e. the (large) resolution matrices.
    needs_lsf = cfg.oiii & (z < OIII_ZMAX)
    by_tid: dict[int, FitOutcome] = {}
    found = np.zeros(len(tids), dtype=bool)
    with threadpool_limits(1):
        for group in (needs_lsf, ~needs_lsf):
            if not group.any():
                continue
            try:
                spectra, got = read_qso_spectra(unit.coadd, tids[group], z[group], ebv[group],
                                                with_lsf=bool(group is needs_lsf))  # fmt: skip
            except Exception as exc:  # a bad file must not stop the batch: report it
                return {"rows": [], "missing": tids.tolist(), "error": f"{unit.coadd}: {exc}",
                        "seconds": time.perf_counter() - t0}  # fmt: skip
            found[np.flatnonzero(group)[got]] = True
            for o in fit_spectra(spectra, cfg, ass):
                by_tid[o.targetid] = o
    rows = []
    for o in (by_tid[int(t)] for t in tids[found]):
        o.row.update(SURVEY=unit.survey, PROGRAM=unit.program, HEALPIX=unit.healpix)
        rows.append(o.row)
    return {"rows": rows, "missing": tids[~found].tolist(), "error": None,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def run_batch(
    sample: Table,
    layout: DR1Layout,
    *,
    config: FitConfig | None = None,
    assumptions: Assumptions | None = None,
    dsn: str | None = None,
    run_id: str | None = None,
    resume: bool = True,
    workers: int | None = None,
    use_ray: bool | None = None,
    progress: bool = True,
    units_per_round: int | None = None,
) -> dict:
    """Fit a sample, optionally storing the rows in ``results.qso_outflows``.

    Parameters
    ----------
    sample : Table
        From :func:`.sample.select_from_files` or :func:`.sample.select_from_catalog`.
    layout : DR1Layout
    config : FitConfig, optional
    assumptions : Assumptions, optional
    dsn : str, optional
        Where to store results (tables from :func:`results.create_tables`).
    run_id : str, optional
        Label stored with the rows (default: a timestamp).
    resume : bool
        With a DSN, skip QSOs that already have an automatic row with the same
        model version and assumptions.
    workers, use_ray, progress
        See :func:`desilab.projects.run_units`.
    units_per_round : int, optional
        Units mapped per call to ``run_units`` before their rows are stored (default
        four per worker), which bounds what an interruption can lose.

    Returns
    -------
    dict
        ``rows`` (all result rows, ordered by unit), ``missing``, ``errors``,
        ``skipped`` (already stored), ``n_units``, ``seconds``.
    """
    from . import results as store

    config = config or FitConfig()
    assumptions = assumptions or Assumptions()
    run_id = run_id or time.strftime("run-%Y%m%dT%H%M%S")
    t0 = time.perf_counter()
    skipped: list[int] = []
    if dsn is not None and resume and len(sample):
        done = store.stored_targetids(dsn, assumptions)
        keep = ~np.isin(np.asarray(sample["TARGETID"]), list(done))
        skipped = [int(t) for t in np.asarray(sample["TARGETID"])[~keep]]
        sample = sample[keep]
    units = make_units(sample, layout)
    kwargs = {"config": config.to_dict(), "assumptions": assumptions.to_dict()}
    from ..runner import default_workers

    step = units_per_round or max(1, 4 * (workers or default_workers()))
    rows, missing, errors = [], [], []
    for start in range(0, len(units), step):
        chunk = units[start : start + step]
        results = run_units(fit_unit, chunk, workers=workers, use_ray=use_ray,
                            desc="outflow fits", progress=progress, **kwargs)  # fmt: skip
        for res in results:
            if dsn is not None and res["rows"]:
                store.write_results(dsn, res["rows"], assumptions=assumptions, config=config,
                                    run_id=run_id)  # fmt: skip
            rows += res["rows"]
            missing += res["missing"]
            if res["error"]:
                errors.append(res["error"])
    return {
        "rows": rows, "missing": missing, "errors": errors, "skipped": skipped,
        "n_units": len(units), "seconds": time.perf_counter() - t0, "run_id": run_id,
        "model_version": MODEL_VERSION,
    }  # fmt: skip

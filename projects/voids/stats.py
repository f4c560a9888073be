"""Void statistics and void-against-wall comparisons of galaxy properties.

* :func:`void_size_function`: number density of voids per radius bin.
* :func:`volume_filling_fraction`: share of the survey volume inside void holes.
* :func:`galaxy_void_fraction`: share of (wall + void) galaxies that are void galaxies.
* :func:`compare_environments`: each void galaxy gets wall controls matched in stellar
  mass and redshift (redshift only for the stellar mass itself); void and control
  distributions are compared with Kolmogorov-Smirnov, Mann-Whitney U and
  Anderson-Darling tests, the mean and median differences get bootstrap confidence
  intervals, and Cohen's d and Cliff's delta give effect sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from scipy import stats
from scipy.spatial import cKDTree

from .classify import VFLAG_VOID, VFLAG_WALL, void_of_points
from .geometry import MPC_H, SurveyMask, as_mpch
from .voidfinder import VoidCatalog

__all__ = [
    "DEFAULT_PROPERTIES",
    "Comparison",
    "Fraction",
    "SizeFunction",
    "compare_environments",
    "compare_samples",
    "galaxy_void_fraction",
    "match_controls",
    "void_size_function",
    "volume_filling_fraction",
]

#: Compared properties: column -> label.
DEFAULT_PROPERTIES = {
    "G_R": "^{0.1}(g - r) colour [mag]",
    "LOGMSTAR": "log10 M* [Msun]",
    "LOG_SSFR": "log10 sSFR [1/yr]",
    "DN4000": "Dn4000",
    "HALPHA_EW": "H-alpha EW [Angstrom]",
}
#: Matching variables and the distance that counts as one unit (the caliper scale).
MATCH_SCALES = {"LOGMSTAR": 0.1, "Z": 0.01}


@dataclass
class SizeFunction:
    """Void size function.

    Attributes
    ----------
    edges : Quantity
        Radius bin edges (Mpc/h).
    counts : ndarray
        Voids per bin.
    density : Quantity
        dn/dR, voids per (Mpc/h)^3 per Mpc/h.
    density_err : Quantity
        Poisson error of ``density``.
    cumulative : Quantity
        n(>R) at the lower edges, voids per (Mpc/h)^3.
    """

    edges: u.Quantity
    counts: np.ndarray
    density: u.Quantity
    density_err: u.Quantity
    cumulative: u.Quantity


def void_size_function(radii, volume, bins=None) -> SizeFunction:
    """Number density of voids per radius bin.

    Parameters
    ----------
    radii : Quantity or array
        Void radii (R_EFF or maximal radii), Mpc/h.
    volume : Quantity or float
        Survey volume, (Mpc/h)^3.
    bins : array, optional
        Bin edges (Mpc/h); 2 Mpc/h bins from 10 Mpc/h by default.
    """
    r = as_mpch(radii).ravel()
    vol = volume.to_value(MPC_H**3) if isinstance(volume, u.Quantity) else float(volume)
    if bins is None:
        top = max(float(r.max()) if r.size else 12.0, 12.0)
        bins = np.arange(10.0, top + 2.0, 2.0)
    edges = as_mpch(bins)
    counts, _ = np.histogram(r, edges)
    width = np.diff(edges)
    cumulative = np.array([np.sum(r >= e) for e in edges[:-1]]) / vol
    unit = MPC_H**-4
    return SizeFunction(
        edges * MPC_H,
        counts,
        counts / (vol * width) * unit,
        np.sqrt(counts) / (vol * width) * unit,
        cumulative * MPC_H**-3,
    )


@dataclass
class Fraction:
    """A fraction with its binomial confidence interval (Wilson)."""

    value: float
    low: float
    high: float
    k: int
    n: int


def _wilson(k: int, n: int, z: float = 1.959964) -> Fraction:
    if n == 0:
        return Fraction(float("nan"), float("nan"), float("nan"), k, n)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return Fraction(p, max(0.0, mid - half), min(1.0, mid + half), k, n)


def volume_filling_fraction(
    catalog: VoidCatalog, mask: SurveyMask, *, n_points: int = 200_000, seed: int = 0
) -> Fraction:
    """Fraction of the survey volume inside void holes (Monte Carlo, 95 % interval)."""
    pts = mask.random_points(n_points, np.random.default_rng(seed))
    centres, radii, void = catalog.hole_arrays()
    inside = void_of_points(pts, centres, radii, void) >= 0
    return _wilson(int(inside.sum()), n_points)


def galaxy_void_fraction(vflag: np.ndarray) -> Fraction:
    """Share of void galaxies among wall and void galaxies (edge, outside left out)."""
    vflag = np.asarray(vflag)
    k = int(np.sum(vflag == VFLAG_VOID))
    return _wilson(k, k + int(np.sum(vflag == VFLAG_WALL)))


def match_controls(
    targets: np.ndarray,
    pool: np.ndarray,
    scales: np.ndarray,
    *,
    n_controls: int = 3,
    caliper: float = 1.0,
) -> np.ndarray:
    """Nearest controls from ``pool`` for each target, with replacement.

    Parameters
    ----------
    targets, pool : (n, d) ndarrays
        Matching variables of the void galaxies and of the candidate controls.
    scales : (d,) array
        The difference in each variable that counts as one unit.
    n_controls : int
        Controls per target.
    caliper : float
        Largest scaled distance of a match; farther controls are -1.

    Returns
    -------
    (n, n_controls) ndarray of int
        Indices into ``pool``, -1 where no control is within the caliper.
    """
    scales = np.asarray(scales, dtype=float)
    if len(pool) == 0:
        return np.full((len(targets), n_controls), -1, dtype=np.int64)
    k = min(n_controls, len(pool))
    dist, idx = cKDTree(pool / scales).query(targets / scales, k=k)
    dist, idx = dist.reshape(len(targets), k), idx.reshape(len(targets), k)
    idx = np.where(dist <= caliper, idx, -1).astype(np.int64)
    if k < n_controls:
        idx = np.hstack([idx, np.full((len(targets), n_controls - k), -1, np.int64)])
    return idx


@dataclass
class Comparison:
    """Void galaxies against their matched wall controls, for one property.

    ``delta`` is the mean of the paired differences (void minus the mean of its
    controls), ``delta_median`` the difference of the medians; ``ci`` and
    ``ci_median`` are bootstrap intervals (void galaxies resampled with their
    controls). The tests compare the void values with all matched control values
    (controls drawn with replacement count once per match). SciPy caps
    Anderson-Darling p-values to [0.001, 0.25].
    """

    property: str
    label: str
    matched_on: tuple[str, ...]
    n_void: int
    n_control: int
    mean_void: float
    mean_control: float
    delta: float
    ci: tuple[float, float]
    median_void: float
    median_control: float
    delta_median: float
    ci_median: tuple[float, float]
    ks: tuple[float, float]
    mann_whitney: tuple[float, float]
    anderson_darling: tuple[float, float]
    cohens_d: float
    cliffs_delta: float
    confidence: float
    void_values: np.ndarray = field(repr=False)
    control_values: np.ndarray = field(repr=False)

    def row(self) -> dict:
        """The numbers as a flat dict (for tables and JSON)."""
        return {
            "property": self.property,
            "matched_on": "+".join(self.matched_on) or "-",
            "n_void": self.n_void,
            "n_control": self.n_control,
            "mean_void": self.mean_void,
            "mean_control": self.mean_control,
            "delta": self.delta,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "delta_median": self.delta_median,
            "ci_median_low": self.ci_median[0],
            "ci_median_high": self.ci_median[1],
            "ks_stat": self.ks[0],
            "ks_p": self.ks[1],
            "mw_u": self.mann_whitney[0],
            "mw_p": self.mann_whitney[1],
            "ad_stat": self.anderson_darling[0],
            "ad_p": self.anderson_darling[1],
            "cohens_d": self.cohens_d,
            "cliffs_delta": self.cliffs_delta,
        }

    def histogram(self, bins: int | np.ndarray = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bin edges and normalised void and control histograms, for overlays."""
        both = np.concatenate([self.void_values, self.control_values])
        edges = np.histogram_bin_edges(both, bins=bins)
        hv, _ = np.histogram(self.void_values, edges, density=True)
        hc, _ = np.histogram(self.control_values, edges, density=True)
        return edges, hv, hc


def compare_samples(
    void_x: np.ndarray,
    controls_x: np.ndarray,
    *,
    name: str = "x",
    label: str = "",
    matched_on: tuple[str, ...] = (),
    n_boot: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> Comparison:
    """Compare void values with matched control values.

    Parameters
    ----------
    void_x : (n,) ndarray
        The property of each void galaxy.
    controls_x : (n, k) ndarray
        The property of its k controls (NaN where a control is missing).
    """
    rng = rng or np.random.default_rng(0)
    void_x = np.asarray(void_x, float)
    controls_x = np.asarray(controls_x, float).reshape(len(void_x), -1)
    has = np.isfinite(controls_x)
    keep = np.isfinite(void_x) & has.any(axis=1)
    v, cx, has = void_x[keep], controls_x[keep], has[keep]
    if len(v) < 2:
        raise ValueError(f"{name}: fewer than 2 void galaxies with matched controls")
    cmean = np.nansum(np.where(has, cx, 0), axis=1) / has.sum(axis=1)
    flat = cx[has]
    paired = v - cmean
    boot = rng.integers(0, len(v), size=(n_boot, len(v)))
    alpha = (1 - confidence) / 2
    means = paired[boot].mean(axis=1)
    # Medians of the resampled void galaxies and of their resampled controls.
    ctrl_rows = np.where(has, cx, np.nan)
    med_v = np.median(v[boot], axis=1)
    med_c = np.nanmedian(ctrl_rows[boot].reshape(n_boot, -1), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ks = stats.ks_2samp(v, flat)
        mw = stats.mannwhitneyu(v, flat, alternative="two-sided")
        ad = stats.anderson_ksamp([v, flat])
    n1, n2 = len(v), len(flat)
    pooled = np.sqrt(((n1 - 1) * v.var(ddof=1) + (n2 - 1) * flat.var(ddof=1)) / (n1 + n2 - 2))
    return Comparison(
        property=name,
        label=label or name,
        matched_on=tuple(matched_on),
        n_void=n1,
        n_control=n2,
        mean_void=float(v.mean()),
        mean_control=float(flat.mean()),
        delta=float(paired.mean()),
        ci=(float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))),
        median_void=float(np.median(v)),
        median_control=float(np.median(flat)),
        delta_median=float(np.median(v) - np.median(flat)),
        ci_median=(
            float(np.quantile(med_v - med_c, alpha)),
            float(np.quantile(med_v - med_c, 1 - alpha)),
        ),
        ks=(float(ks.statistic), float(ks.pvalue)),
        mann_whitney=(float(mw.statistic), float(mw.pvalue)),
        anderson_darling=(float(ad.statistic), float(ad.pvalue)),
        cohens_d=float((v.mean() - flat.mean()) / pooled) if pooled > 0 else 0.0,
        cliffs_delta=float(2 * mw.statistic / (n1 * n2) - 1),
        confidence=confidence,
        void_values=v,
        control_values=flat,
    )


def compare_environments(
    table,
    vflag: np.ndarray,
    properties: dict[str, str] | None = None,
    *,
    select: np.ndarray | None = None,
    n_controls: int = 3,
    caliper: float = 1.0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Comparison]:
    """Void galaxies against wall galaxies matched in stellar mass and redshift.

    Parameters
    ----------
    table : Table or dict of arrays
        Galaxy properties (``derive_properties`` columns, LOGMSTAR and Z), row-matched
        with ``vflag``.
    vflag : ndarray
        VAST vflag of each galaxy; 1 are void galaxies, 0 the control pool.
    properties : dict, optional
        Column -> label; :data:`DEFAULT_PROPERTIES` by default.
    select : ndarray of bool, optional
        Restrict both samples (e.g. to star-forming galaxies).
    n_controls, caliper : int, float
        See :func:`match_controls`; matching units are 0.1 dex in mass, 0.01 in z.
    n_boot, confidence, seed
        Bootstrap resamples, interval level, random seed.
    """
    properties = properties or DEFAULT_PROPERTIES
    vflag = np.asarray(vflag)
    sel = np.ones(len(vflag), dtype=bool) if select is None else np.asarray(select, bool)
    rng = np.random.default_rng(seed)
    out = []
    for name, label in properties.items():
        match_on = ("Z",) if name == "LOGMSTAR" else ("LOGMSTAR", "Z")
        x = np.asarray(table[name], float)
        mv = np.column_stack([np.asarray(table[c], float) for c in match_on])
        ok = sel & np.isfinite(x) & np.all(np.isfinite(mv), axis=1)
        void = np.flatnonzero(ok & (vflag == VFLAG_VOID))
        wall = np.flatnonzero(ok & (vflag == VFLAG_WALL))
        scales = np.array([MATCH_SCALES[c] for c in match_on])
        idx = match_controls(mv[void], mv[wall], scales, n_controls=n_controls, caliper=caliper)
        cx = np.where(idx >= 0, x[wall][np.maximum(idx, 0)], np.nan)
        out.append(
            compare_samples(
                x[void],
                cx,
                name=name,
                label=label,
                matched_on=match_on,
                n_boot=n_boot,
                confidence=confidence,
                rng=rng,
            )
        )
    return out

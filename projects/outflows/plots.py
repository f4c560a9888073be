"""Summary plots of the outflow results, as bokeh figures (the ``report`` writes HTML).

Each function takes the results as a pandas DataFrame (``read_results``), an
astropy Table or a list of row dicts, and returns a bokeh figure:

* :func:`bi_distribution` - histogram of BI_CIV of the BALs;
* :func:`bal_fraction_vs_z` - fraction of QSOs with BI_CIV > 0 per redshift bin
  (Wilson 68 % intervals);
* :func:`vmax_vs_loiii` - [O III] v_max against L[O III] for fits with a wing;
* :func:`edot_vs_lbol` - kinetic power against L_bol with 16-84 % bands and the
  0.5 % and 5 % coupling lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bokeh.plotting import figure

__all__ = [
    "bal_fraction_vs_z",
    "bi_distribution",
    "edot_vs_lbol",
    "summary",
    "summary_figures",
    "vmax_vs_loiii",
    "write_report",
]

_SIZE = {"width": 480, "height": 380}


def _frame(results):
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        return results
    if isinstance(results, list):
        return pd.DataFrame(results)
    return results.to_pandas() if hasattr(results, "to_pandas") else pd.DataFrame(results)


def _col(df, name) -> np.ndarray:
    import pandas as pd

    if name not in df:
        return np.full(len(df), np.nan)
    return np.asarray(pd.to_numeric(df[name], errors="coerce"), dtype=float)


def _flag(df, name) -> np.ndarray:
    """A boolean column with missing values as False."""
    return np.nan_to_num(_col(df, name), nan=0.0).astype(bool)


def bi_distribution(results, *, bins: int = 20) -> figure:
    """Histogram of log10 BI_CIV for QSOs with BI_CIV > 0."""
    from bokeh.plotting import figure

    df = _frame(results)
    bi = _col(df, "BI_CIV")
    bi = bi[np.isfinite(bi) & (bi > 0)]
    fig = figure(title=f"BI distribution (C IV, {len(bi)} BALs)", x_axis_type="log",
                 x_axis_label="BI_CIV [km/s]", y_axis_label="QSOs", **_SIZE)  # fmt: skip
    if len(bi):
        edges = np.logspace(np.log10(max(bi.min(), 1.0)) - 0.05, np.log10(bi.max()) + 0.05, bins)
        counts, edges = np.histogram(bi, bins=edges)
        fig.quad(top=counts, bottom=0, left=edges[:-1], right=edges[1:], fill_alpha=0.6,
                 line_color="white")  # fmt: skip
    return fig


def _wilson(k: np.ndarray, n: np.ndarray, z: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        den = 1 + z**2 / n
        mid = (p + z**2 / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return mid - half, mid + half


def bal_fraction_vs_z(results, *, edges: np.ndarray | None = None) -> figure:
    """Fraction of QSOs with BI_CIV > 0 among those measured, per redshift bin."""
    from bokeh.models import ColumnDataSource, Whisker
    from bokeh.plotting import figure

    df = _frame(results)
    z, bi = _col(df, "Z"), _col(df, "BI_CIV")
    ok = np.isfinite(bi) & np.isfinite(z)
    edges = np.linspace(1.57, 5.0, 8) if edges is None else np.asarray(edges)
    n, _ = np.histogram(z[ok], edges)
    k, _ = np.histogram(z[ok & (bi > 0)], edges)
    lo, hi = _wilson(k.astype(float), n.astype(float))
    mid = 0.5 * (edges[1:] + edges[:-1])
    keep = n > 0
    src = ColumnDataSource({"z": mid[keep], "f": (k / np.maximum(n, 1))[keep], "lo": lo[keep],
                            "hi": hi[keep], "n": n[keep]})  # fmt: skip
    fig = figure(title="BAL fraction (BI_CIV > 0) against redshift", x_axis_label="z",
                 y_axis_label="BAL fraction", **_SIZE)  # fmt: skip
    fig.scatter("z", "f", source=src, size=8)
    fig.add_layout(Whisker(source=src, base="z", lower="lo", upper="hi"))
    return fig


def vmax_vs_loiii(results) -> figure:
    """[O III] v_max = |dv| + 2 sigma_wing against log L[O III], with 1-sigma errors."""
    from bokeh.models import ColumnDataSource, Whisker
    from bokeh.plotting import figure

    df = _frame(results)
    wing = _flag(df, "OIII_WING")
    v, verr = _col(df, "OIII_VMAX"), _col(df, "OIII_VMAX_ERR")
    lum = _col(df, "LOG_L_OIII")
    ok = np.asarray(wing, dtype=bool) & np.isfinite(v) & np.isfinite(lum)
    src = ColumnDataSource({"l": lum[ok], "v": v[ok], "lo": (v - verr)[ok], "hi": (v + verr)[ok]})
    fig = figure(title=f"[O III] outflows ({int(ok.sum())} with a wing)",
                 x_axis_label="log L[O III] [erg/s]", y_axis_label="v_max [km/s]",
                 **_SIZE)  # fmt: skip
    fig.scatter("l", "v", source=src, size=7)
    fig.add_layout(Whisker(source=src, base="l", lower="lo", upper="hi"))
    return fig


def edot_vs_lbol(results) -> figure:
    """Kinetic power against bolometric luminosity, with the 0.5 % and 5 % coupling lines."""
    from bokeh.models import ColumnDataSource, Legend, Whisker
    from bokeh.plotting import figure

    df = _frame(results)
    e, lb = _col(df, "LOG_EDOT"), _col(df, "LOG_LBOL")
    elo, ehi = _col(df, "LOG_EDOT_LO"), _col(df, "LOG_EDOT_HI")
    tracer = np.asarray(df["ENERGETICS_TRACER"].fillna("")) if "ENERGETICS_TRACER" in df else []
    fig = figure(title="Kinetic power against L_bol", x_axis_label="log L_bol [erg/s]",
                 y_axis_label="log E_kin rate [erg/s]", **_SIZE)  # fmt: skip
    items = []
    ok_all = np.isfinite(e) & np.isfinite(lb)
    for name, color in (("OIII", "firebrick"), ("BAL", "navy")):
        ok = ok_all & (np.asarray(tracer) == name)
        src = ColumnDataSource({"l": lb[ok], "e": e[ok], "lo": elo[ok], "hi": ehi[ok]})
        r = fig.scatter("l", "e", source=src, size=7, color=color)
        fig.add_layout(Whisker(source=src, base="l", lower="lo", upper="hi", line_color=color))
        items.append((f"{name} ({int(ok.sum())})", [r]))
    span = lb[ok_all] if ok_all.any() else np.array([44.0, 47.0])
    x = np.array([span.min() - 0.5, span.max() + 0.5])
    for frac, dash in ((0.005, "dashed"), (0.05, "dotted")):
        r = fig.line(x, x + np.log10(frac), line_dash=dash, color="gray")
        items.append((f"E_kin = {frac:.1%} L_bol", [r]))
    fig.add_layout(Legend(items=items, location="top_left"), "right")
    return fig


def summary(results) -> dict:
    """Counts and medians that go with the plots."""
    df = _frame(results)
    bi, coup = _col(df, "BI_CIV"), _col(df, "LOG_COUPLING")
    measured = np.isfinite(bi)
    wing = _flag(df, "OIII_WING")
    return {
        "n_fits": int(len(df)),
        "n_bal_measured": int(measured.sum()),
        "n_bal": int(np.sum(bi[measured] > 0)),
        "bal_fraction": float(np.mean(bi[measured] > 0)) if measured.any() else None,
        "n_oiii_wing": int(wing.sum()),
        "median_log_coupling": float(np.nanmedian(coup)) if np.isfinite(coup).any() else None,
        "n_needs_review": int(np.sum(_flag(df, "NEEDS_REVIEW"))),
    }  # fmt: skip


def summary_figures(results) -> dict[str, figure]:
    """The four summary figures, by name."""
    return {
        "bi_distribution": bi_distribution(results),
        "bal_fraction_vs_z": bal_fraction_vs_z(results),
        "vmax_vs_loiii": vmax_vs_loiii(results),
        "edot_vs_lbol": edot_vs_lbol(results),
    }


def write_report(results, path: str | Path, *, title: str = "AGN outflows") -> Path:
    """Save the summary figures and counts as a standalone HTML page."""
    from bokeh.io import save
    from bokeh.layouts import column, gridplot
    from bokeh.models import Div
    from bokeh.resources import INLINE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figs = summary_figures(results)
    stats = summary(results)
    text = "<br>".join(f"<b>{k}</b>: {v}" for k, v in stats.items())
    layout = column(Div(text=f"<h2>{title}</h2>{text}"),
                    gridplot([[figs["bi_distribution"], figs["bal_fraction_vs_z"]],
                              [figs["vmax_vs_loiii"], figs["edot_vs_lbol"]]]))  # fmt: skip
    # INLINE resources: the page works on a cluster with no internet access.
    save(layout, filename=str(path), title=title, resources=INLINE)
    return path

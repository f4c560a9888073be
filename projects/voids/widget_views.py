"""Pieces of the VoidExplorer view: bokeh figures and their sources, HTML tables, helpers."""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as w
import numpy as np
from astropy.table import Table
from bokeh.models import ColumnDataSource, TapTool
from bokeh.plotting import figure

from .stats import Comparison

__all__ = [
    "ENV_COLOURS",
    "MEMBER_COLUMNS",
    "SELECTED",
    "VoidFigures",
    "comparison_rows",
    "plain",
    "set_range",
    "subsample",
    "table_html",
    "unwrap_ra",
]

ENV_COLOURS = {"wall": "#8c8c8c", "void": "#1f77b4", "edge": "#ff7f0e", "outside": "#d9d9d9"}
SELECTED = "#d62728"
#: Columns of the member table (those the sample has are shown).
MEMBER_COLUMNS = (
    "TARGETID", "RA", "DEC", "Z", "DIST_TO_CENTRE", "ABSMAG01_SDSS_R", "G_R", "LOGMSTAR",
    "LOG_SSFR", "DN4000", "HALPHA_EW",
)  # fmt: skip


def plain(exc: BaseException) -> str:
    """An exception as a sentence (KeyError's repr quotes are noise)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text) or type(exc).__name__


def unwrap_ra(ra: np.ndarray, centre: float) -> np.ndarray:
    """RA within 180 deg of ``centre``, so a cap across RA = 0 stays in one piece."""
    return (np.asarray(ra, float) - centre + 180.0) % 360.0 - 180.0 + centre


def subsample(n: int, limit: int, keep: np.ndarray | None = None) -> np.ndarray:
    """At most ``limit`` indices of ``n`` (always those in ``keep``), the same every time."""
    if n <= limit:
        return np.arange(n)
    idx = np.sort(np.random.default_rng(0).choice(n, limit, replace=False))
    return idx if keep is None else np.union1d(idx, keep)


def set_range(slider: w.FloatSlider, lo: float, hi: float, value: float) -> None:
    """New bounds and value, in an order ipywidgets accepts (min never above max)."""
    slider.min = min(float(lo), slider.min)
    slider.max = float(hi)
    slider.min = float(lo)
    slider.value = float(value)


def _fmt(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3g}"


def comparison_rows(results: dict[str, Comparison | str]) -> str:
    """The test results as an HTML table (one row per property; errors in words)."""
    head = (
        "<tr><th>property</th><th>matched on</th><th>N void</th><th>N control</th>"
        "<th>Δ mean [CI]</th><th>Δ median [CI]</th><th>KS p</th><th>Mann–Whitney p</th>"
        "<th>Anderson–Darling p</th><th>Cohen d</th><th>Cliff δ</th></tr>"
    )
    rows = []
    for name, c in results.items():
        if isinstance(c, str):
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td colspan=10>{html.escape(c)}</td></tr>"
            )
            continue
        cells = [
            c.property,
            "+".join(c.matched_on),
            str(c.n_void),
            str(c.n_control),
            f"{_fmt(c.delta)} [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]",
            f"{_fmt(c.delta_median)} [{_fmt(c.ci_median[0])}, {_fmt(c.ci_median[1])}]",
            _fmt(c.ks[1]),
            _fmt(c.mann_whitney[1]),
            _fmt(c.anderson_darling[1]),
            _fmt(c.cohens_d),
            _fmt(c.cliffs_delta),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    level = next((c.confidence for c in results.values() if not isinstance(c, str)), 0.95)
    note = (
        f"<small>Void galaxies against wall galaxies matched in stellar mass and redshift; "
        f"{level:.0%} bootstrap intervals. Anderson–Darling p is capped to [0.001, 0.25].</small>"
    )
    return f"<table class='desilab-void-tests'>{head}{''.join(rows)}</table>{note}"


def table_html(table: Table, limit: int = 200) -> str:
    """The first ``limit`` rows of a table as HTML (floats to 4 significant digits)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.colnames)
    body = []
    for row in table[:limit]:
        cells = []
        for v in row:
            cells.append(f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v))
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    more = f"<small>first {limit} of {len(table)} rows</small>" if len(table) > limit else ""
    return (
        "<div style='max-height:320px;overflow:auto'><table class='desilab-void-members'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{more}"
    )


class VoidFigures:
    """The explorer's bokeh figures and the data sources the view fills.

    ``on_tap(source)`` returns the selection callback of a source of voids (sky
    ellipses, slice hole sections), each row carrying its void id in ``void``.
    """

    def __init__(self, height: int, on_tap: Callable[[ColumnDataSource], Callable]) -> None:
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        self.sky_fig = figure(
            height=height, width=460, title="sky", tools=tools, x_axis_label="RA [deg]",
            y_axis_label="Dec [deg]", match_aspect=True,
        )  # fmt: skip
        self.sky_fig.x_range.flipped = True
        self.sky_galaxies = ColumnDataSource({"ra": [], "dec": [], "env": [], "colour": []})
        self.sky_fig.scatter(
            "ra", "dec", source=self.sky_galaxies, color="colour", size=2, legend_field="env"
        )
        self.sky_voids = ColumnDataSource(
            {"ra": [], "dec": [], "width": [], "height": [], "void": [], "radius": []}
        )
        voids = self.sky_fig.ellipse(
            "ra", "dec", width="width", height="height", source=self.sky_voids,
            fill_alpha=0.08, line_color=ENV_COLOURS["void"], fill_color=ENV_COLOURS["void"],
            selection_line_color=SELECTED, selection_fill_alpha=0.2,
        )  # fmt: skip
        self.sky_members = ColumnDataSource({"ra": [], "dec": []})
        self.sky_fig.scatter("ra", "dec", source=self.sky_members, color=SELECTED, size=4)
        self.sky_fig.add_tools(TapTool(renderers=[voids]))
        self.sky_voids.selected.on_change("indices", on_tap(self.sky_voids))

        self.slice_fig = figure(
            height=height, width=460, title="slice", tools=tools, match_aspect=True,
            x_axis_label="along the line of sight [Mpc/h]", y_axis_label="east [Mpc/h]",
        )  # fmt: skip
        self.slice_fig.title.text_font_size = "9pt"
        self.slice_holes = ColumnDataSource({"u": [], "v": [], "r": [], "void": [], "colour": []})
        holes = self.slice_fig.circle(
            "u", "v", radius="r", source=self.slice_holes, fill_color="colour", fill_alpha=0.15,
            line_color="colour", line_alpha=0.6,
        )  # fmt: skip
        self.slice_galaxies = ColumnDataSource(
            {"u": [], "v": [], "env": [], "index": [], "void": [], "colour": []}
        )
        self.slice_fig.scatter(
            "u", "v", source=self.slice_galaxies, color="colour", size=3, legend_field="env"
        )
        self.slice_fig.add_tools(TapTool(renderers=[holes]))
        self.slice_holes.selected.on_change("indices", on_tap(self.slice_holes))

        self.hist_fig = figure(height=300, width=620, tools=tools, y_axis_label="density")
        self.hist_data = ColumnDataSource({"left": [], "right": [], "void": [], "control": []})
        self.hist_fig.quad(
            left="left", right="right", top="void", bottom=0, source=self.hist_data,
            fill_color=ENV_COLOURS["void"], fill_alpha=0.35, line_alpha=0, legend_label="void",
        )  # fmt: skip
        self.hist_fig.quad(
            left="left", right="right", top="control", bottom=0, source=self.hist_data,
            fill_alpha=0, line_color=SELECTED, line_width=2, legend_label="matched wall",
        )  # fmt: skip
        self.wall_line = ColumnDataSource({"x": [], "wall": []})
        self.hist_fig.line(
            "x", "wall", source=self.wall_line, color="#444444", line_dash="dashed",
            legend_label="all wall",
        )  # fmt: skip

        self.size_fig = figure(
            height=280, width=520, tools=tools, y_axis_type="log", title="void size function",
            x_axis_label="R_eff [Mpc/h]", y_axis_label="dn/dR [(h/Mpc)⁴]",
        )  # fmt: skip
        self.size_data = ColumnDataSource({"r": [], "n": [], "lo": [], "hi": []})
        self.size_fig.scatter("r", "n", source=self.size_data, size=6)
        self.size_fig.segment("r", "lo", "r", "hi", source=self.size_data)
